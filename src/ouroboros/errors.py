class OuroborosError(Exception):
    """A user's mistake: the message says what is wrong and how to fix it.

    The CLI prints it as one line and exits 2. Anything else escaping is a harness bug.
    """
