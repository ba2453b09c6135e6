"""Red team, tenth pass: attacks on the ninth pass's fixes (GNU rm removal, editable-only link skipping,
the ledger's schema check, the CLI's sqlite catch, llm_demo's SIGTERM handler)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ouroboros import llm_demo


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_second_sigterm_while_the_demo_stops_its_server_still_kills_the_server(tmp_path, monkeypatch):
    real = subprocess.Popen
    started = []

    def popen(argv, **kw):  # the model server, played by a process slow to stop (it ignores SIGTERM)
        proc = real([sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                     "print('up', flush=True); time.sleep(600)"], start_new_session=True, stdout=subprocess.PIPE)
        proc.stdout.readline()  # its SIGTERM handler is in place
        first_wait = proc.wait

        def wait(timeout=None):
            if timeout == 30:  # the demo's grace wait: the second SIGTERM lands here, as the handler raises
                raise KeyboardInterrupt
            return first_wait(timeout=timeout)

        proc.wait = wait
        started.append(proc)
        return proc

    def first_sigterm(url, server, timeout):
        raise KeyboardInterrupt  # what the demo's handler raises on the first SIGTERM

    monkeypatch.setattr(llm_demo.subprocess, "Popen", popen)
    monkeypatch.setattr(llm_demo, "wait_ready", first_sigterm)
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt):
            llm_demo.demo(tmp_path, 1, echo=lambda s: None)
    finally:
        signal.signal(signal.SIGTERM, old)
    server = started[0]
    try:
        for _ in range(100):
            if not _alive(server.pid) or server.poll() is not None:
                break
            time.sleep(0.05)
        assert server.poll() is not None, "the model server outlived the demo stopped by two SIGTERMs"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


_HUGE = r"""
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from ouroboros import memory
from ouroboros.agents import api
from ouroboros.task import load_task
root = Path(sys.argv[1])
task = load_task(root)
which = sys.argv[2]
text = memory.compact_prompt(task, root, []) if which == "prompt" else api.compact_format(task, root)
print("ok", len(text))
"""


@pytest.mark.parametrize("which", ["prompt", "format"])
def test_a_huge_editable_file_does_not_exhaust_the_compact_prompt(tmp_path, which):
    """Fixed on this branch: the small model's prompt read the editable files whole (Path.read_text); an
    editable file left huge (a sparse 16 GiB train.py) exhausted the harness's memory. Now capped."""
    import shutil

    root = tmp_path / "task"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "quadratic"), root)
    with open(root / "train.py", "r+b") as f:  # sparse: no disk used
        f.truncate(16 << 30)
    script = tmp_path / "huge.py"
    script.write_text(_HUGE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script), str(root), which], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-500:]
