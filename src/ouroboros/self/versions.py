"""Versions: commits of Ouroboros's own source, each installed into an environment of its own.

A version is exported with `git archive` (src/ouroboros and examples/quadratic, committed bytes) to a cache
folder named by its commit, and runs from there with PYTHONPATH pointing at it: it reuses the
dependencies already installed beside this interpreter, needs no network, and costs one archive
per version. It always runs in a separate process (`python -m ouroboros.cli ...`), never imported
into the harness that measures it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ouroboros import readfile
from ouroboros.errors import OuroborosError
from ouroboros.workspace import git

SOURCE = "src/ouroboros"
EXTRA = ["examples/quadratic"]  # the cheat suite's task: a version's own `ouroboros cheats` needs it


def source_repo() -> Path:
    """The git checkout this installation of Ouroboros runs from (for `--version REF`)."""
    here = Path(__file__).resolve().parents[3]
    if not (here / ".git").exists() or not (here / SOURCE).is_dir():
        raise OuroborosError(f"this Ouroboros ({here}) is not a git checkout, so it has no versions to "
                             "export; give --repo with a clone of Ouroboros")
    return here


def resolve(repo: Path, ref: str) -> str:
    """The full commit id of a ref (a branch, a tag, a short or full commit id)."""
    out = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
    if not out:
        raise OuroborosError(f"{ref!r} is not a commit in {repo}; give a branch, tag or commit id "
                             "(`git log --oneline` lists them)")
    return out


def install(repo: Path, sha: str, cache: Path) -> Path:
    """The folder to put on PYTHONPATH for version `sha` (exported once, then reused)."""
    dest = cache / sha
    if (dest / ".complete").exists():
        return dest / "src"
    listing = git(repo, "ls-tree", "--name-only", sha, SOURCE, check=False).strip()
    if listing != SOURCE:
        raise OuroborosError(f"commit {sha[:12]} in {repo} has no {SOURCE}/; a version is a commit of "
                             "Ouroboros's own source")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=cache))
    extra = [p for p in EXTRA if git(repo, "ls-tree", "--name-only", sha, p, check=False).strip() == p]
    data = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha, SOURCE, *extra],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / ".complete").write_text(sha + "\n")
    try:
        tmp.rename(dest)
    except OSError:  # another process exported it meanwhile (a candidate's tree may be nested however deep)
        readfile.clear(tmp)
    return dest / "src"


def environment(src: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that runs the version at `src`: its source first on the path, nothing of ours."""
    keep = {"OUROBOROS_CONFIG_DIR"}  # the ledger's chain key: the same records, the same key
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("OUROBOROS_", "PYTEST_", "COV_"))}
    env["PYTHONPATH"] = str(src.resolve())
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def command(*args: str) -> list[str]:
    """argv for the `ouroboros` CLI of whatever version the environment puts first."""
    return [sys.executable, "-m", "ouroboros.cli", *args]
