"""Thirteenth red-team pass: the perf15 shortcuts on the trust path (ulimit in bash at level process)."""
from pathlib import Path

import pytest

from ouroboros import sandbox


@pytest.mark.xfail(strict=True, reason=(
    "level process, perf15: the file-size limit is set by the `ulimit` line of `bash -c`, so it only holds "
    "if the `bash` that PATH resolves is the real one; PATH starts with the task venv's bin (written by the "
    "setup command, and writable by a level-process run or agent of an earlier experiment), and a planted "
    "`bash` there simply skips the line. prlimit set the limit before exec, whatever ran. Fix: resolve bash "
    "by absolute path (shutil.which with the harness's own PATH, or /bin/bash) in _limits_in_shell and at "
    "sandbox.run's `argv = ['bash', '-c', ...]`, or keep prlimit when argv[0] is not an absolute path."))
def test_planted_bash_on_path_keeps_the_file_size_limit(tmp_path: Path):
    bindir = tmp_path / "venv_bin"
    bindir.mkdir()
    fake = bindir / "bash"  # what an earlier run could leave in the task venv's bin
    fake.write_text("#!/bin/sh\nulimit -f > fsize.txt\n")
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    sandbox.run("true", cwd=work, budget=30, grace=5, log_path=tmp_path / "log", env=env,
                max_artifact_mb=1)
    assert (work / "fsize.txt").read_text().strip() != "unlimited"
