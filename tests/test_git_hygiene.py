"""Git hygiene: few git processes per experiment (the common path settles attempts without git),
and a long run packs its attempt refs and objects as it goes (workspace.maintain)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from ouroboros import loop as loop_mod
from ouroboros import workspace
from ouroboros.agents import Agent, Context, Proposal
from ouroboros.judge import Verdict
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.workspace import Workspace, maintain


def loose_objects(repo: Path) -> int:
    out = subprocess.run(["git", "count-objects", "-v"], cwd=repo, capture_output=True, text=True, check=True).stdout
    return int(dict(line.split(": ") for line in out.splitlines())["count"])


def loose_refs(repo: Path, tag: str) -> list[Path]:
    return [p for p in (repo / ".git" / "refs" / "ouroboros" / tag).glob("*") if p.is_file()]


def test_maintain_packs_refs_and_loose_objects_and_keeps_every_attempt(quadratic: Path) -> None:
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "t")
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=quadratic, capture_output=True, text=True).stdout.strip()
    ws.open(base)
    shas = []
    for n in range(1, 6):
        (ws.task_dir / "train.py").write_text(f"X = {n}\n")
        shas.append(ws.commit(f"attempt {n}", n))
        ws.reset(base)
    assert len(loose_refs(quadratic, "t")) == 5 and loose_objects(quadratic) > 0
    maintain(quadratic)
    assert loose_refs(quadratic, "t") == [] and loose_objects(quadratic) == 0
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname)", "refs/ouroboros/t/"], cwd=quadratic,
                          capture_output=True, text=True, check=True).stdout.split()
    assert sorted(refs) == sorted(shas)
    for sha in shas:  # every attempt is still there, whole
        subprocess.run(["git", "cat-file", "-e", f"{sha}^{{tree}}"], cwd=quadratic, check=True)


def test_the_loop_maintains_every_few_hundred_experiments(quadratic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(loop_mod, "MAINTAIN_EVERY", 2)
    monkeypatch.setattr(loop_mod, "maintain", lambda path: calls.append(path))
    Loop(load_task(quadratic), Options(agent="random", tag="m", max_experiments=5)).run()
    assert len(calls) == 2  # after experiments 2 and 4, never after the baseline


class _Scripted(Agent):
    """Sets LEARNING_RATE in train.py from a script of values, one per experiment; `extra` is
    appended to the file each time (code the run executes)."""

    name = "scripted"
    writes_code = False

    def __init__(self, rates: list[float], extra: str = "") -> None:
        self.rates, self.extra = rates, extra

    def propose(self, ctx: Context) -> Proposal:
        path = ctx.worktree / "train.py"
        text = re.sub(r"^LEARNING_RATE = .*$", f"LEARNING_RATE = {self.rates[ctx.n - 1]}",
                      path.read_text(), count=1, flags=re.MULTILINE)
        path.write_text(text if self.extra in text else text + self.extra)
        return Proposal(f"LEARNING_RATE = {self.rates[ctx.n - 1]}")


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git processes the harness starts, by subcommand (one-shot calls and long-lived ones alike)."""
    calls: list[str] = []
    real = subprocess.Popen

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, argv, *args, **kwargs):
            if str(argv[0]) == workspace._GIT:  # the harness's calls (a test's own say "git")
                calls.append(next(a for a in argv[1:] if not a.startswith("-") and "=" not in a) +
                             (" --stdin" if argv[-1] == "--stdin" else ""))
            super().__init__(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    return calls


def _per_step(loop: Loop, calls: list[str]) -> list[list[str]]:
    spans: list[list[str]] = []
    real = loop.step

    def step(*args, **kwargs):
        start = len(calls)
        try:
            return real(*args, **kwargs)
        finally:
            spans.append(calls[start:])

    loop.step = step  # type: ignore[method-assign]
    return spans


def _worktree_is(loop: Loop, commit: str) -> None:
    wt = loop.ws.path
    status = subprocess.run(["git", "-C", str(wt), "status", "--porcelain", "--ignored", "--untracked-files=all"],
                            capture_output=True, text=True, check=True).stdout
    assert status == "" and loop.ws.head() == commit
    assert subprocess.run(["git", "-C", str(wt), "diff", "--quiet", commit], capture_output=True).returncode == 0


RATES = [0.005, 0.0005, 0.02, 0.004, 0.0001, 0.3, 0.006, 0.0009]  # keeps and discards


def test_a_common_experiment_starts_one_git_process(quadratic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    loop = Loop(load_task(quadratic), Options(agent="scripted", tag="g", max_experiments=len(RATES)),
                agent=_Scripted(RATES))
    spans = _per_step(loop, calls)
    loop.run()
    statuses = {e.status for e in loop.finished[1:]}
    assert statuses == {Verdict.KEEP, Verdict.DISCARD}, statuses
    # the commit; what changed is read from the worktree (Workspace._changes_known), and the refs of every
    # experiment go through one update-ref the run starts once
    assert [sorted(s) for s in spans] == [["commit", "update-ref --stdin"]] + [["commit"]] * (len(RATES) - 1)
    assert loop.ws._refs is None  # ended with the run
    _worktree_is(loop, loop.best.commit_sha)
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname:lstrip=3) %(objectname)", "refs/ouroboros/g/"],
                          cwd=quadratic, capture_output=True, text=True, check=True).stdout.split("\n")
    assert dict(r.split() for r in refs if r) == {str(e.n): e.commit_sha for e in loop.finished}
    for e in loop.finished[1:]:  # each diff.patch is the change from its parent, as git applies it
        patch = (loop.ledger.exp_dir("g", e.n) / "diff.patch").read_text()
        assert f"+LEARNING_RATE = {RATES[e.n - 1]}" in patch
        git_diff = subprocess.run(["git", "diff", "--full-index", e.parent, e.commit_sha], cwd=quadratic,
                                  capture_output=True, text=True, check=True).stdout
        assert patch == git_diff


def test_the_run_s_ref_writer_cannot_be_written_to_and_a_killed_one_is_replaced(
        quadratic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    rates = RATES[:4]
    loop = Loop(load_task(quadratic), Options(agent="scripted", tag="k", max_experiments=len(rates)),
                agent=_Scripted(rates))
    seen: list[int] = []
    real = loop._record

    def record(exp, best):
        real(exp, best)
        writer = loop.ws._refs
        if writer is None:
            return
        for mode in (os.O_WRONLY, os.O_RDONLY):  # what a run at level process could try: it shares the uid
            with pytest.raises(OSError):
                os.close(os.open(f"/proc/{writer.proc.pid}/fd/0", mode))
        if exp.n in (1, 3):  # a run that kills it, or stops it: the next experiment's refs are still written
            seen.append(writer.proc.pid)
            writer.proc.kill() if exp.n == 1 else writer.proc.send_signal(signal.SIGSTOP)

    loop._record = record  # type: ignore[method-assign]
    loop.run()
    # one writer, and a second after the first was killed; the stopped one goes on
    assert calls.count("update-ref --stdin") == 2
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname:lstrip=3) %(objectname)", "refs/ouroboros/k/"],
                          cwd=quadratic, capture_output=True, text=True, check=True).stdout.split("\n")
    assert dict(r.split() for r in refs if r) == {str(e.n): e.commit_sha for e in loop.finished}
    _worktree_is(loop, loop.best.commit_sha)


def _write(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    tmp.replace(path)  # an editor's save: a new inode


CHANGES = {  # what a proposal does -> whether git status can be left out
    "edit": (lambda wt: (wt / "train.py").write_text((wt / "train.py").read_text() + "X = 1\n"), True),
    "edit by rename": (lambda wt: _write(wt / "train.py", (wt / "train.py").read_text() + "X = 1\n"), True),
    "same bytes anew": (lambda wt: _write(wt / "train.py", (wt / "train.py").read_text()), True),
    "touched": (lambda wt: os.utime(wt / "train.py", (1, 1)), True),
    "mode without x": (lambda wt: os.chmod(wt / "train.py", 0o600), True),
    "executable": (lambda wt: os.chmod(wt / "train.py", 0o755), False),
    "edit and executable": (lambda wt: (CHANGES["edit"][0](wt), os.chmod(wt / "train.py", 0o755)), False),
    "new file": (lambda wt: (wt / "notes.txt").write_text("x"), False),
    "new folder": (lambda wt: (wt / "sub").mkdir(), False),
    "ignored file": (lambda wt: ((wt / ".gitignore").write_text("*.log\n"), (wt / "a.log").write_text("x")), False),
    "deleted": (lambda wt: (wt / "train.py").unlink(), False),
    "a link instead": (lambda wt: ((wt / "train.py").unlink(), (wt / "train.py").symlink_to("evaluate.py")), False),
    "protected edited": (lambda wt: (wt / "evaluate.py").write_text("print(1)\n"), False),
    "protected same bytes anew": (lambda wt: _write(wt / "evaluate.py", (wt / "evaluate.py").read_text()), False),
    "attributes": (lambda wt: (wt / ".gitattributes").write_text("*.py text eol=crlf\n"), False),
    "staged": (lambda wt: (CHANGES["edit"][0](wt), subprocess.run(["git", "add", "train.py"], cwd=wt, check=True)),
               False),
    "hardlinked away": (lambda wt: os.link(wt / "train.py", wt.parent / "away.py"), True),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_changed_is_read_without_git_only_where_it_is_what_git_says(quadratic: Path, change: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    loop = Loop(load_task(quadratic), Options(agent="scripted", tag="c", max_experiments=0), agent=_Scripted([]))
    loop.run()  # the baseline: the worktree made exactly HEAD, as before every proposal
    assert loop._as_head is not None and loop._as_head[2] == loop.best.commit_sha
    wt = loop.ws.task_dir
    make, fast = CHANGES[change]
    make(wt)
    known = (loop._as_head[0], loop._as_head[1], loop._files_of(loop.best.commit_sha).get)
    calls = _counting(monkeypatch)
    loop.ws.exact = known
    without = [(c.status, c.path) for c in loop.ws.changes()]
    assert calls == ([] if fast else ["status"])
    assert loop.ws.exact is None  # used once
    with_git = [(c.status, c.path) for c in loop.ws.changes()]
    assert calls[-1] == "status" and without == with_git


def test_where_a_write_may_leave_the_change_time_the_change_list_asks_git(quadratic: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On a file system with coarse change times (kernels before 6.13, vfat, some NFS) a write in the same
    tick as the last change leaves the change time: there the worktree alone never answers (red team 13)."""
    from ouroboros import workspace

    loop = Loop(load_task(quadratic), Options(agent="scripted", tag="c", max_experiments=0), agent=_Scripted([]))
    loop.run()
    CHANGES["edit"][0](loop.ws.task_dir)
    monkeypatch.setattr(workspace, "_FINE", {os.stat(loop.ws.task_dir).st_dev: False})
    calls = _counting(monkeypatch)
    loop.ws.exact = (loop._as_head[0], loop._as_head[1], loop._files_of(loop.best.commit_sha).get)
    assert [(c.status, c.path) for c in loop.ws.changes()] == [(" M", "train.py")]
    assert calls == ["status"]


RUN_WRITES = '''
import os as _os
_os.makedirs("out", exist_ok=True) if _os.environ.get("MKDIR") else None
open("scratch.bin", "wb").write(b"x" * 10)
open("train.py", "a").write("# the run rewrote me\\n")
_os.link("train.py", "alias.py")
'''


@pytest.mark.parametrize("mkdir", ["", "1"])
def test_what_a_run_writes_is_undone_after_a_keep_and_after_a_discard(quadratic: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     mkdir: str) -> None:
    monkeypatch.setenv("MKDIR", mkdir)
    toml = quadratic / "ouroboros.toml"  # the run sees MKDIR; a new folder is left to git's clean
    toml.write_text(toml.read_text().replace("[judge]", '[bound]\nenv = ["MKDIR"]\n\n[judge]'))
    subprocess.run(["git", "commit", "-qam", "env"], cwd=quadratic, check=True)
    calls = _counting(monkeypatch)
    loop = Loop(load_task(quadratic), Options(agent="scripted", tag="w", max_experiments=4),
                agent=_Scripted(RATES[:4], RUN_WRITES))
    seen = []
    loop.on_experiment = lambda exp, best: seen.append((exp.status, _worktree_is(loop, best.commit_sha)))
    spans = _per_step(loop, calls)
    loop.run()
    assert {s for s, _ in seen[1:]} == {Verdict.KEEP, Verdict.DISCARD}
    # status and commit (and once, the run's update-ref); with a new folder, pin, reset and clean with git
    assert [len(s) for s in spans] == ([3, 2, 2, 2] if not mkdir else [5] * 4), spans
    kept = subprocess.run(["git", "show", f"{loop.best.commit_sha}:train.py"], cwd=quadratic, capture_output=True,
                          text=True, check=True).stdout
    assert "\n# the run rewrote me\n" not in kept and (loop.ws.task_dir / "train.py").read_text() == kept


def test_with_gitattributes_an_honest_attempt_is_kept_and_a_converted_one_is_a_violation(quadratic: Path) -> None:
    """A repository's `* text=auto` makes git store CR LF files with LF: such an attempt would run other
    bytes than its commit holds, so it is a violation; an attempt git stores as it is runs as usual."""
    (quadratic / ".gitattributes").write_text("* text=auto\n")
    subprocess.run(["git", "add", "-A"], cwd=quadratic, check=True)
    subprocess.run(["git", "commit", "-qm", "attributes"], cwd=quadratic, check=True)

    class Edits(Agent):
        name = "edits"

        def propose(self, ctx: Context) -> Proposal:
            path = ctx.worktree / "train.py"
            text = path.read_bytes().replace(b"\r\n", b"\n")
            text = text.replace(b"\n", b"\n# honest\n", 1) if ctx.n == 1 else text.replace(b"\n", b"\r\n")
            path.write_bytes(text)
            return Proposal(f"edit {ctx.n}")

    loop = Loop(load_task(quadratic), Options(agent="random", max_experiments=2, budget=5.0, tag="a"))
    loop.agent = Edits()
    loop.run()
    loop.ledger.close()
    first, second = loop.history[1], loop.history[2]
    assert first.status in (Verdict.KEEP, Verdict.DISCARD), (first.status, first.reason)
    assert second.status == Verdict.VIOLATION and "train.py" in second.reason and ".gitattributes" in second.reason


def test_a_file_whose_bytes_are_not_the_commits_is_found_and_rewritten(quadratic: Path) -> None:
    """Under `* text=auto` git stores a CR LF file with LF, so `git status` and a reset compare through the
    conversion; differs compares the bytes themselves, and make_exact rewrites them from the commit."""
    (quadratic / ".gitattributes").write_text("* text=auto\n")
    subprocess.run(["git", "add", "-A"], cwd=quadratic, check=True)
    subprocess.run(["git", "commit", "-qm", "attributes"], cwd=quadratic, check=True)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=quadratic, capture_output=True, text=True).stdout.strip()
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "t")
    ws.open(base)
    path = ws.task_dir / "train.py"
    committed = path.read_bytes()
    path.write_bytes(committed.replace(b"\n", b"\r\n"))
    assert list(ws.differs(base)) == ["train.py"]
    assert ws.make_exact(base) == ["train.py"] and path.read_bytes() == committed and ws.differs(base) == {}
