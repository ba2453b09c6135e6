"""Agent-driven mode: a scripted stand-in agent runs `ouroboros exp` itself, stops early, and the
harness starts a new session; `exp` is atomic, locked, guarded, and the only way to record."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ouroboros.drive import GUARD_FILE
from ouroboros.guard import Guard
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import cli, path_with, stand_in

# A stand-in `codex`: session 1 records two experiments, leaves an edit it never records, and
# quits early; session 2 records one and stops when `exp` says the run is closed.
SCRIPTED_AGENT = """
record()
session = int(os.environ["OUROBOROS_SESSION"])

def bump(delta):
    src = open("train.py").read()
    n = int(re.search(r"^STEPS = (\\d+)", src, re.M).group(1))
    open("train.py", "w").write(re.sub(r"^STEPS = \\d+", f"STEPS = {n + delta}", src, flags=re.M))

def exp(message):
    r = subprocess.run(["ouroboros", "exp", "-m", message], capture_output=True, text=True)
    print(r.stdout.strip(), r.stderr.strip(), "exit", r.returncode, flush=True)
    return r.returncode

if session == 1:
    bump(50); exp("steps +50")
    bump(100); exp("steps +100")
    bump(7)  # measured by the agent itself, never handed to exp: must not be recorded
    open("solution.json", "w").write('{"x": [3.0, -1.0, 0.5, 2.0]}')
    sys.exit(0)  # agents stop despite "never stop"
while True:  # until exp says the run is closed
    bump(25)
    if exp("steps +25") != 0:
        break
"""


def records(root: Path, tag: str):
    ledger = Ledger(root / ".ouroboros")
    return ledger.run(tag), ledger.experiments(tag)


def test_agent_driven_sessions_record_only_through_exp(quadratic, tmp_path):
    stand_in(tmp_path / "bin", "codex", SCRIPTED_AGENT)
    env = {"PATH": path_with(tmp_path / "bin"), "STANDIN_LOG": str(tmp_path / "calls.jsonl")}
    proc = cli("run", "-C", str(quadratic), "--agent", "codex", "--drive", "agent", "-n", "3", "--tag", "d",
               "--model", "gpt-5-codex", env=env, check=True)
    run, exps = records(quadratic, "d")
    assert run.sessions == 2 and run.status == "finished"
    assert [(e.n, e.session, e.description) for e in exps[1:]] == [
        (1, 1, "steps +50"), (2, 1, "steps +100"), (3, 2, "steps +25")]
    assert [(e.status in ("keep", "discard"), e.agent, e.model) for e in exps[1:]] == \
        [(True, "codex", "gpt-5-codex")] * 3
    assert [s["experiments"] for s in run.config["session_log"]] == [[1, 2], [3]]
    assert run.config["session_log"][0]["left_unrecorded"] > 0
    run_dir = quadratic / ".ouroboros" / "runs" / "d"
    assert "+STEPS" in (run_dir / "sessions" / "1.leftover.patch").read_text()  # kept for forensics only
    assert "experiment 1: keep" in (run_dir / "sessions" / "1.log").read_text()
    assert "closed: the limit of 3 experiments" in (run_dir / "sessions" / "2.log").read_text()
    assert len((run_dir / "results.tsv").read_text().splitlines()) == 1 + 4
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2
    for k, call in enumerate(calls, 1):
        assert call["argv"][:2] == ["exec", "--json"] and "danger-full-access" in call["argv"]
        assert call["argv"][call["argv"].index("--model") + 1] == "gpt-5-codex"
        prompt = call["argv"][-1]
        assert "ouroboros exp -m" in prompt and "# Results so far" in prompt
        assert "`ouroboros exp` replaces them all" in prompt and "`git reset` after a worse result" in prompt
        assert Path(call["cwd"]).resolve() == (run_dir / "worktree").resolve()
        assert call["env"]["OUROBOROS_RUN"] == "d" and call["env"]["OUROBOROS_SESSION"] == str(k)
    assert "| 2 |" in calls[1]["argv"][-1]  # the second session starts with the results so far
    assert "session 2" in proc.stdout and "2 sessions" in proc.stdout


def harness_run(root: Path, tag: str = "h") -> Path:
    cli("run", "-C", str(root), "--agent", "random", "-n", "1", "--tag", tag, check=True)
    ledger = Ledger(root / ".ouroboros")
    run = ledger.run(tag)
    run.config["max_experiments"] = None  # open again, for `exp` calls by hand
    ledger.save_run(run)
    return root / ".ouroboros" / "runs" / tag / "worktree"


def set_knob(worktree: Path, name: str, value: str) -> None:
    src = (worktree / "train.py").read_text()
    (worktree / "train.py").write_text(re.sub(rf"^{name} = \S+", f"{name} = {value}", src, flags=re.M))


def test_exp_finds_the_run_from_its_worktree_and_prints_the_verdict(quadratic):
    worktree = harness_run(quadratic)
    set_knob(worktree, "STEPS", "400")
    proc = cli("exp", "-m", "more steps", cwd=worktree)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"experiment 2: (keep|discard).*loss \d", proc.stdout)
    _, exps = records(quadratic, "h")
    assert exps[-1].description == "more steps" and exps[-1].status in ("keep", "discard")


def test_exp_refuses_a_changed_evaluator(quadratic):
    worktree = harness_run(quadratic)
    ev = worktree / "evaluate.py"
    ev.write_text(ev.read_text().replace("loss = objective(x)", "loss = 0.0"))
    proc = cli("exp", "-m", "improve", cwd=worktree)
    _, exps = records(quadratic, "h")
    assert exps[-1].status == "violation" and "evaluate.py" in exps[-1].reason
    assert "violation" in proc.stdout
    assert "loss = objective(x)" in ev.read_text()  # reverted


def test_two_exp_calls_never_interleave(quadratic):
    worktree = harness_run(quadratic)
    set_knob(worktree, "STEPS", "300")
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "exp", "-m", f"call {i}"], cwd=worktree,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        p.communicate(timeout=120)
    _, exps = records(quadratic, "h")
    a, b = exps[-2], exps[-1]
    assert {a.description, b.description} == {"call 0", "call 1"} and a.n + 1 == b.n
    assert a.finished <= b.started  # the second began after the first was recorded
    assert b.status == "crash" and "changed no file" in b.reason  # the change was the first's


def test_exp_keeps_the_runs_status(quadratic):
    worktree = harness_run(quadratic)
    assert records(quadratic, "h")[0].status == "finished"
    set_knob(worktree, "STEPS", "300")
    assert cli("exp", "-m", "late idea", cwd=worktree).returncode == 0
    run, exps = records(quadratic, "h")
    assert exps[-1].description == "late idea" and run.status == "finished"


def test_exp_puts_back_a_tampered_git_config_and_records_the_next_change(quadratic):
    worktree = harness_run(quadratic)
    loop = Loop(load_task(quadratic), Options(tag="h", resume=True))
    Guard(loop.task, loop.ws).save(quadratic / ".ouroboros/runs/h" / GUARD_FILE)  # as an agent-driven run does
    loop.ledger.close()
    config = loop.ws._gitdirs()[1] / "config"
    original = config.read_text()
    config.write_text(original + "[alias]\n\tst = !touch /tmp/pwned\n")  # the agent plants an alias
    set_knob(worktree, "STEPS", "300")
    cli("exp", "-m", "with a planted alias", cwd=worktree)
    assert config.read_text() == original  # put back from the baseline's bytes, not the tampered ones
    set_knob(worktree, "STEPS", "350")
    cli("exp", "-m", "honest", cwd=worktree)
    _, exps = records(quadratic, "h")
    assert exps[-2].status == "violation" and exps[-1].status in ("keep", "discard")


def test_exp_outside_a_run_says_how_to_call_it(tmp_path):
    proc = cli("exp", "-m", "x", cwd=tmp_path, env={"OUROBOROS_TASK_DIR": "", "OUROBOROS_RUN": ""})
    assert proc.returncode == 2 and "no run found" in proc.stderr


def test_exp_after_the_window_closed_records_nothing(quadratic):
    worktree = harness_run(quadratic)
    ledger = Ledger(quadratic / ".ouroboros")
    run = ledger.run("h")
    run.config["window_end"] = time.time() - 1
    ledger.save_run(run)
    set_knob(worktree, "STEPS", "300")
    proc = cli("exp", "-m", "late", cwd=worktree)
    assert proc.returncode == 3 and "window is closed" in proc.stdout
    assert len(records(quadratic, "h")[1]) == 2


def test_agent_driven_mode_needs_an_agent_that_runs_commands(quadratic):
    proc = cli("run", "-C", str(quadratic), "--agent", "random", "--drive", "agent", "-n", "1")
    assert proc.returncode == 2 and "--drive agent needs" in proc.stderr
    assert not (quadratic / ".ouroboros" / "ledger.sqlite").exists() or not records(quadratic, "x")[0]


def test_exp_obeys_the_runs_task_not_the_checkouts(quadratic):
    """An agent swaps the checkout's evaluate command for one `exp` call: the run's base commit decides."""
    worktree = harness_run(quadratic)
    toml = quadratic / "ouroboros.toml"
    honest = toml.read_text()
    toml.write_text(honest.replace('evaluate = "python evaluate.py"',
                                   'evaluate = "echo \'{\\"loss\\": 0.0}\' > $OUROBOROS_METRICS"'))
    set_knob(worktree, "STEPS", "201")
    proc = cli("exp", "-m", "one more step", cwd=worktree)
    toml.write_text(honest)
    assert proc.returncode == 0, proc.stderr
    _, exps = records(quadratic, "h")
    assert exps[-1].metric is not None and exps[-1].metric > 0.0  # the real evaluator scored it


def test_exp_refuses_while_the_harness_asks_its_agent(quadratic):
    """In harness-driven mode an `exp` from inside a proposal would record one experiment twice."""
    worktree = harness_run(quadratic)
    proposer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (quadratic / ".ouroboros" / "runs" / "h" / "proposing").write_text(str(proposer.pid))
        set_knob(worktree, "STEPS", "201")
        proc = cli("exp", "-m", "from inside", cwd=worktree)
    finally:
        proposer.kill()
        proposer.wait()
    assert proc.returncode == 2 and "harness-driven" in proc.stdout + proc.stderr
    _, exps = records(quadratic, "h")
    assert len(exps) == 2
    tsv = (quadratic / ".ouroboros" / "runs" / "h" / "results.tsv").read_text().splitlines()
    assert len(tsv) == 1 + len(exps)


def test_an_exp_call_inside_a_proposal_records_nothing(quadratic, tmp_path):
    script = tmp_path / "agent.py"
    script.write_text(
        "import re, subprocess, sys\n"
        "s = open('train.py').read()\n"
        "open('train.py', 'w').write(re.sub(r'^STEPS = \\d+', 'STEPS = 201', s, flags=re.M))\n"
        "subprocess.run([sys.executable, '-m', 'ouroboros.cli', 'exp', '-m', 'sneaky'])\n")
    cli("run", "-C", str(quadratic), "--agent", f"cmd:{sys.executable} {script}", "-n", "2", "--tag", "in",
        "--allow-weak-isolation", check=True)
    _, exps = records(quadratic, "in")
    assert [e.n for e in exps] == [0, 1, 2] and "sneaky" not in {e.description for e in exps}
    tsv = (quadratic / ".ouroboros" / "runs" / "in" / "results.tsv").read_text().splitlines()
    assert len(tsv) == 1 + len(exps)


def test_resume_goes_on_with_the_base_commits_task_and_says_so(quadratic):
    loop = Loop(load_task(quadratic), Options(agent="random", tag="r", max_experiments=1))
    loop.run()
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace("budget = 10", "budget = 99"))
    again = Loop(load_task(quadratic), Options(agent="random", tag="r", resume=True, max_experiments=2))
    assert again.task.task.budget == 10
    assert any("task.budget" in w and "base commit" in w for w in again.warnings)
