"""sandbox.py's claims: budget, leftover processes, process, memory, file and log limits, secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from ouroboros import sandbox

PY = sys.executable


def _alive(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _run(tmp_path: Path, code: str, budget: float = 5.0, **kw) -> tuple[sandbox.Outcome, str]:
    marker = f"m-{uuid.uuid4().hex[:10]}"
    (tmp_path / "prog.py").write_text(code.replace("MARKER", marker))
    log = tmp_path / "run.log"
    outcome = sandbox.run([PY, "prog.py", marker], tmp_path, budget, 0.5, log, env=sandbox.scrubbed_env(), **kw)
    assert _alive(marker) == []  # whatever happened, nothing of it is left running
    return outcome, log.read_text(errors="replace")


def test_an_honest_command_succeeds(tmp_path):
    outcome, log = _run(tmp_path, "print('hello')")
    assert outcome.ok and outcome.returncode == 0 and log == "hello\n"


def test_a_run_past_budget_and_grace_is_killed(tmp_path):
    start = time.monotonic()
    outcome, _ = _run(tmp_path, "import time\ntime.sleep(60)", budget=0.5)
    assert outcome.timed_out and outcome.killed == "timeout"
    assert time.monotonic() - start < 10


def test_a_daemon_left_behind_is_killed_and_fails_the_run(tmp_path):
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', sys.argv[1]], "
            "start_new_session=True)\n")
    outcome, _ = _run(tmp_path, code)
    assert outcome.stray == 1 and not outcome.ok
    assert "left 1 process running" in outcome.killed


def test_a_double_forked_daemon_is_caught(tmp_path):
    code = ("import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n    os._exit(0)\n"
            "os.wait()\n")
    outcome, _ = _run(tmp_path, code)
    assert outcome.stray >= 1 and not outcome.ok


def test_a_fork_bomb_hits_the_process_limit(tmp_path):
    code = ("import os, time\nend = time.time() + 5\n"
            "for _ in range(7):\n    os.fork()\n"
            "while time.time() < end:\n    time.sleep(0.05)\n")
    outcome, _ = _run(tmp_path, code, max_processes=10)
    assert outcome.killed.startswith("process limit") and not outcome.ok


def test_memory_above_the_limit_ends_the_run(tmp_path):
    code = "import time\nblob = bytearray(400 * 2**20)\nblob[::4096] = b'x' * len(blob[::4096])\ntime.sleep(5)\n"
    outcome, _ = _run(tmp_path, code, memory_mb=150)
    assert outcome.killed == "memory limit" and not outcome.ok


def test_a_file_above_the_artifact_limit_cannot_be_written(tmp_path):
    code = "open('big.bin', 'wb').write(b'x' * 12 * 2**20)\n"
    outcome, log = _run(tmp_path, code, max_artifact_mb=5, max_log_mb=1)
    assert not outcome.ok and "File too large" in log
    assert (tmp_path / "big.bin").stat().st_size <= 5 * 2**20


@pytest.mark.parametrize("startup", ["", "BASH_ENV", "BASH_FUNC_ulimit%%"])
def test_a_plain_bash_command_has_its_limits_hard_before_anything_of_it_runs(tmp_path, monkeypatch, startup):
    started: list[str] = []
    real = subprocess.Popen

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, argv, *args, **kwargs):
            started.append(os.path.basename(argv[0]))
            super().__init__(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    env = sandbox.scrubbed_env()
    (tmp_path / "startup.sh").write_text("ulimit -f unlimited; ulimit -H -f > startup.txt\n")
    if startup == "BASH_ENV":  # read by bash before the command's first line: then prlimit sets the limits first
        env["BASH_ENV"] = str(tmp_path / "startup.sh")
    elif startup:  # an exported function named ulimit would replace the builtin
        env[startup] = "() { :; }"
    command = ("builtin ulimit -f unlimited; builtin ulimit -S -f > soft.txt; builtin ulimit -H -f > hard.txt; "
               "head -c 3000000 /dev/zero > big")
    outcome = sandbox.run(["bash", "-c", command], tmp_path, 5.0, 0.5, tmp_path / "run.log", env=env,
                          max_artifact_mb=1, max_log_mb=1)
    limit = str(2 * 2**20 // 1024)  # KiB: max(max_artifact_mb, the log cap + 1 MiB)
    assert (tmp_path / "soft.txt").read_text().split() == [limit] == (tmp_path / "hard.txt").read_text().split()
    assert not outcome.ok and (tmp_path / "big").stat().st_size == 2 * 2**20
    if startup == "BASH_ENV":
        assert (tmp_path / "startup.txt").read_text().split() == [limit]
    assert started == (["bash"] if not startup or sandbox._PRLIMIT is None else ["prlimit"])


def test_many_small_files_hit_the_artifact_limit(tmp_path):
    code = ("import os, time\nos.mkdir('junk')\n"
            "for i in range(30):\n    open(f'junk/{i}', 'wb').write(os.urandom(2**20))\n    time.sleep(0.01)\n"
            "time.sleep(5)\n")
    outcome, _ = _run(tmp_path, code, max_artifact_mb=10, watch=tmp_path)
    assert outcome.killed.startswith("artifact limit")


def test_the_log_is_capped(tmp_path):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536 + '\\n')\n"
    outcome, _ = _run(tmp_path, code, max_log_mb=1)
    assert outcome.killed == "log limit"
    assert (tmp_path / "run.log").stat().st_size < 1.1 * 2**20


def test_secrets_are_scrubbed_from_the_environment():
    env = sandbox.scrubbed_env(base={"OPENAI_API_KEY": "sk-1", "GITHUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s",
                                     "MY_PASSWORD": "p", "HOME": "/root", "PATH": "/usr/bin", "LANG": "C",
                                     "OUROBOROS_METRICS": "/x", "OUROBOROS_CACHE": "/c"})
    assert not {"OPENAI_API_KEY", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_PASSWORD", "OUROBOROS_METRICS"} & set(env)
    assert env["HOME"] == "/root" and env["LANG"] == "C" and env["OUROBOROS_CACHE"] == "/c"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_a_report_of_strays_can_only_raise_the_count(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"[ouroboros] strays 0\nnoise\n[ouroboros] strays 2\n")
    assert sandbox.reported_strays(log) == 2


@pytest.mark.parametrize("count", [0, 3])
def test_reported_strays_fail_the_run(tmp_path, count):
    code = f"print('[ouroboros] strays {count}')" if count else "print('fine')"
    outcome, _ = _run(tmp_path, code)
    assert outcome.ok == (count == 0)


def test_scrubbed_env_is_an_allowlist_with_proxies_stripped_and_task_names_added():
    base = {"PATH": "/usr/bin", "HOME": "/h", "LC_NUMERIC": "C", "CUDA_HOME": "/cuda", "TORCH_HOME": "/t",
            "MY_APP_CONFIG": "x", "https_proxy": "http://alice:s3cret@proxy.corp:3128", "NO_PROXY": "localhost",
            "WANDB_MODE": "offline"}
    env = sandbox.scrubbed_env(base=base)
    assert {"HOME", "LC_NUMERIC", "CUDA_HOME", "TORCH_HOME", "NO_PROXY"} <= set(env)
    assert "MY_APP_CONFIG" not in env and "WANDB_MODE" not in env
    assert env["https_proxy"] == "http://proxy.corp:3128"
    assert sandbox.scrubbed_env(base=base, allow=["WANDB_MODE"])["WANDB_MODE"] == "offline"


@pytest.mark.parametrize("value, kept", [
    ("http://alice:p@ss/w rd@proxy.corp:3128/", "http://proxy.corp:3128"),  # '@', '/', a space in the password
    ("alice:s3cret@proxy.corp:8080", "proxy.corp:8080"),
    ("socks5h://u:p@[::1]:1080", "socks5h://[::1]:1080"),
    ("http://proxy.corp:port", None),  # malformed: dropped, not passed
    ("ht tp://alice@proxy:1", None),
    ("http://alice:pw@", None),
])
def test_proxies_keep_only_their_scheme_host_and_port(value, kept):
    env = sandbox.scrubbed_env(base={"PATH": "/usr/bin", "HTTPS_PROXY": value, "no_proxy": "localhost,10.0.0.0/8",
                                     "NO_PROXY": "a@b"})
    assert env.get("HTTPS_PROXY") == kept
    assert env["no_proxy"] == "localhost,10.0.0.0/8" and "NO_PROXY" not in env


def test_kill_inside_ends_the_runs_marked_processes_wherever_they_are_and_nothing_else(tmp_path):
    import subprocess

    run_dir = tmp_path / ".ouroboros" / "runs" / "t"
    (run_dir / "worktree").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    ours = subprocess.Popen(sleep, cwd=elsewhere, env=sandbox.marked(None, run_dir))  # a leftover that moved away
    other_run = subprocess.Popen(sleep, cwd=run_dir / "worktree", env=sandbox.marked(None, tmp_path / "other"))
    users = subprocess.Popen(sleep, cwd=run_dir / "worktree")  # the user's shell in the worktree
    try:
        assert sandbox.kill_inside(run_dir) == 1
        ours.wait(timeout=10)  # ended (TimeoutExpired otherwise)
        assert other_run.poll() is None and users.poll() is None
    finally:
        for p in (ours, other_run, users):
            p.kill()
            p.wait()


def test_the_process_bookkeeping_reads_a_name_with_spaces_and_parentheses():
    """/proc/<pid>/stat puts the name in parentheses; a run can name itself `x) S 1 (` to shift the fields."""
    code = "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'x) Z 1 (y', 0, 0, 0); print(1, flush=True); time.sleep(30)"
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"1\n"
        state, ppid, start, pages = sandbox._stat(proc.pid)
        assert state != "Z" and ppid == os.getpid()
        assert start == sandbox._stat(proc.pid)[2] and pages > 0
        assert sandbox._tree(os.getpid(), {})[1:].count(proc.pid) == 1
    finally:
        proc.kill()
        proc.wait()
    assert sandbox._stat(proc.pid) is None


def test_a_signal_reaches_only_the_process_with_the_noted_start_time():
    """A pid handed to another process since it was noted is never signalled: its start time differs."""
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    try:
        start = sandbox._stat(proc.pid)[2]
        assert not sandbox._signal(proc.pid, start + 1, signal.SIGKILL)
        assert proc.poll() is None
        assert sandbox._signal(proc.pid, start, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert not sandbox._signal(proc.pid, start, signal.SIGKILL)  # reaped: gone


def test_a_child_killed_by_the_harness_is_reaped_and_counted_gone():
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    procs: dict[int, int] = {}
    assert sandbox._note(proc.pid, procs)
    sandbox._kill(procs)
    assert sandbox._stat(proc.pid) is None  # not even a zombie: the kill's wait reaped our child
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)


def test_du_counts_every_entry_and_a_snapshot_of_the_worktree_counts_the_same(tmp_path):
    from ouroboros.workspace import Workspace

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f.txt").write_text("x")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    ws = Workspace(repo, ".", tmp_path / "records", "t")
    ws.open(subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                           text=True).stdout.strip())
    (ws.path / "big.bin").write_bytes(b"y" * 5000)
    (ws.path / "empty").touch()
    (ws.path / "d" / "e").mkdir(parents=True)
    (ws.path / "d" / ".git").mkdir()  # counted, as any folder
    (ws.path / "d" / ".git" / "blob").write_bytes(b"z" * 3000)
    (ws.path / "link").symlink_to("big.bin")
    size = sandbox.du(ws.path)
    # files with data in whole 4 KiB blocks: f.txt, big.bin (2), d/.git/blob, the .git file; folders their
    # size (d, d/e, d/.git: a block each); 512 for the empty file and the link
    assert size == 4096 * 5 + 4096 * 3 + 512 * 2
    snap = ws.snapshot()
    assert sandbox.du_of((k[0], k[3]) for k in snap.values()) + sandbox.du_entry(ws.path / ".git") == size
    (ws.path / ".git").unlink()  # a folder in place of the worktree's .git file counts too
    (ws.path / ".git").mkdir()
    (ws.path / ".git" / "fill").write_bytes(b"w" * 4000)
    assert sandbox.du(ws.path) == size - 4096 + 4096 + 4096


def test_without_proc_the_bookkeeping_reads_the_same_facts_through_psutil(tmp_path, monkeypatch):
    """Where there is no /proc/<pid>/stat (not Linux), psutil answers: a daemon is still caught."""
    monkeypatch.setattr(sandbox, "_PROC", False)
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', sys.argv[1]], "
            "start_new_session=True)\n")
    outcome, _ = _run(tmp_path, code)
    assert outcome.stray == 1 and "left 1 process running" in outcome.killed


def test_waiting_for_processes_ends_when_they_end_and_not_before(tmp_path):
    """A grandchild (not ours to reap) is waited for until it ends; one that does not end outlasts the wait."""
    code = ("import subprocess, sys, time\n"
            "short = subprocess.Popen(['sleep', '0.3'])\nlong = subprocess.Popen(['sleep', '30'])\n"
            "print(short.pid, long.pid, flush=True)\nshort.wait()\nlong.wait()\n")
    parent = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        short, long = map(int, parent.stdout.readline().split())
        procs = {pid: sandbox._stat(pid)[2] for pid in (short, long)}
        sandbox._wait_gone({short: procs[short]}, 60)
        st = sandbox._stat(short)
        assert st is None or st[0] == "Z" or st[2] != procs[short]
        sandbox._wait_gone({long: procs[long]}, 0.2)
        assert sandbox._stat(long)[0] != "Z"  # still running: the wait gave up at its timeout
        sandbox._kill({long: procs[long]})
        st = sandbox._stat(long)
        assert st is None or st[0] == "Z"
    finally:
        parent.kill()
        parent.wait()
