"""The guard's claims (guard.py's docstring), each attacked directly on a run's worktree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ouroboros.guard import Guard
from ouroboros.loop import Loop, Options
from ouroboros.task import RECORDS_DIR, load_task
from ouroboros.testing import commit_all
from ouroboros.workspace import Workspace, exclude_records, git


def _setup(repo: Path, bound: str = "") -> tuple[Guard, Workspace, str]:
    if bound:
        toml = repo / "ouroboros.toml"
        toml.write_text(toml.read_text() + "\n[bound]\n" + bound + "\n")
        commit_all(repo, "bound")
    exclude_records(repo)
    task = load_task(repo)
    ws = Workspace(repo, ".", repo / RECORDS_DIR, "g")
    base = git(repo, "rev-parse", "HEAD").strip()
    ws.open(base)
    return Guard(task, ws), ws, base


@pytest.fixture
def guarded(quadratic):
    return _setup(quadratic)


def test_an_editable_change_passes(guarded):
    guard, ws, base = guarded
    (ws.task_dir / "train.py").write_text((ws.task_dir / "train.py").read_text().replace("STEPS = 200", "STEPS = 300"))
    assert guard.check(base) == []


def test_a_change_outside_the_editable_files_is_refused(guarded):
    guard, ws, base = guarded
    (ws.task_dir / "program.md").write_text("do whatever\n")
    assert any("program.md is not editable" in v for v in guard.check(base))


def test_a_new_file_needs_allow_new_files(quadratic):
    guard, ws, base = _setup(quadratic, 'allow_new_files = ["notes/*.txt"]')
    (ws.task_dir / "helper.py").write_text("x = 1\n")
    assert any("new file helper.py is not allowed" in v for v in guard.check(base))
    (ws.task_dir / "helper.py").unlink()
    (ws.task_dir / "notes").mkdir()
    (ws.task_dir / "notes" / "a.txt").write_text("fine\n")
    assert guard.check(base) == []


@pytest.mark.parametrize("how", ["edit", "delete", "symlink", "chmod"])
def test_protected_files_stay_byte_identical(guarded, how):
    guard, ws, base = guarded
    evaluator = ws.task_dir / "evaluate.py"
    if how == "edit":
        evaluator.write_text(evaluator.read_text() + "\n# harmless?\n")
    elif how == "delete":
        evaluator.unlink()
    elif how == "symlink":
        evaluator.unlink()
        evaluator.symlink_to("train.py")
    else:
        # the content is unchanged, the file is not: git sees the mode, the hash check the content
        evaluator.chmod(0o755)
    violations = guard.check(base)
    assert any("evaluate.py" in v for v in violations), violations


def test_the_task_file_is_always_protected(guarded):
    guard, ws, base = guarded
    toml = ws.task_dir / "ouroboros.toml"
    toml.write_text(toml.read_text().replace("budget = 10", "budget = 9999"))
    assert any("ouroboros.toml changed" in v for v in guard.check(base))


@pytest.mark.parametrize("name", ["pyproject.toml", "requirements-dev.txt", "uv.lock", "setup.py", "setup.cfg"])
def test_frozen_dependency_files(guarded, name):
    guard, ws, base = guarded
    (ws.task_dir / name).write_text("evil\n")
    assert any(f"{name} is a frozen dependency file" in v for v in guard.check(base))


@pytest.mark.parametrize("name", ["sitecustomize.py", "usercustomize.py", "x.pth", "conftest.py", ".env",
                                  "sub/sitecustomize.py"])
def test_startup_hooks_are_refused(guarded, name):
    guard, ws, base = guarded
    path = ws.task_dir / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("import os\n")
    assert any("start-up hook" in v for v in guard.check(base))


def test_a_startup_hook_named_in_editable_is_allowed(quadratic):
    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text().replace('editable = ["train.py"]', 'editable = ["train.py", "conftest.py"]'))
    (quadratic / "conftest.py").write_text("x = 0\n")
    commit_all(quadratic, "conftest editable")
    guard, ws, base = _setup(quadratic)
    (ws.task_dir / "conftest.py").write_text("x = 1\n")
    assert guard.check(base) == []


def test_a_symlink_leaving_the_worktree_is_refused(quadratic):
    guard, ws, base = _setup(quadratic, 'allow_new_files = ["*.txt"]')
    (ws.task_dir / "data.txt").symlink_to("/etc/passwd")
    assert any("symlink that leaves the worktree" in v for v in guard.check(base))


def test_a_symlink_to_a_protected_file_is_refused(quadratic):
    guard, ws, base = _setup(quadratic, 'allow_new_files = ["*.txt"]')
    (ws.task_dir / "copy.txt").symlink_to("evaluate.py")
    assert any("symlink to a protected" in v for v in guard.check(base))


def test_a_symlink_inside_a_new_folder_is_found(quadratic):
    guard, ws, base = _setup(quadratic, 'allow_new_files = ["lib/**"]')
    (ws.task_dir / "lib").mkdir()
    (ws.task_dir / "lib" / "x.py").symlink_to("/etc/hostname")
    assert any("leaves the worktree" in v for v in guard.check(base))


def test_a_hardlink_is_refused(guarded, tmp_path):
    guard, ws, base = guarded
    train = ws.task_dir / "train.py"
    outside = tmp_path / "alias.py"
    train.write_text(train.read_text() + "\n")
    os.link(train, outside)
    assert any("hardlink" in v for v in guard.check(base))


def test_moving_head_is_refused(guarded):
    guard, ws, base = guarded
    (ws.task_dir / "train.py").write_text("print(1)\n")
    subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qam", "mine"], cwd=ws.path,
                   check=True)
    assert any("HEAD moved" in v for v in guard.check(base))


def test_a_planted_git_hook_is_refused_and_removed(guarded):
    guard, ws, base = guarded
    _, common = ws._gitdirs()
    hook = common / "hooks" / "post-commit"
    hook.write_text("#!/bin/sh\ntouch /tmp/never\n")
    hook.chmod(0o755)
    config = common / "config"
    before = config.read_bytes()
    config.write_bytes(before + b"[core]\n\thooksPath = /tmp/evil\n")
    violations = guard.check(base)
    assert any("git config, hooks or info changed" in v for v in violations)
    assert not hook.exists()
    assert config.read_bytes() == before
    assert guard.check(base) == []  # put back: the next proposal starts clean


def test_max_diff_lines(quadratic):
    guard, ws, base = _setup(quadratic, "max_diff_lines = 3")
    train = ws.task_dir / "train.py"
    train.write_text(train.read_text() + "".join(f"# line {i}\n" for i in range(10)))
    assert any("more than max_diff_lines=3" in v for v in guard.check(base))


def test_hidden_data_is_protected(quadratic):
    (quadratic / "data").mkdir()
    (quadratic / "data" / "val.txt").write_text("answers\n")
    commit_all(quadratic, "data")
    guard, ws, base = _setup(quadratic, 'hidden = ["data/*"]')
    (ws.task_dir / "data" / "val.txt").write_text("easier answers\n")
    assert any("data/val.txt changed" in v for v in guard.check(base))


def _verdicts(repo: Path, agent: str = "random") -> list[tuple[str, float | None]]:
    loop = Loop(load_task(repo), Options(agent=agent, max_experiments=6, seed=3, tag="honest"))
    loop.run()
    return [(e.status, e.metric) for e in loop.history]


def test_an_honest_run_gets_the_same_verdicts_with_the_guard_off(tmp_path, monkeypatch):
    from ouroboros.scaffold import from_template

    guarded_run = _verdicts(from_template(tmp_path / "on", "quadratic"))
    off = from_template(tmp_path / "off", "quadratic")
    toml = off / "ouroboros.toml"
    toml.write_text(toml.read_text() + '\n[bound]\nisolation = "process"\n')
    commit_all(off, "no isolation")
    def no_guard(self, best):  # the loop still needs the list of changes the guard would have made
        self.changes = self.ws.changes()
        return []

    monkeypatch.setattr(Guard, "check", no_guard)
    assert _verdicts(off) == guarded_run
    assert {status for status, _ in guarded_run} >= {"keep", "discard"}


@pytest.mark.parametrize("where", ["notes/.git/answer.json", "deep/er/.GIT"])
def test_an_entry_named_dot_git_anywhere_is_refused_and_removed(guarded, where):
    guard, ws, base = guarded
    path = ws.task_dir / where
    path.parent.mkdir(parents=True)
    path.write_text("invisible to git")
    name = where.split("/.")[0] + "/." + where.split("/.")[1].split("/")[0]
    violations = guard.check(base)
    assert any(v.startswith(f"{name} is named .git") for v in violations), violations
    assert not (ws.task_dir / name).exists()
    assert guard.check(base) == []


def test_a_replaced_dot_git_file_is_refused_and_put_back(guarded):
    guard, ws, base = guarded
    (ws.path / ".git").write_text("gitdir: /tmp/planted\n")
    assert any("the worktree's .git file was replaced" in v for v in guard.check(base))
    assert (ws.path / ".git").read_text() == ws.dotgit_text()
    assert guard.check(base) == []


def test_after_a_phase_a_protected_file_touched_and_put_back_is_a_violation(guarded):
    guard, ws, base = guarded
    guard.arm()
    assert guard.after("run", base) == []  # nothing happened: nothing to report
    evaluator = ws.task_dir / "evaluate.py"
    st, original = evaluator.stat(), evaluator.read_bytes()
    evaluator.write_text("forged\n")
    evaluator.write_bytes(original)
    os.utime(evaluator, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert guard.after("run", base) == ["protected file evaluate.py was touched during the run (it must not be "
                                        "written, even if put back)"]


def test_after_a_phase_git_entries_and_config_are_checked_without_git(guarded, monkeypatch):
    guard, ws, base = guarded
    guard.arm()
    (ws.task_dir / "sub" / ".git").mkdir(parents=True)
    (ws.path / ".git").write_text("gitdir: /tmp/planted\n")
    config = ws.common / "config"
    config.write_bytes(config.read_bytes() + b'[filter "x"]\n\tsmudge = touch /tmp/never\n')
    monkeypatch.setattr("ouroboros.workspace._call", lambda *a, **k: pytest.fail("git ran during the check"))
    violations = guard.after("evaluation", base)
    assert "git config, hooks or info changed during the evaluation (put back as it was)" in violations
    assert "sub/.git is named .git: no file or folder of that name may be written in the worktree " \
           "(during the evaluation)" in violations
    assert any("the worktree's .git file was replaced" in v for v in violations)
    assert b"filter" not in config.read_bytes()


def test_files_matching_bound_ignore_are_dropped_not_violations(quadratic):
    guard, ws, base = _setup(quadratic, 'ignore = ["run.log", "*.log", "results.tsv"]')
    (ws.task_dir / "train.py").write_text((ws.task_dir / "train.py").read_text().replace("STEPS = 200", "STEPS = 300"))
    for name in ("run.log", "debug.log", "results.tsv"):
        (ws.task_dir / name).write_text("left by an agent\n")
    (ws.task_dir / "helper.py").write_text("x = 1\n")
    assert [v for v in guard.check(base)] == ["new file helper.py is not allowed (editable: train.py)",
                                             "not committed: helper.py"]
    assert not any((ws.task_dir / n).exists() for n in ("run.log", "debug.log", "results.tsv"))
    assert sorted(c.path for c in guard.changes) == ["helper.py", "train.py"]


def _tree(ws: Workspace, sha: str) -> dict[str, int]:
    listing = ws.git("ls-tree", "-r", "-l", "--full-tree", sha)
    return {line.split("\t", 1)[1]: int(line.split()[3]) for line in listing.splitlines()}


def test_max_artifact_mb_caps_the_attempts_total_and_keeps_the_rest_out_of_git(quadratic):
    guard, ws, base = _setup(quadratic, 'allow_new_files = ["out/*"]\nmax_artifact_mb = 1')
    (ws.task_dir / "out").mkdir()
    for name in "abc":
        (ws.task_dir / "out" / f"{name}.bin").write_bytes(os.urandom(600 << 10))  # each under the cap
    violations = guard.check(base)
    assert any("hold 1.8 MB in all, more than max_artifact_mb=1" in v for v in violations), violations
    assert "not committed: out/b.bin, out/c.bin" in violations
    sha = ws.commit("three blobs", 1, only=guard.admitted)
    tree = _tree(ws, sha)
    assert "out/a.bin" in tree and "out/b.bin" not in tree and "out/c.bin" not in tree
    assert sum(size for path, size in tree.items() if path not in _tree(ws, base)) <= 1 << 20


def test_files_that_fit_the_total_commit_as_before(quadratic):
    guard, ws, base = _setup(quadratic, 'allow_new_files = ["out/*"]\nmax_artifact_mb = 1')
    (ws.task_dir / "out").mkdir()
    for name in "ab":
        (ws.task_dir / "out" / f"{name}.bin").write_bytes(os.urandom(300 << 10))
    assert guard.check(base) == [] and guard.admitted is None and guard.withheld == []


def test_a_violating_attempt_commits_only_what_the_bound_allows(guarded):
    guard, ws, base = guarded
    train, evaluator = ws.task_dir / "train.py", ws.task_dir / "evaluate.py"
    train.write_text(train.read_text() + "\n# an honest edit\n")
    evaluator.write_text(evaluator.read_text() + "\n# a forged evaluator\n")
    (ws.task_dir / "helper.py").write_text("x = 1\n")
    ws.git("add", "-A")  # staged by the agent: the index must not carry it into the commit
    violations = guard.check(base)
    assert "not committed: evaluate.py, helper.py" in violations, violations
    sha = ws.commit("mixed", 1, only=guard.admitted)
    assert ws.show(sha, "train.py").endswith(b"# an honest edit\n")
    assert ws.show(sha, "evaluate.py") == ws.show(base, "evaluate.py")
    with pytest.raises(Exception, match="helper.py is not in commit"):
        ws.show(sha, "helper.py")


def test_a_file_name_that_is_not_utf8_is_a_violation_that_names_its_bytes(quadratic):
    guard, ws, base = _setup(quadratic, 'allow_new_files = ["*.py"]')
    (ws.task_dir / "helper.py").write_text("x = 1\n")
    assert guard.check(base) == []  # a new file the bound allows
    with open(os.path.join(os.fsencode(ws.task_dir), b"helper-\xff.py"), "wb") as f:
        f.write(b"x = 1\n")
    assert guard.check(base) == ["the file name 'helper-\\xff.py' is not UTF-8 (records, prompts and tools name "
                                 "files in UTF-8)", "not committed: helper-\\xff.py"]


def test_links_folders_and_fifos_planted_among_git_hooks_are_seen_and_removed(guarded, tmp_path):
    guard, ws, base = guarded
    hooks = ws.common / "hooks"
    outside = tmp_path / "evil.sh"
    outside.write_text("#!/bin/sh\ntouch /tmp/never\n")
    (hooks / "nested" / "deeper").mkdir(parents=True)
    (hooks / "nested" / "deeper" / "pre-push").write_text("#!/bin/sh\n")
    (hooks / "post-checkout").symlink_to(outside)
    (hooks / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(hooks / "fifo")
    assert any("git config, hooks or info changed" in v for v in guard.check(base))
    for name in ("nested", "post-checkout", "dangling", "fifo"):
        assert not os.path.lexists(hooks / name), name
    assert outside.exists()  # a link's target outside is never touched
    assert guard.check(base) == []
    exclude = ws.common / "info" / "exclude"  # a file the baseline had (exclude_records wrote it), changed in place
    before = exclude.read_bytes()
    exclude.write_bytes(before + b"*.py\n")
    assert any("git config, hooks or info changed" in v for v in guard.check(base))
    assert exclude.read_bytes() == before
