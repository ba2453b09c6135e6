"""The hard budget: at budget + grace the whole tree is gone, SIGTERM-proof grandchildren included."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil

from ouroboros import sandbox

GRANDCHILD = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if len(sys.argv) == 1:
    subprocess.Popen([sys.executable, __file__, "child"])
    subprocess.Popen([sys.executable, __file__, "daemon"], start_new_session=True)
time.sleep(60)
"""


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in (p.info["cmdline"] or [])):
            found.append(p)
    return found


def test_grandchildren_ignoring_sigterm_are_gone_at_budget_plus_grace(tmp_path: Path) -> None:
    script = tmp_path / "stubborn_xq7.py"
    script.write_text(GRANDCHILD)
    start = time.monotonic()
    out = sandbox.run([sys.executable, str(script)], tmp_path, budget=1.0, grace=0.5, log_path=tmp_path / "log")
    elapsed = time.monotonic() - start
    assert out.timed_out and out.killed == "timeout"
    assert 1.5 <= out.wall_s and elapsed < 10
    assert _marked("stubborn_xq7") == []  # child, grandchild and the setsid daemon


def test_a_daemon_left_behind_by_a_finished_run_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "leaver_k3v.py"
    script.write_text("import subprocess, sys\n"
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'leaver_k3v'],"
                      " start_new_session=True)\n")
    out = sandbox.run([sys.executable, str(script)], tmp_path, budget=10, grace=1, log_path=tmp_path / "log")
    assert out.returncode == 0 and not out.timed_out
    assert out.stray == 1
    assert _marked("leaver_k3v") == []


def test_output_and_exit_code_are_recorded(tmp_path: Path) -> None:
    out = sandbox.run("echo hello; exit 3", tmp_path, budget=5, grace=1, log_path=tmp_path / "log")
    assert out.returncode == 3 and not out.ok
    assert (tmp_path / "log").read_text() == "hello\n"
    assert out.peak_rss_mb > 0


def test_secrets_are_scrubbed_from_the_environment() -> None:
    env = sandbox.scrubbed_env({"OUROBOROS_BUDGET_S": "5"}, base={
        "PATH": "/usr/bin", "OPENAI_API_KEY": "sk-x", "GITHUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s",
        "HOME": "/root", "LANG": "C"})
    assert "OPENAI_API_KEY" not in env and "GITHUB_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["HOME"] == "/root" and env["OUROBOROS_BUDGET_S"] == "5"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
