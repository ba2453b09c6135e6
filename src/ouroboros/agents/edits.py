"""SEARCH/REPLACE edit blocks: the edit format of the API agent, parsed and applied all or nothing.

A reply holds one or more blocks, each naming a task-relative file on the line before it:

    train.py
    <<<<<<< SEARCH
    LEARNING_RATE = 0.001
    =======
    LEARNING_RATE = 0.002
    >>>>>>> REPLACE

The SEARCH text must occur exactly once in the file (an empty SEARCH creates a new file). Blocks
may only touch editable files; any problem is an EditError whose message is sent back to the model
so that it can correct its reply. Nothing is written unless every block applies.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ouroboros.readfile import read_regular_bytes
from ouroboros.task import Task, first_link

MAX_EDITED_BYTES = 16 << 20  # a file an edit rewrites is read whole, in memory: one the run left huge is refused

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_DESCRIPTION = re.compile(r"^\s*DESCRIPTION:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
_NOTES = re.compile(r"<notes>\n?(.*?)</notes>", re.DOTALL | re.IGNORECASE)

FORMAT = """\
Reply with:
1. one line `DESCRIPTION: <what you changed and why, one line>`;
2. one or more edit blocks, each preceded by the file's path on its own line:

train.py
<<<<<<< SEARCH
<lines copied exactly from the current file, enough to be unique>
=======
<the lines that replace them>
>>>>>>> REPLACE

3. optionally `<notes>...</notes>`: the full new content of your notes file (kept across experiments,
   bounded in size; write what you learned and what to try next).
Edit only the editable files. An empty SEARCH section creates a new file."""


class EditError(Exception):
    """The reply cannot be applied; the message says why, for the model to correct."""


@dataclass
class Edit:
    path: str
    search: str
    replace: str


def parse(reply: str) -> list[Edit]:
    lines = reply.splitlines()
    edits: list[Edit] = []
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        path = _path_before(lines, i)
        if path is None:
            raise EditError(f"the edit block at line {i + 1} has no file path on the line before `<<<<<<< SEARCH`")
        j = i + 1
        while j < len(lines) and not _DIVIDER.match(lines[j]):
            j += 1
        k = j + 1
        while k < len(lines) and not _REPLACE.match(lines[k]):
            k += 1
        if j >= len(lines) or k >= len(lines):
            raise EditError(f"the edit block for {path} is not closed: it needs a `=======` line and a "
                            "`>>>>>>> REPLACE` line")
        edits.append(Edit(path, _join(lines[i + 1:j]), _join(lines[j + 1:k])))
        i = k + 1
    if not edits:
        raise EditError("the reply holds no SEARCH/REPLACE edit block")
    return edits


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _path_before(lines: list[str], i: int) -> str | None:
    for line in reversed(lines[max(0, i - 3):i]):
        if not line.strip() or line.strip().startswith("```"):
            continue
        text = line.strip().strip("`*").strip()
        text = text.split()[-1] if " " in text and "/" not in text.split()[0] else text
        return text.strip("`*:")
    return None


def description(reply: str) -> str:
    m = _DESCRIPTION.search(reply)
    return " ".join(m.group(1).split())[:200] if m else ""


def notes(reply: str) -> str | None:
    m = _NOTES.search(reply)
    return m.group(1).strip() + "\n" if m else None


def _safe(task: Task, path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise EditError(f"{path}: give a path relative to the task folder")
    rel = p.as_posix().removeprefix("./")
    if task.is_protected(rel) or not task.is_editable(rel):
        raise EditError(f"{rel} is not editable; edit only {', '.join(task.task.editable)}")
    return rel


def _find(text: str, search: str) -> tuple[int, int] | None:
    """Where search occurs once; falls back to ignoring trailing spaces, which models drop, and then to
    ignoring how many spaces stand between the words of a line (small models write `x = 1 # note` for
    `x = 1  # note`); a line's indentation must always match. A fallback counts only with one match."""
    count = text.count(search)
    if count == 1:
        start = text.index(search)
        return start, start + len(search)
    if count > 1:
        raise EditError(f"the SEARCH text occurs {count} times; include more lines to make it unique:\n"
                        f"{search[:200]}")
    lines = text.splitlines(keepends=True)
    for key in (str.rstrip, _spacing):
        want = [key(s) for s in search.splitlines()]
        hits = [i for i in range(len(lines) - len(want) + 1)
                if [key(line) for line in lines[i:i + len(want)]] == want]
        if len(hits) == 1:
            start = sum(len(line) for line in lines[:hits[0]])
            return start, start + sum(len(line) for line in lines[hits[0]:hits[0] + len(want)])
    return None


def _spacing(line: str) -> str:
    """A line with its indentation as it is and every other run of whitespace as one space."""
    body = line.lstrip()
    return line[:len(line) - len(body)] + " ".join(body.split())


def _closest(text: str, first: str) -> str:
    """A hint naming the file's line nearest to a SEARCH line that was not found: small models drop a
    line's trailing comment or change its spacing, and do better when shown the line to copy."""
    lines = [line.strip()[:200] for line in text.splitlines() if line.strip()]
    code = {}  # a line without its trailing comment -> the first whole line with that code
    for line in lines:
        code.setdefault(line.split("  #", 1)[0].rstrip() or line, line)
    near = difflib.get_close_matches(first.strip(), list(code), n=1, cutoff=0.6)
    near = [code[near[0]]] if near else []
    return f"; the nearest line in the file is {near[0]!r}" if near else ""


def _no_link(root: Path, rel: str) -> None:
    """Refuse a path any part of which (under root) is a link: edits are written as the harness's
    user, so a link a run left must never carry them outside the worktree."""
    link = first_link(root, root / rel)
    if link is not None:
        raise EditError(f"{rel} goes through a link ({link.relative_to(root)}); edits are never written "
                        "through links")


def apply(task: Task, root: Path, edits: list[Edit]) -> list[str]:
    """Apply every edit under root (the task folder in the worktree); the files changed."""
    new: dict[str, str] = {}
    for e in edits:
        rel = _safe(task, e.path)
        _no_link(root, rel)
        path = root / rel
        if rel in new:
            text = new[rel]
        elif path.is_file():
            data = read_regular_bytes(path, MAX_EDITED_BYTES, whole=True)
            if data is None:
                raise EditError(f"{rel} is not a regular file of at most {MAX_EDITED_BYTES >> 20} MiB; "
                                "edit a smaller file")
            text = data.decode(errors="replace")
        elif not e.search.strip():
            new[rel] = e.replace
            continue
        else:
            raise EditError(f"{rel} does not exist; to create it, leave the SEARCH section empty")
        if not e.search.strip():
            raise EditError(f"{rel} exists; an empty SEARCH only creates new files")
        span = _find(text, e.search)
        if span is None:
            first = e.search.strip().splitlines()[0][:120]
            raise EditError(f"the SEARCH text was not found in {rel} (its first line: {first!r}); copy the "
                            f"lines exactly from the current file{_closest(text, first)}")
        new[rel] = text[:span[0]] + e.replace + text[span[1]:]
    for rel, text in new.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return sorted(new)
