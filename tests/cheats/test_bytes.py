"""Bytes that are not UTF-8, from the agent or the run, wherever the harness reads them back: each is
recorded as a verdict (or shown escaped), never an exception out of the loop or a later `log`."""

from __future__ import annotations

from ouroboros import cheats, isolation
from ouroboros.testing import cli

LEVEL = "bwrap" if isolation.available("bwrap") else "unshare"


def test_an_editable_file_with_bytes_that_are_not_utf8_is_recorded_byte_for_byte(tmp_path):
    agent = '''
with open("train.py", "ab") as f:
    f.write(b"\\n# caf\\xe9 \\xff\\xfe\\n")
'''
    result = cheats.run_attack(cheats.Attack("non-utf8-source", title="an editable file that is not UTF-8",
                                             agent=agent), tmp_path / "attack", isolation=LEVEL)
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"  # Python refuses it
    assert b"+# caf\xe9 \xff\xfe" in (result.exp_dir / "diff.patch").read_bytes()  # git's bytes, unreplaced
    shown = cli("log", "-C", str(tmp_path / "attack" / "task"), "--run", "cheat")
    assert shown.returncode == 0, shown.stderr
