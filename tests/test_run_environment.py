"""A run's environment: `[task] setup` once per run, experiments in the project's Python, the level
`process` refused for agents that write code, and the run header that says all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ouroboros import isolation, sandbox
from ouroboros.errors import OuroborosError
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import cli, commit_all

SETUP = ('setup = "echo once >> $OUROBOROS_CACHE/setups; '
         '{python} -m venv --without-pip --system-site-packages $OUROBOROS_ENV/venv"\n')


def _with_setup(root: Path, setup: str, run: str | None = None) -> Path:
    toml = root / "ouroboros.toml"
    text = toml.read_text().replace("[task]\n", "[task]\n" + setup, 1)
    if run:
        text = text.replace('run = "python train.py"', f'run = "{run}"')
    toml.write_text(text)
    commit_all(root, "setup")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("OUROBOROS_CACHE", str(folder))
    return folder


def test_setup_runs_once_and_experiments_use_its_environment(quadratic, cache):
    probe = "python -c 'import sys; print(chr(112) + \\\"refix\\\", sys.prefix)' && python train.py"
    _with_setup(quadratic, SETUP.format(python=sys.executable), run=probe)
    loop = Loop(load_task(quadratic), Options(agent="random", tag="env", max_experiments=1))
    loop.run()
    venv = quadratic / ".ouroboros" / "runs" / "env" / "env" / "venv"
    assert (cache / "setups").read_text() == "once\n"
    assert "the project's environment" in loop.interpreter()
    for e in loop.history:
        log = (loop.ledger.exp_dir("env", e.n) / "run.log").read_text()
        assert f"prefix {venv}" in log, log  # the project's interpreter, not the harness's
    again = Loop(load_task(quadratic), Options(agent="random", tag="env", resume=True, max_experiments=2))
    again.run()
    assert (cache / "setups").read_text() == "once\n"  # --resume reuses it
    assert len(again.finished) == 3


def test_a_failing_setup_says_where_its_log_is_and_resume_retries_it(quadratic, cache):
    _with_setup(quadratic, 'setup = "echo no such index >&2; exit 3"\n')
    with pytest.raises(OuroborosError, match=r"setup .* exited 3 \(no such index\); see .*setup.log.*--resume su"):
        Loop(load_task(quadratic), Options(agent="random", tag="su", max_experiments=1)).run()


def test_experiment_env_without_setup_is_the_harness_python_and_says_so(quadratic):
    loop = Loop(load_task(quadratic), Options(agent="random", tag="h", max_experiments=0))
    env = loop.experiment_env({})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert "no [task] setup" in loop.interpreter()
    venv = Path("/opt/project/.venv")
    env = sandbox.scrubbed_env(venv=venv)
    assert env["PATH"].split(os.pathsep)[0] == str(venv / "bin")
    assert os.path.dirname(sys.executable) not in env["PATH"].split(os.pathsep)
    assert env["VIRTUAL_ENV"] == env["UV_PROJECT_ENVIRONMENT"] == str(venv)


def _process_level(root: Path) -> None:
    toml = root / "ouroboros.toml"
    toml.write_text(toml.read_text() + '\n[bound]\nisolation = "process"\n')
    commit_all(root, "process level")


def test_level_process_is_refused_for_an_agent_that_writes_code(quadratic):
    _process_level(quadratic)
    with pytest.raises(OuroborosError, match="--allow-weak-isolation"):
        Loop(load_task(quadratic), Options(agent="cmd:true", tag="w", max_experiments=1))
    assert not (quadratic / ".ouroboros" / "runs" / "w" / "results.tsv").exists()  # nothing recorded
    Loop(load_task(quadratic), Options(agent="random", tag="k", max_experiments=0))  # knob search: allowed


def test_the_refusal_names_the_flag_that_works(quadratic):
    _process_level(quadratic)
    agent = f"cmd:{sys.executable} -c pass"
    proc = cli("run", "-C", str(quadratic), "--agent", agent, "-n", "1", "--tag", "w")
    assert proc.returncode == 2 and "--allow-weak-isolation" in proc.stdout + proc.stderr
    assert len((proc.stdout + proc.stderr).strip().splitlines()) == 1
    proc = cli("run", "-C", str(quadratic), "--agent", agent, "-n", "1", "--tag", "w2", "--allow-weak-isolation")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "isolation: process (weaker than bwrap)" in proc.stdout and "agent: NOT confined" in proc.stdout


def test_the_header_names_the_level_and_how_to_get_bwrap(quadratic, monkeypatch):
    proc = cli("run", "-C", str(quadratic), "--agent", "random", "-n", "0", "--tag", "hd")
    level = next(lv for lv in isolation.LEVELS if isolation.available(lv))
    assert f"isolation: {level}" in proc.stdout, proc.stdout
    assert "experiments run with the harness's Python (no [task] setup)" in proc.stdout
    if level != "bwrap":
        assert isolation.INSTALL_BWRAP in proc.stdout or "user namespaces" in proc.stdout
    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)
    assert isolation.install_hint("unshare") == f"install bubblewrap for the strongest isolation: " \
                                                f"{isolation.INSTALL_BWRAP}"
    assert isolation.install_hint("bwrap") is None


def test_a_stopped_harness_buys_the_run_no_time(tmp_path):
    """The run stops the harness (possible at level process) until long after its budget, then
    ends: the time is checked again when it ends, so it is a timeout, not a success."""
    resumer = subprocess.Popen([sys.executable, "-c", f"import os, signal, time; time.sleep(3); "
                                f"os.kill({os.getpid()}, signal.SIGCONT)"])
    try:
        out = sandbox.run(f"kill -STOP {os.getpid()}; exit 0", tmp_path, 0.5, 0.5, tmp_path / "run.log")
    finally:
        os.kill(os.getpid(), signal.SIGCONT)
        resumer.wait()
    assert out.timed_out and out.killed == "timeout"
