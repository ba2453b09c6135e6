"""Git for a run: a worktree of its own, attempt refs, keep and revert, never the user's checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ouroboros.errors import OuroborosError
from ouroboros.workspace import Workspace, code_size, ensure_clean, exclude_records


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_worktree_commit_pin_and_reset(quadratic: Path) -> None:
    base = ensure_clean(quadratic)
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "w")
    ws.open(base)
    assert ws.head() == base and git(quadratic, "rev-parse", "ouroboros/w") == base
    (ws.task_dir / "train.py").write_text("STEPS = 1\n")
    (ws.task_dir / "new.txt").write_text("x")
    changes = {c.path: c.status for c in ws.changes()}
    assert changes == {"train.py": " M", "new.txt": "??"}
    sha = ws.commit("try", 1)
    assert ws.head() == sha == git(quadratic, "rev-parse", "refs/ouroboros/w/1")
    assert git(quadratic, "show", "-s", "--format=%s", sha) == "try"
    ws.reset(base)
    assert not (ws.task_dir / "new.txt").exists() and ws.changes() == []
    assert git(quadratic, "cat-file", "-t", "refs/ouroboros/w/1") == "commit"  # the attempt stays reachable
    assert git(quadratic, "status", "--porcelain") == ""  # the user's checkout never moved


def test_head_is_read_without_git(quadratic: Path, monkeypatch) -> None:
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "h")
    base = ensure_clean(quadratic)
    ws.open(base)
    with monkeypatch.context() as m:
        m.setattr("ouroboros.workspace._call", lambda *a, **k: pytest.fail("git ran"))
        assert ws.head() == base  # the loose ref
    git(quadratic, "pack-refs", "--all")  # a packed branch ref is found too
    with monkeypatch.context() as m:
        m.setattr("ouroboros.workspace._call", lambda *a, **k: pytest.fail("git ran"))
        assert ws.head() == base


def test_head_where_the_loose_ref_is_a_folder_is_the_packed_one(quadratic: Path) -> None:
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "h")
    base = ensure_clean(quadratic)
    ws.open(base)
    git(quadratic, "pack-refs", "--all")
    loose = ws.common / "refs" / "heads" / ws.branch
    loose.mkdir(parents=True)  # a folder in place of the loose ref (git reads the packed one)
    assert ws.head() == base


def test_dirty_tree_is_refused(quadratic: Path) -> None:
    (quadratic / "train.py").write_text("changed\n")
    with pytest.raises(OuroborosError, match="uncommitted changes"):
        ensure_clean(quadratic)


def test_records_are_ignored_without_touching_the_users_files(quadratic: Path) -> None:
    exclude_records(quadratic)
    exclude_records(quadratic)
    exclude = (quadratic / ".git/info/exclude").read_text()
    assert exclude.count(".ouroboros/") == 1


def test_code_size_is_not_shrunk_by_folding_moving_or_hiding_the_same_code(quadratic: Path, tmp_path: Path) -> None:
    src = (quadratic / "train.py").read_text()
    size = code_size(quadratic, ["train.py"])
    forms = {
        "folded": {"train.py": f"exec({src!r})\n"},
        "moved": {"train.py": "from helpers import main\nmain()\n",
                  "helpers.py": src.replace('if __name__ == "__main__":\n    main()\n', "")},
        "in comments": {"train.py": "exec(''.join(l[2:] for l in open(__file__) if l[:2] == '# '))\n" +
                        "".join(f"# {line}\n" for line in src.splitlines())},
        "in whitespace": {"train.py": "exec(bytes(int(''.join('1' if c == '\\t' else '0' for c in l[:-1]), 2) "
                          "for l in open(__file__) if l[:1] in ' \\t').decode())\n" +
                          "".join(f"{ord(c):08b}".replace("1", "\t").replace("0", " ") + "\n" for c in src)},
    }
    for name, files in forms.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        for rel, text in files.items():
            (folder / rel).write_text(text)
        assert code_size(folder, sorted(files)) > size * 0.98, name  # not the simplicity rule's 2% smaller
    (tmp_path / "removed.py").write_text(src.replace("        if not all(math.isfinite(xi) for xi in x):\n"
                                                     "            break\n", ""))
    assert code_size(tmp_path, ["removed.py"]) < size * 0.98  # removing code is
    (tmp_path / "link.py").symlink_to(quadratic / "train.py")
    assert code_size(tmp_path, ["link.py"]) == code_size(tmp_path, [])  # no link followed


def _plant_filter(config: Path, marker: Path) -> None:
    with open(config, "a") as f:
        f.write(f'[filter "evil"]\n\tsmudge = "sh -c \'env > {marker}; cat\'"\n\tclean = "sh -c \'env > {marker}; cat\'"\n')


def test_a_filter_the_repository_config_names_never_runs(quadratic: Path, tmp_path: Path) -> None:
    """Filters are blanked by name on every call, so a .gitattributes naming one runs nothing."""
    base = ensure_clean(quadratic)
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "f")
    ws.open(base)
    marker = tmp_path / "filter-ran"
    _plant_filter(ws.common / "config", marker)
    ws._filters = None  # read the config again, as a new run would
    (ws.task_dir / ".gitattributes").write_text("* filter=evil\n")
    (ws.task_dir / "train.py").write_text("STEPS = 1\n")
    ws.changes()
    sha = ws.commit("try", 1)
    ws.reset(base)
    ws.reset(sha)
    ws.diff(base, sha)
    assert not marker.exists()
    assert (ws.task_dir / "train.py").read_text() == "STEPS = 1\n"


def test_a_repointed_dot_git_file_is_never_followed(quadratic: Path, tmp_path: Path) -> None:
    base = ensure_clean(quadratic)
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "p")
    ws.open(base)
    planted = tmp_path / "planted"
    subprocess.run(["git", "init", "-q", "--bare", str(planted)], check=True)
    marker = tmp_path / "filter-ran"
    _plant_filter(planted / "config", marker)
    (planted / "config").write_text((planted / "config").read_text().replace("bare = true", "bare = false"))
    (ws.task_dir / ".gitattributes").write_text("* filter=evil\n")
    (ws.path / ".git").write_text(f"gitdir: {planted}\n")
    (ws.task_dir / "train.py").write_text("STEPS = 2\n")
    sha = ws.commit("try", 1)
    assert git(quadratic, "rev-parse", "refs/ouroboros/p/1") == sha  # in the real repository
    ws.reset(base)
    assert not marker.exists()
    assert not list((planted / "refs" / "heads").iterdir())


def test_git_runs_without_secrets_or_the_callers_git_settings(monkeypatch) -> None:
    from ouroboros.workspace import git_env

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("GIT_DIR", "/tmp/elsewhere")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    env = git_env()
    assert "OPENAI_API_KEY" not in env and "GIT_DIR" not in env and "GIT_CONFIG_COUNT" not in env
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"


def test_names_and_bytes_that_are_not_utf8_are_addressed_byte_for_byte(quadratic: Path) -> None:
    import os

    base = ensure_clean(quadratic)
    ws = Workspace(quadratic, ".", quadratic / ".ouroboros", "b")
    ws.open(base)
    name = b"notes-\xff\xfe.txt"
    with open(os.path.join(os.fsencode(ws.task_dir), name), "wb") as f:
        f.write(b"x")
    with open(ws.task_dir / "train.py", "ab") as f:
        f.write(b"# \xe9t\xe9 in latin-1\n")
    paths = {os.fsencode(c.path): c.status for c in ws.changes()}
    assert paths == {name: "??", b"train.py": " M"}
    sha = ws.commit("bytes", 1)
    listed = subprocess.run(["git", "ls-tree", "-z", "--name-only", sha], cwd=quadratic, capture_output=True).stdout
    assert name in listed.split(b"\0")  # git got the very bytes, not a replacement character
    diff = ws.diff(base, sha)
    assert b"# \xe9t\xe9 in latin-1" in diff.encode(errors="surrogateescape")
    ws.reset(base)
    assert ws.changes() == [] and not os.path.exists(os.path.join(os.fsencode(ws.task_dir), name))
    (ws.path / ".git").write_bytes(b"gitdir: \xff\xfe\n")
    assert ws.restore_dotgit() and (ws.path / ".git").read_text() == ws.dotgit_text()
    assert not ws.restore_dotgit()


@pytest.mark.parametrize("old,new", [
    (b"a\nb\nc\n", b"a\nB\nc"),  # the new file loses its last newline
    (b"x = 1\n" * 20 + b"def f():\n" + b"    y = 2\n" * 10, b"x = 1\n" * 20 + b"def f():\n" + b"    y = 3\n" * 10),
    ("caf\u00e9 = 1\n".encode() * 3, "caf\u00e9 = 2\n".encode() * 3 + b"z\n"),
])
def test_git_patch_writes_what_git_diff_writes(tmp_path: Path, old: bytes, new: bytes) -> None:
    from ouroboros.workspace import git_patch

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f.py").write_bytes(old)
    git(tmp_path, "add", "f.py")
    (tmp_path / "f.py").write_bytes(new)
    expected = subprocess.run(["git", "diff", "--full-index"], cwd=tmp_path, capture_output=True, check=True).stdout
    got = git_patch("", {"f.py": (old, 0o100644)}, {"f.py": (new, 0o100644)}, ["f.py"])
    assert got is not None and got.encode() == expected


def test_git_patch_leaves_binary_files_and_quoted_paths_to_git() -> None:
    from ouroboros.workspace import git_patch

    assert git_patch("", {"f": (b"\0a", 0o100644)}, {"f": (b"\0b", 0o100644)}, ["f"]) is None
    assert git_patch("", {"a b": (b"a\n", 0o100644)}, {"a b": (b"b\n", 0o100644)}, ["a b"]) is None
    assert git_patch("", {"f": (b"a\n", 0o100644)}, {"f": (b"a\n", 0o100755)}, ["f"]) is None
