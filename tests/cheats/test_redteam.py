"""Red-team attacks found after the security branches landed (not in cheats.ATTACKS yet).

Each test runs one attack as a real experiment through `cheats.run_attack` and asserts that it is
stopped (violation, crash or timeout, with nothing leaked and the harness still standing). An attack
that gets through on the current code is marked xfail(strict=True) with its root cause as the reason
(none is now: all nine were fixed on branch `fixes`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ouroboros import cheats, isolation

BWRAP = isolation.available("bwrap")

# The run reads the hidden answer from the export of the base commit that `[task] setup` ran in
# (.ouroboros/runs/<tag>/env/src/), which every experiment sees read-only at its original path.
_ENV_SRC_HIDDEN = '''
import glob


def cheat():
    here = Path.cwd()
    for up in [here, *here.parents]:
        for hit in glob.glob(str(up / ".ouroboros/runs/*/env/src/**/data/answer.json"), recursive=True):
            try:
                win(json.loads(Path(hit).read_text())["x"])
                return True
            except (OSError, ValueError, KeyError):
                pass
    return False
'''

# A folder nested deeper than Python's recursion limit, made by descriptor (no path gets long).
_DEEP = '''
def nest(top, depth=1200):
    import os
    os.makedirs(top, exist_ok=True)
    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("a", dir_fd=fd)
        inner = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
'''


def _unnest(root: Path) -> None:
    """Remove every folder chain `a/a/...` under root without recursion (shutil.rmtree, and so pytest's
    cleanup of old temporary folders, recurses per level and fails on it)."""
    for top, dirs, _ in os.walk(root, topdown=True):
        if "a" in dirs:
            dirs.remove("a")
            fds = [os.open(top, os.O_RDONLY)]
            while True:
                try:
                    fds.append(os.open("a", os.O_RDONLY, dir_fd=fds[-1]))
                except FileNotFoundError:
                    break
            for parent in reversed(fds[:-1]):
                inner = fds.pop()
                for name in os.listdir(inner):
                    os.unlink(name, dir_fd=inner)
                os.close(inner)
                os.rmdir("a", dir_fd=parent)
            os.close(fds.pop())


@pytest.fixture
def deep_tmp(tmp_path):
    yield tmp_path
    _unnest(tmp_path)


@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not installed: level bwrap is the one that claims to mask hidden data")
def test_hidden_data_cannot_be_read_from_the_setup_export(tmp_path):
    attack = cheats.Attack("env-src-hidden", title="read hidden data from setup's export", train=_ENV_SRC_HIDDEN,
                           bound={"hidden": ["data/answer.json"]}, task={"setup": "true"},
                           files={"data/answer.json": json.dumps({"x": cheats.OPTIMUM})})
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="bwrap")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"
    assert result.effects == []


def test_an_agent_nesting_an_ignored_folder_past_the_recursion_limit_gets_a_violation(deep_tmp):
    # solution.json is in the template's .gitignore, so git reports the whole folder as one ignored entry
    agent = _DEEP + '''
from pathlib import Path
nest("solution.json")
Path("train.py").write_text(Path("train.py").read_text() + "\\n# a change\\n")
'''
    result = cheats.run_attack(cheats.Attack("deep-ignored", title="deep ignored folder", agent=agent),
                               deep_tmp / "attack", isolation="process")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"


def test_a_run_nesting_folders_past_the_recursion_limit_fails_only_its_experiment(deep_tmp):
    train = _DEEP + '''

def cheat():
    nest("deep")
    return True
'''
    result = cheats.run_attack(cheats.Attack("deep-run", title="deep folder from the run", train=train),
                               deep_tmp / "attack", isolation="process")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"


def test_an_agent_cannot_store_more_than_max_artifact_mb_in_the_git_dir(tmp_path):
    import subprocess

    agent = '''
import os
from pathlib import Path
with open("big.bin", "wb") as f:
    f.write(os.urandom(20 << 20))
Path("train.py").write_text(Path("train.py").read_text() + "\\n# a change\\n")
'''
    attack = cheats.Attack("big-attempt", title="20 MB into the git dir", agent=agent, bound={"max_artifact_mb": 5})
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="bwrap" if BWRAP else "process")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"
    listing = subprocess.run(["git", "ls-tree", "-r", "-l", "refs/ouroboros/cheat/1"], cwd=tmp_path / "attack" / "task",
                             capture_output=True, text=True).stdout
    sizes = [int(line.split()[3]) for line in listing.splitlines() if line.split()[3].isdigit()]
    assert max(sizes, default=0) <= 5 << 20, listing


@pytest.mark.parametrize("name,value", [("GITHUB_PAT", "ghp_0123456789abcdef"),
                                        ("DATABASE_URL", "postgres://admin:hunter2@db.internal/prod"),
                                        ("HTTPS_PROXY", "http://alice:s3cret@proxy.corp:3128"),
                                        ("DOCKER_PASS", "hunter2"),
                                        ("CI_JOB_JWT", "eyJhbGciOiJIUzI1NiJ9.e30.x")])
def test_secrets_under_other_names_do_not_reach_experiments(name, value):
    from ouroboros import sandbox

    env = sandbox.scrubbed_env(base={"PATH": "/usr/bin:/bin", "HOME": "/home/u", name: value})
    assert value not in env.values()


@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not installed: only level bwrap confines the agent")
def test_a_confined_agent_cannot_read_hidden_data_from_the_setup_export(tmp_path):
    agent = '''
import glob, json
from pathlib import Path
here = Path.cwd()
for up in [here, *here.parents]:
    for hit in glob.glob(str(up / ".ouroboros/runs/*/env/src/**/data/answer.json"), recursive=True):
        x = json.loads(Path(hit).read_text())["x"]
        Path("train.py").write_text(f"import json\\njson.dump({{'x': {x!r}}}, open('solution.json', 'w'))\\n")
        raise SystemExit(0)
raise SystemExit("no export found")
'''
    attack = cheats.Attack("agent-env-src-hidden", title="agent reads hidden data from setup's export", agent=agent,
                           bound={"hidden": ["data/answer.json"]}, task={"setup": "true"},
                           files={"data/answer.json": json.dumps({"x": cheats.OPTIMUM})})
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="bwrap")
    assert result.verdict != "keep", result.reason
    assert result.effects == []


# A protected evaluator that, like tinygpt's isolated one, loads code from the editable train.py it is
# given; it refuses a train.py that is not the committed one (the run appends a marker line to it; the
# committed code holds the marker only inside a string literal, so the check looks at line starts).
_EVAL_READS_TRAIN = """\
import json, os, sys
if any(line.startswith("# RUNTIME-REWRITE") for line in open("train.py").read().splitlines()):
    sys.exit("evaluate.py: train.py is not the committed code")
CENTER, SCALES = [3.0, -1.0, 0.5, 2.0], [1.0, 10.0, 100.0, 0.1]
x = [float(v) for v in json.load(open("solution.json"))["x"]]
loss = sum(s * (xi - c) ** 2 for xi, c, s in zip(x, CENTER, SCALES))
json.dump({"loss": loss}, open(os.environ["OUROBOROS_METRICS"], "w"))
"""


def test_the_evaluation_gets_the_committed_editable_files_not_the_runs_rewrite(tmp_path):
    train = '''
def cheat():
    with open(__file__, "a") as f:
        f.write("\\n# RUNTIME-REWRITE: a different model definition for the evaluator\\n")
    return True
'''
    attack = cheats.Attack("rewrite-editable", title="hand the evaluator other code", train=train,
                           files={"evaluate.py": _EVAL_READS_TRAIN})
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="bwrap" if BWRAP else "process")
    assert result.verdict == "keep", result.reason


def test_an_editable_file_replaced_by_a_fifo_is_a_violation_and_the_run_goes_on(tmp_path):
    from ouroboros.errors import OuroborosError

    agent = '''
import os
os.remove("train.py")
os.mkfifo("train.py")
'''
    try:
        result = cheats.run_attack(cheats.Attack("fifo-editable", title="editable file as a FIFO", agent=agent),
                                   tmp_path / "attack", isolation="bwrap" if BWRAP else "process")
    except OuroborosError as exc:
        pytest.fail(f"the run ended: {exc}")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"


@pytest.mark.skipif(not isolation.available("unshare"), reason="level unshare does not work here")
def test_at_level_unshare_the_run_cannot_write_the_harnesss_own_code(tmp_path):
    import uuid

    import ouroboros

    probe = Path(ouroboros.__file__).parent / f"redteam-probe-{uuid.uuid4().hex[:8]}.txt"
    train = f'''
def cheat():
    try:
        Path({str(probe)!r}).write_text("written by the run")
        return True
    except OSError:
        return False
'''
    try:
        result = cheats.run_attack(cheats.Attack("write-harness-code", title="write the harness's code", train=train),
                                   tmp_path / "attack", isolation="unshare")
        assert not probe.exists()
        assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"
    finally:
        probe.unlink(missing_ok=True)
