"""Ctrl-C and SIGTERM stop the harness cleanly: a KeyboardInterrupt in the harness process only.

A forked child of the harness (a pool worker of `--parallel`, a child between fork and exec)
inherits the handler; there the signal keeps its default action, so that the child dies instead
of turning into a second harness that goes on running Python.
"""

from __future__ import annotations

import os
import signal

_OWNER = os.getpid()


def _handler(signum: int, frame: object) -> None:
    if os.getpid() == _OWNER:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt in this process (the harness) only."""
    global _OWNER
    _OWNER = os.getpid()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
