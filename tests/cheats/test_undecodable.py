"""Bytes that are not UTF-8, in what an agent writes: file names and file contents. Git hands them
back verbatim; the harness must judge and record them, never die decoding them."""

from __future__ import annotations

import pytest

from ouroboros import cheats

_NAME = '''
import os
from pathlib import Path
Path("train.py").write_text(Path("train.py").read_text() + "\\n# a change\\n")
with open(os.fsencode("notes") + b"-\\xff\\xfe.bin", "wb") as f:
    f.write(b"bytes")
'''

_CONTENT = '''
from pathlib import Path
Path("train.py").write_bytes(Path("train.py").read_bytes() + b"\\n# caf\\xe9 in latin-1\\n")
'''


@pytest.mark.parametrize("allowed", [False, True])
def test_a_file_name_that_is_not_utf8_is_judged_not_a_crash_of_the_harness(tmp_path, allowed):
    bound = {"allow_new_files": ["notes-*"]} if allowed else {}
    attack = cheats.Attack("undecodable-name", title="a file name that is not UTF-8", agent=_NAME, bound=bound)
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="process")
    if allowed:
        assert result.verdict in ("keep", "discard"), f"{result.verdict}: {result.reason}"
    else:
        assert result.verdict == "violation" and "is not allowed" in result.reason, result.reason
        assert "not committed: notes-" in result.reason


def test_an_editable_file_that_is_not_utf8_is_judged_not_a_crash_of_the_harness(tmp_path):
    attack = cheats.Attack("undecodable-content", title="train.py with a latin-1 byte", agent=_CONTENT)
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="process")
    assert result.verdict == "crash", f"{result.verdict}: {result.reason}"  # Python refuses the source
    assert "SyntaxError" in (result.exp_dir / "run.log").read_text(errors="replace")
    assert b"caf\xe9" in (result.exp_dir / "diff.patch").read_bytes()  # recorded as git gave it
