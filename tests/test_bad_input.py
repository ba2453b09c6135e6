"""Bad input gets a one-line error or verdict that says what and how to fix, and loses nothing."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from ouroboros.testing import cli, commit_all

STDOUT_TASK = """\
[task]
name = "s"
editable = ["train.py"]
run = "{run}"
budget = 5
grace = 1

[metric]
name = "loss"
"""


def stdout_task(tmp_path: Path, run: str = "python train.py", train: str = "X = 1.0\nprint('loss:', X)\n") -> Path:
    root = tmp_path / "s"
    root.mkdir()
    (root / "ouroboros.toml").write_text(STDOUT_TASK.format(run=run))
    (root / "program.md").write_text("make loss small\n")
    (root / "train.py").write_text(train)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    commit_all(root, "baseline")
    return root


def experiments(root: Path, tag: str) -> list[tuple[int, str, str]]:
    db = sqlite3.connect(root / ".ouroboros/ledger.sqlite")
    return db.execute("SELECT n, status, reason FROM experiments WHERE tag=? ORDER BY n", (tag,)).fetchall()


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_dirty_tree_is_refused_with_advice_that_works(quadratic: Path) -> None:
    (quadratic / "train.py").write_text((quadratic / "train.py").read_text() + "\n# wip\n")
    (quadratic / "notes_wip.py").write_text("x = 1\n")  # untracked: not the run's business
    proc = cli("run", "-C", str(quadratic), "-n", "0", "--agent", "random")
    one_line_error(proc, "uncommitted changes", "git stash -u")
    subprocess.run(["git", "stash", "-u"], cwd=quadratic, check=True, capture_output=True)  # as advised
    assert cli("run", "-C", str(quadratic), "-n", "0", "--agent", "random").returncode == 0


def test_untracked_files_no_glob_names_do_not_block_a_run(quadratic: Path) -> None:
    (quadratic / "run.log").write_text("from a manual run\n")
    proc = cli("run", "-C", str(quadratic), "-n", "0", "--agent", "random", check=True)
    assert "untracked file(s) stay out of the run" in proc.stdout and "run.log" in proc.stdout


def test_missing_limit(quadratic: Path) -> None:
    one_line_error(cli("run", "-C", str(quadratic)), "--max-experiments")


def test_run_command_that_does_not_exist(tmp_path: Path) -> None:
    root = stdout_task(tmp_path, run="no_such_trainer --fast")
    one_line_error(cli("run", "-C", str(root), "-n", "1"), "no_such_trainer", "not found")


def test_evaluator_that_prints_no_metric_fails_the_baseline_and_keeps_its_record(tmp_path: Path) -> None:
    root = stdout_task(tmp_path, train="print('all done')\n")
    proc = cli("run", "-C", str(root), "-n", "2", "--agent", "cmd:true", "--tag", "b")
    one_line_error(proc, "baseline failed", "has no loss")
    assert experiments(root, "b") == [(0, "crash", "the run's output has no loss")]
    assert "all done" in (root / ".ouroboros/runs/b/exp/0/run.log").read_text()
    one_line_error(cli("run", "-C", str(root), "--resume", "b"), "failed at its baseline", "start a new run")
    assert cli("status", "-C", str(root), check=True).stdout.count("failed") == 1


def test_unknown_agent(quadratic: Path) -> None:
    one_line_error(cli("run", "-C", str(quadratic), "-n", "1", "--agent", "gpt5-magic"), "unknown agent")


def _agent(tmp_path: Path, body: str) -> str:
    script = tmp_path / "agent.py"
    script.write_text("import os, re, sys\nn = int(os.environ['OUROBOROS_EXPERIMENT'])\n" + body)
    return f"cmd:python {script}"


def test_agent_failures_are_verdicts_and_the_loop_goes_on(tmp_path: Path) -> None:
    root = stdout_task(tmp_path)
    agent = _agent(tmp_path, """
src = open('train.py').read()
if n == 1:
    print('quota exceeded'); sys.exit(3)          # the agent fails
if n == 2:
    sys.exit(0)                                    # edits nothing
if n == 3:
    open('train.py', 'w').write('X = (\\n')       # a garbage patch
if n == 4:
    open('train.py', 'w').write("print('loss:', float('nan'))\\n")
if n == 5:
    open('train.py', 'w').write(src.replace('X = 1.0', 'X = 0.5'))
    open(os.environ['OUROBOROS_DESCRIPTION'], 'w').write('halve X\\n')
""")
    proc = cli("run", "-C", str(root), "-n", "5", "--agent", agent, "--tag", "a", check=True)
    got = experiments(root, "a")
    assert [s for _, s, _ in got] == ["keep", "crash", "crash", "crash", "crash", "keep"]
    assert got[1][2] == "agent exited 3: quota exceeded"
    assert got[2][2] == "the proposal changed no file"
    assert got[3][2] == "run exited 1"
    assert got[4][2] == "the run's output gave loss=nan"
    assert "halve X" in proc.stdout
    # the last failure's log reaches the agent in the next prompt
    prompt = (root / ".ouroboros/runs/a/exp/4/prompt.md").read_text()
    assert "Last failure: experiment 3 (crash: run exited 1)" in prompt and "SyntaxError" in prompt


def test_a_broken_proposal_never_reaches_the_best_branch(tmp_path: Path) -> None:
    root = stdout_task(tmp_path)
    agent = _agent(tmp_path, "open('train.py', 'w').write('raise SystemExit(1)\\n')\n")
    cli("run", "-C", str(root), "-n", "2", "--agent", agent, "--tag", "g", check=True)
    best = subprocess.run(["git", "show", "ouroboros/g:train.py"], cwd=root, capture_output=True, text=True).stdout
    assert best == "X = 1.0\nprint('loss:', X)\n"


@pytest.mark.parametrize("bad", ["ouroboros.toml", "evaluate.py"])
def test_an_edit_to_a_protected_file_is_a_violation(quadratic: Path, tmp_path: Path, bad: str) -> None:
    agent = _agent(tmp_path, f"open('{bad}', 'a').write('\\n# tampered\\n')\n")
    cli("run", "-C", str(quadratic), "-n", "1", "--agent", agent, "--tag", "v", check=True)
    (n, status, reason), = experiments(quadratic, "v")[1:]
    assert status == "violation" and f"protected file {bad} changed" in reason


def test_shell_builtins_and_keywords_are_valid_run_commands(tmp_path: Path) -> None:
    root = stdout_task(tmp_path, run="ulimit -n 1024; python train.py")
    cli("run", "-C", str(root), "-n", "1", "--agent", "cmd:true", "--tag", "u", check=True)
    assert experiments(root, "u")[0][1] == "keep"


def test_an_agent_that_commits_is_a_violation_and_its_change_is_still_recorded(quadratic: Path, tmp_path: Path) -> None:
    agent = _agent(tmp_path, """
import subprocess
src = open('train.py').read()
open('train.py', 'w').write(src.replace('STEPS = 200', 'STEPS = 300'))
subprocess.run(['git', '-c', 'user.name=a', '-c', 'user.email=a@a', 'commit', '-qam', 'mine'], check=True)
""")
    # an unconfined agent (a confined one cannot reach the repository's git dir at all)
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text() + '\n[bound]\nisolation = "process"\n')
    commit_all(quadratic, "process level")
    cli("run", "-C", str(quadratic), "-n", "1", "--agent", agent, "--tag", "h", "--allow-weak-isolation", check=True)
    (_, status, reason), = experiments(quadratic, "h")[1:]
    assert status == "violation" and "HEAD moved" in reason
    diff = (quadratic / ".ouroboros/runs/h/exp/1/diff.patch").read_text()
    assert "+STEPS = 300" in diff  # the attempt holds the agent's change
    best = subprocess.run(["git", "show", "ouroboros/h:train.py"], cwd=quadratic, capture_output=True, text=True)
    assert "STEPS = 200" in best.stdout  # and the branch does not
