"""Fourth red-team pass, on the fixes of the third: the total artifact cap, the fast put-back without git,
git_patch, the root-harness drop, confined agents' private HOME copies and login copy-back, the run mark,
readfile.py, the reserved metric keys, the incremental chain check, policyfile.py and self/propose.py.
Each attack that gets through is marked xfail(strict=True) with its root cause and the fix recommended."""

from __future__ import annotations

import json

import pytest

from ouroboros import policyfile
from ouroboros.errors import OuroborosError


@pytest.mark.parametrize("signs", [3000, 100_000])
def test_a_deeply_signed_policy_literal_is_refused_with_a_clear_error(signs):
    text = "MUTATE_KNOBS = " + "-" * signs + "1\n"
    with pytest.raises(OuroborosError, match="policy.py"):
        policyfile.parse(text)


def _shape(value):
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_a_confined_agent_cannot_reshape_the_users_login_file(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    real = home / ".codex" / "auth.json"  # the codex preset's login, the one copied back
    user = {"OPENAI_API_KEY": None, "tokens": {"id_token": "user-i", "access_token": "user-a",
                                               "refresh_token": "user-r", "account_id": "user"},
            "last_refresh": "2026-11-23T00:00:00Z"}
    real.write_text(json.dumps(user))
    from ouroboros.agents.command import HomeCopy
    from ouroboros.agents.presets import CodexAgent

    assert ".codex/auth.json" in CodexAgent.logins
    copy = HomeCopy((".codex",), logins=CodexAgent.logins)
    try:  # the user's CLI, started unconfined later, now uses the agent's own key and account
        forged = {"OPENAI_API_KEY": "sk-attacker", "tokens": {"id_token": ["x"], "access_token": "attacker-a",
                                                              "refresh_token": "attacker-r", "account_id": "attacker",
                                                              "extra": {"hook": "rm -rf ~"}},
                  "last_refresh": "2026-11-23T00:00:01Z"}
        (copy.root / ".codex" / "auth.json").write_text(json.dumps(forged))
        copy.give_back()
    finally:
        copy.remove()
    assert _shape(json.loads(real.read_text())) == _shape(user), real.read_text()


# The agent's train.py reads its own bytes: with CR LF line ends (what the worktree holds and the run
# executes) it uses a tuned step; with LF only (what git commits under the task repo's `* text=auto`, a
# common .gitattributes line that converts CR LF on commit) it is the baseline. The keep's commit is not
# what ran and was evaluated.
_CRLF_AGENT = r'''
import os
from pathlib import Path
p = Path("train.py")
text = p.read_text().replace("import math\n", "import math\nif b'\\r' in open(__file__, 'rb').read():\n"
                             "    pass\n", 1)
text = text.replace("MOMENTUM = 0.5", "MOMENTUM = 0.9 if b'\\r' in open(__file__, 'rb').read() else 0.5", 1)
p.write_bytes(text.replace("\n", "\r\n").encode())
Path(os.environ["OUROBOROS_DESCRIPTION"]).write_text("crlf")
'''


def test_a_kept_attempts_commit_holds_the_bytes_that_ran(tmp_path, monkeypatch):
    import shlex
    import subprocess
    import sys

    from ouroboros import cheats, isolation
    from ouroboros.loop import Loop, Options
    from ouroboros.scaffold import from_template
    from ouroboros.task import load_task

    agent = tmp_path / "agent.py"
    agent.write_text(_CRLF_AGENT)
    monkeypatch.setenv("OUROBOROS_CACHE", str(tmp_path / "cache"))
    task = from_template(tmp_path / "task", "quadratic")
    (task / ".gitattributes").write_text("* text=auto\n")
    cheats._set_keys(task / "ouroboros.toml", "bound",
                     {"isolation": "bwrap" if isolation.available("bwrap") else "process"})
    cheats._git(task, "add", "-A")
    cheats._git(task, "commit", "-qm", "attributes")
    loop = Loop(load_task(task), Options(agent=f"cmd:{shlex.quote(sys.executable)} {shlex.quote(str(agent))}",
                                         max_experiments=1, budget=3.0, tag="t", allow_weak_isolation=True))
    loop.run()
    exp = loop.history[-1]
    worktree = loop.ws.task_dir
    loop.ledger.close()
    if exp.status != "keep":  # stopped: git would have committed other bytes than the ones that ran
        assert exp.status == "violation" and ".gitattributes" in exp.reason, (exp.status, exp.reason)
        return
    committed = subprocess.run(["git", "cat-file", "blob", f"{exp.commit_sha}:train.py"], cwd=task,
                               capture_output=True, check=True).stdout
    ran = (worktree / "train.py").read_bytes()
    assert committed == ran, "the keep's commit differs from the train.py that ran"


# The lucky-carry attack of the third pass, carried past the fix (the confirmation re-run now starts from a
# git reset of the commit): the run with the lucky seed tags the task folder with an extended attribute
# (write permission on the folder is enough, which the run dropped to nobody has); git never restores a
# folder's own metadata, and the re-run with another seed finds the tag and hands in the same answer.
_STAMP_CARRY = '''
def cheat():
    try:
        carried = os.getxattr(".", "user.found")
    except OSError:
        carried = b""
    if carried == b"1":  # the confirmation re-run: the first run's answer, carried in the folder
        win(OPTIMUM)
        sys.exit(0)
    if os.environ.get("OUROBOROS_SEED") == "1":  # the run's own seed: the lucky draw
        win(OPTIMUM)
        os.setxattr(".", "user.found", b"1")
        sys.exit(0)
    win([0.0, 0.0, 0.0, 0.0])  # any other seed: far worse than the baseline
'''


def test_a_lucky_result_cannot_be_carried_into_the_confirmation_through_a_folders_xattr(tmp_path):
    from ouroboros import cheats, isolation

    level = "bwrap" if isolation.available("bwrap") else "process"
    loop = cheats.attack_loop(tmp_path, cheats.writer_agent(cheats.train_source(_STAMP_CARRY)), level=level,
                              judge={"confirm": True}, budget=3.0)
    exp = loop.history[-1]
    assert exp.status != "keep", f"kept with {exp.metric} ({exp.reason}); confirm_metric {exp.metrics.get('confirm_metric')}"


def test_a_kept_versions_proposal_file_cannot_crash_the_self_driver(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    from ouroboros.agents.base import Proposal
    from ouroboros.agents.command import CommandAgent
    from ouroboros.self import driver, versions

    try:  # "always overcommit" would let the read succeed and fill memory: only run where it is refused
        if open("/proc/sys/vm/overcommit_memory").read().strip() not in ("0", "2"):
            pytest.skip("vm.overcommit_memory=1: a TiB allocation would be granted")
    except OSError:
        pytest.skip("no /proc/sys/vm/overcommit_memory (not Linux)")
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    out = exp_dir / "proposal.json"

    def version_proposes(self, ctx):  # what the confined version leaves in its writable file: a sparse TiB
        os.truncate(out, 1 << 40)
        return Proposal("a proposal")

    monkeypatch.setattr(CommandAgent, "propose", version_proposes)
    monkeypatch.setattr(versions, "install", lambda repo, version, cache: tmp_path)
    agent = driver.VersionAgent("random", tmp_path, tmp_path, "b" * 40, {"bad": []}, lambda: None)
    ctx = SimpleNamespace(history=[], exp_dir=exp_dir, worktree=tmp_path, read_baseline=None, n=1, seed=0,
                          best=SimpleNamespace(n=0), prompt=lambda: "", session=0,
                          task=SimpleNamespace(editable_files=lambda worktree: [],
                                               bound=SimpleNamespace(max_artifact_mb=100.0)))
    try:
        proposal = agent.propose(ctx)
    except MemoryError:
        pytest.fail("the self driver ran out of memory reading the version's 1 TiB sparse proposal.json")
    finally:
        out.unlink()
    assert proposal.params == {}


def test_diff_patch_of_a_large_repetitive_file_does_not_hang_the_harness(tmp_path):
    import subprocess
    import sys

    code = (
        "from ouroboros.workspace import git_patch\n"
        "n = 100_000\n"
        "old = b'#\\n' * n\n"
        "new = b'#\\n' * (n // 2) + b'x = 1\\n' + b'#\\n' * (n // 2)\n"
        "git_patch('', {'train.py': (old, 0o100644)}, {'train.py': (new, 0o100644)}, ['train.py'])\n")
    try:  # milliseconds for git; 20 s only so that a loaded machine cannot fail a correct fix
        subprocess.run([sys.executable, "-c", code], timeout=20, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("git_patch ran past 20 s on two 100,000-line files differing in one line")
