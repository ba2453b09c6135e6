"""Thirteenth red-team pass: the perf15 shortcuts on the trust path (ulimit in bash at level process)."""
from pathlib import Path

from ouroboros import sandbox


def test_planted_bash_on_path_keeps_the_file_size_limit(tmp_path: Path):
    bindir = tmp_path / "venv_bin"
    bindir.mkdir()
    fake = bindir / "bash"  # what an earlier run could leave in the task venv's bin
    fake.write_text("#!/bin/sh\nulimit -f > fsize.txt\n")
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    sandbox.run("ulimit -f > ran.txt", cwd=work, budget=30, grace=5, log_path=tmp_path / "log", env=env,
                max_artifact_mb=1)
    planted = work / "fsize.txt"  # the planted bash ran: the limit must hold all the same
    assert not planted.exists() or planted.read_text().strip() != "unlimited", planted.read_text()
    assert (work / "ran.txt").read_text().strip() != "unlimited"  # the command ran, under its limit
