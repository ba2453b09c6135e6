"""The ledger's chain: records that cannot be changed without it showing.

Every write of a ledger row (a run, an experiment) appends an entry to the ledger's `chain` table:
the SHA-256 of the row as stored, and HMAC-SHA256(key, previous entry's HMAC, the entry). The key
is a random secret in the user's config folder (`~/.config/ouroboros/ledger.key`, or
`$OUROBOROS_CONFIG_DIR`), mode 0600, never inside a task repo; the newest entry's sequence number and
HMAC are also kept there (`heads/<ledger id>`), so cutting entries off the end shows too.

What it stops: a run, an evaluator or an agent that edits `ledger.sqlite` (a row changed, added or
deleted, a forged best), and cannot read the key: at isolation level `bwrap` the run and the
evaluation see no `$HOME`, at `unshare` the key's folder is masked, so the key is out of their reach. `verify` then names the rows that
disagree, `run --resume` refuses to build on them, `log` and `status` warn.

`log` and `status` check incrementally: after a check finds nothing wrong, the sequence number and
HMAC of the last entry it covered, and a digest of the keys of every row there was, are kept in a
record beside the head (`heads/<ledger id>.verified`), itself HMAC'd with the key. The next `log` or
`status` re-checks that record, that entry (its HMAC from the entry before it) and every entry after
it, the rows those entries name, the head, that every row has an entry and every entry's row is
there, and that the rows no later entry names are the ones the record saw (everything, when the record is missing or
wrong, or more was written since than before it); it does not re-digest rows last written before
the record. So an edit to an old row, or an edit of an old entry together with its row, is
caught by `verify` and `run --resume` (which check everything, every time), by `log` and `status`
only while no check has passed since the row was written.

What it does not stop: code that can read the key (a run at level `process`, where `$HOME` is
visible, or at `unshare` where the key's folder holds the worktree, the records or what the run reads,
elsewhere masked there; an agent process that is not confined; `ouroboros exp` runs inside the agent's
session in agent-driven mode and must write rows, so that agent holds the harness's power) can
write a valid chain. Records copied to another machine verify only with the key of the machine
that wrote them. A ledger written before chaining has rows with no entry: they are reported as
unchained, never as verified.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ouroboros.errors import OuroborosError

if TYPE_CHECKING:
    from ouroboros.ledger import Ledger

KEY_FILE = "ledger.key"


def config_dir() -> Path:
    override = os.environ.get("OUROBOROS_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ouroboros"


def key() -> bytes:
    """The chain key, made on first use (32 random bytes, file mode 0600, folder 0700)."""
    folder = config_dir()
    path = folder / KEY_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():  # written whole under another name, then linked: never seen half-written
            tmp = folder / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                os.link(tmp, path)  # fails if another process linked its key first: then that one is the key
            finally:
                tmp.unlink(missing_ok=True)
        text = path.read_text().strip()
    except FileExistsError:  # another process made it between our check and our link
        text = path.read_text().strip()
    except OSError as exc:
        raise OuroborosError(f"cannot read or create the ledger key {path}: {exc.strerror}; make "
                             f"{folder} writable by you, or set OUROBOROS_CONFIG_DIR to a private folder") from exc
    if len(text) != 64:
        raise OuroborosError(f"the ledger key {path} is not 64 hex characters; restore it from a backup (records "
                             "written with it verify only with it), or move it away to start a new key")
    return bytes.fromhex(text)


def digest(row: sqlite3.Row) -> str:
    """The SHA-256 of a row as stored, columns in name order, values as SQLite returns them."""
    data = dict(zip(row.keys(), row, strict=True))  # json sorts the keys
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=repr).encode()).hexdigest()


def _mac(k: bytes, prev: str, seq: int, kind: str, tag: str, n: int, dig: str) -> str:
    msg = "\n".join((prev, str(seq), kind, tag, str(n), dig)).encode("utf-8", "replace")
    return hmac.new(k, msg, hashlib.sha256).hexdigest()


def _head_file(ledger: Ledger) -> Path:
    # The ledger's identity is its resolved path, taken once per open ledger (twice an experiment otherwise:
    # a resolve is an lstat per path component).
    ident = ledger.__dict__.get("_head_ident")
    if ident is None:
        ident = hashlib.sha256(str((ledger.records / "ledger.sqlite").resolve()).encode()).hexdigest()[:24]
        ledger.__dict__["_head_ident"] = ident
    return config_dir() / "heads" / ident


def append(ledger: Ledger, k: bytes, kind: str, tag: str, n: int, dig: str) -> None:
    """Add the entry for a row just written (inside the caller's transaction) and move the head."""
    last = ledger.db.execute("SELECT seq, mac FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last["seq"] + 1, last["mac"]) if last else (1, "")
    mac = _mac(k, prev, seq, kind, tag, n, dig)
    ledger.db.execute("INSERT INTO chain (seq, kind, tag, n, digest, mac) VALUES (?,?,?,?,?,?)",
                      (seq, kind, tag, n, dig, mac))
    head = _head_file(ledger)
    head.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = head.with_name(f"{head.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{seq} {mac}\n")
    tmp.replace(head)


@dataclass(frozen=True)
class Problem:
    where: str  # what disagrees: "chain", "run <tag>", "experiment <n>", "ref <name>", "results.tsv"
    what: str
    tag: str | None = None  # the run it concerns; None for the chain as a whole

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def verify_chain(ledger: Ledger, tag: str | None = None) -> list[Problem]:
    """The HMACs of every entry, the head, and each row (of `tag`, or all) against its last entry."""
    return _verify_all(ledger, key(), tag)[0]


def _verify_all(ledger: Ledger, k: bytes, tag: str | None) -> tuple[list[Problem], tuple[int, str]]:
    """verify_chain's work, and the last entry's (seq, mac) it covered."""
    problems: list[Problem] = []
    prev, expect_seq, last_of = "", 1, {}
    for e in ledger.db.execute("SELECT * FROM chain ORDER BY seq"):
        problems += _entry(k, e, prev, expect_seq)
        prev, expect_seq = e["mac"], e["seq"] + 1
        last_of[(e["kind"], e["tag"], e["n"])] = e["digest"]
    problems += _head(ledger, expect_seq - 1, prev)
    where = " WHERE tag=?" if tag else ""
    args = (tag,) if tag else ()
    present = set()  # the rows there are (of `tag`, or all), for the entries whose row is gone
    for row in ledger.db.execute("SELECT * FROM runs" + where, args):
        present.add(("run", row["tag"], -1))
        problems += _row(last_of, "run", row["tag"], -1, digest(row), f"run {row['tag']}")
    for row in ledger.db.execute("SELECT * FROM experiments" + where + " ORDER BY tag, n", args):
        present.add(("exp", row["tag"], row["n"]))
        problems += _row(last_of, "exp", row["tag"], row["n"], digest(row), f"experiment {row['tag']}/{row['n']}")
    for kind, t, n in last_of:
        if tag and t != tag:
            continue
        if (kind, t, n) not in present:
            problems.append(_gone(kind, t, n))
    return problems, (expect_seq - 1, prev)


def _entry(k: bytes, e: sqlite3.Row, prev: str, expect_seq: int) -> list[Problem]:
    problems = []
    if e["seq"] != expect_seq:
        problems.append(Problem("chain", f"entries {expect_seq}..{e['seq'] - 1} are missing"))
    if not hmac.compare_digest(_mac(k, prev, e["seq"], e["kind"], e["tag"], e["n"], e["digest"]), e["mac"]):
        problems.append(Problem("chain", f"entry {e['seq']} ({e['kind']} {e['tag']} {e['n']}) has a wrong HMAC: "
                                         "written outside Ouroboros, or with another key"))
    return problems


def _head(ledger: Ledger, last_seq: int, last_mac: str) -> list[Problem]:
    head = _head_file(ledger)
    if head.is_file():
        seq, _, mac = head.read_text(errors="replace").strip().partition(" ")
        if not seq.isdecimal():
            return [Problem("chain", f"the record of this ledger's last entry ({head}) is not Ouroboros's: "
                                     f"{seq[:40]!r}, not an entry number")]
        if seq != str(last_seq) or mac != last_mac:
            return [Problem("chain", f"ends at entry {last_seq}, but Ouroboros last wrote entry {seq}: "
                                     "entries were cut off or rewritten")]
    elif last_seq > 0:
        return [Problem("chain", f"no record of this ledger's last entry in {head.parent}: written on "
                                 "another machine or account, so a cut-off end cannot be ruled out")]
    return []


def _gone(kind: str, tag: str, n: int) -> Problem:
    where = f"run {tag}" if kind == "run" else f"experiment {tag}/{n}"
    return Problem(where, "was recorded, and is now gone from the ledger", tag)


# The incremental check of `log` and `status`: the module docstring says what it covers.

def _anchor_file(ledger: Ledger) -> Path:
    head = _head_file(ledger)
    return head.with_name(head.name + ".verified")


def _anchor_mac(k: bytes, ledger: Ledger, seq: int, mac: str, keys: str) -> str:
    # the ledger's id is in the message: a record copied from another ledger's does not verify here
    msg = "\n".join(("verified", _head_file(ledger).name, str(seq), mac, keys)).encode()
    return hmac.new(k, msg, hashlib.sha256).hexdigest()


def _read_anchor(ledger: Ledger, k: bytes) -> tuple[int, str, str] | None | Problem:
    path = _anchor_file(ledger)
    try:
        fields = path.read_text().split()
        if len(fields) == 3:  # a record from before it named the rows: check everything, no warning
            return None
        seq, mac, keys, check = fields
        good = hmac.compare_digest(_anchor_mac(k, ledger, int(seq), mac, keys), check)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        good = False
    if not good:
        return Problem("chain", f"the record of the last verified entry ({path}) has a wrong HMAC: changed "
                                "outside Ouroboros; everything was checked instead")
    return int(seq), mac, keys


def _write_anchor(ledger: Ledger, k: bytes, seq: int, mac: str, keys: str) -> None:
    path = _anchor_file(ledger)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{seq} {mac} {keys} {_anchor_mac(k, ledger, seq, mac, keys)}\n")
        tmp.replace(path)
    except OSError:  # only a shortcut: without it the next check is a whole one
        pass


def _row_keys(ledger: Ledger) -> set[tuple[str, str, int]]:
    """(kind, tag, n) of every row of the ledger (n = -1 for a run)."""
    keys = {("exp", t, n) for t, n in ledger.db.execute("SELECT tag, n FROM experiments")}
    return keys | {("run", t, -1) for (t,) in ledger.db.execute("SELECT tag FROM runs")}


def _keys_digest(keys) -> str:
    """One hash of a set of row keys: the anchor holds the one of every row there was when it was written."""
    h = hashlib.sha256()
    quoted: dict[str, str] = {}  # json.dumps of each tag and kind, once (a run has thousands of rows)
    lines = []
    for kind, tag, n in sorted(keys):  # one JSON list a line: no tag, whatever it holds, reads as two keys
        k = quoted.get(kind) or quoted.setdefault(kind, json.dumps(kind))
        t = quoted.get(tag) or quoted.setdefault(tag, json.dumps(tag))
        lines.append(f"[{k}, {t}, {int(n)}]\n")  # the bytes of json.dumps([kind, tag, n]) + newline
    h.update("".join(lines).encode())
    return h.hexdigest()


def check(ledger: Ledger, tag: str | None = None) -> list[Problem]:
    """What `log` and `status` run: the chain since the last check that passed (all of it the first
    time), the rows written since, rows without entries and entries without rows. Problems of other
    runs than `tag` are left out; the record moves on only when nothing at all is wrong."""
    k = key()
    ledger.db.execute("BEGIN")  # one snapshot of the ledger, however many queries
    try:
        problems, end, keys = _check(ledger, k)
        if not problems and end[0] > 0 and keys is None:
            keys = _keys_digest(_row_keys(ledger))
    finally:
        ledger.db.execute("COMMIT")
    if keys and not problems and end[0] > 0:
        _write_anchor(ledger, k, *end, keys)
    return [p for p in problems if tag is None or p.tag is None or p.tag == tag]


def _check(ledger: Ledger, k: bytes) -> tuple[list[Problem], tuple[int, str], str | None]:
    """The problems, the last entry checked (seq, mac), and the digest of every row key when it was computed
    on the way (None: not)."""
    anchor = _read_anchor(ledger, k)
    if not isinstance(anchor, tuple):
        problems, end = _verify_all(ledger, k, None)
        return ([anchor] if anchor else []) + problems, end, None
    seq, mac, keys = anchor
    entries = ledger.db.execute("SELECT * FROM chain WHERE seq >= ? ORDER BY seq", (seq - 1,)).fetchall()
    if len(entries) > max(seq, 1000):  # more written since than before: row by row would be slower than all
        return *_verify_all(ledger, k, None), None
    before = entries.pop(0) if entries and entries[0]["seq"] == seq - 1 else None
    at = entries.pop(0) if entries and entries[0]["seq"] == seq else None
    if at is None or at["mac"] != mac or (before is None) != (seq == 1) or _entry(k, at, before["mac"] if before
                                                                                    else "", seq):
        problems, end = _verify_all(ledger, k, None)
        return [Problem("chain", f"entry {seq}, the last one a check passed, was changed or removed since; "
                                 "everything was checked instead")] + problems, end, None
    problems: list[Problem] = []
    prev, expect_seq, last_of = mac, seq + 1, {(at["kind"], at["tag"], at["n"]): at["digest"]}
    for e in entries:
        problems += _entry(k, e, prev, expect_seq)
        prev, expect_seq = e["mac"], e["seq"] + 1
        last_of[(e["kind"], e["tag"], e["n"])] = e["digest"]
    problems += _head(ledger, expect_seq - 1, prev)
    problems += _rows_named(ledger, last_of)  # the rows written since, and the anchor entry's own row
    problems += _unmatched(ledger)
    # The rows no entry since names must be the rows there were: an entry left unchecked below the anchor
    # (numbered 0, or an old one renamed) cannot then vouch for a row added, or stand in for one removed.
    named = set(last_of)
    old = _named_before(ledger, named, seq)
    rows = _row_keys(ledger)
    seen = (rows - named) | (named & old)
    found = _keys_digest(seen)
    if found != keys:
        problems.append(Problem("chain", "the ledger's rows are not the ones the last check saw plus those "
                                         "written since: rows were added or removed outside Ouroboros; run "
                                         "`ouroboros verify` to see which"))
    # a deleted row is found both ways: once; the digest of every row is the one just made when they are the same
    return list(dict.fromkeys(problems)), (expect_seq - 1, prev), found if seen == rows else None


def _named_before(ledger: Ledger, keys: set, seq: int) -> set:
    """Those of keys that an entry numbered seq or lower names: SQLite matches them in one pass (a set of
    every old entry's key, made in Python, is most of what `status` spends after a long run)."""
    found: set = set()
    listed = sorted(keys)
    for i in range(0, len(listed), 300):  # SQLite's limit on bound values, with room
        part = listed[i:i + 300]
        values = ",".join("(?,?,?)" for _ in part)
        found |= {tuple(r) for r in ledger.db.execute(f"SELECT DISTINCT kind, tag, n FROM chain WHERE seq <= ? AND (kind, tag, n) IN "
                                       f"(VALUES {values})", (seq, *(v for key in part for v in key)))}
    return found


def _rows_named(ledger: Ledger, last_of: dict) -> list[Problem]:
    problems = []
    for kind, t, n in last_of:
        if kind == "run":
            rows = ledger.db.execute("SELECT * FROM runs WHERE tag=?", (t,)).fetchall()
            where = f"run {t}"
        else:
            rows = ledger.db.execute("SELECT * FROM experiments WHERE tag=? AND n=?", (t, n)).fetchall()
            where = f"experiment {t}/{n}"
        if not rows:
            problems.append(_gone(kind, t, n))
        problems += [p for r in rows for p in _row(last_of, kind, t, n, digest(r), where)]
    return problems


def _unmatched(ledger: Ledger) -> list[Problem]:
    """Rows with no entry at all, and entries whose row is gone, found by SQLite in one pass each."""
    db, problems = ledger.db, []
    for t, n in db.execute("SELECT tag, n FROM experiments EXCEPT SELECT tag, n FROM chain WHERE kind='exp'"):
        problems += _row({}, "exp", t, n, "", f"experiment {t}/{n}")
    for (t,) in db.execute("SELECT tag FROM runs EXCEPT SELECT tag FROM chain WHERE kind='run'"):
        problems += _row({}, "run", t, -1, "", f"run {t}")
    for t, n in db.execute("SELECT tag, n FROM chain WHERE kind='exp' EXCEPT SELECT tag, n FROM experiments"):
        problems.append(_gone("exp", t, n))
    for (t,) in db.execute("SELECT tag FROM chain WHERE kind='run' EXCEPT SELECT tag FROM runs"):
        problems.append(_gone("run", t, -1))
    return problems


def _row(last_of: dict, kind: str, tag: str, n: int, dig: str, where: str) -> list[Problem]:
    recorded = last_of.get((kind, tag, n))
    if recorded is None:
        return [Problem(where, "has no chain entry: added outside Ouroboros (or written before records were "
                               "chained)", tag)]
    if recorded != dig:
        return [Problem(where, "differs from what Ouroboros wrote: changed outside Ouroboros", tag)]
    return []


def verify_refs(ledger: Ledger, repo: Path, tag: str) -> list[Problem]:
    """Each experiment's attempt commit against its ref refs/ouroboros/<tag>/<n>. An experiment still
    running may have none yet while its commit is the tip of the run's branch: the loop pins an
    attempt when it records it (see Workspace.settle)."""
    from ouroboros.workspace import git

    branch = f"refs/heads/ouroboros/{tag}"
    out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/ouroboros/{tag}/", branch,
              check=False)
    refs = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    problems = []
    for e in ledger.experiments(tag):
        if not e.commit_sha:
            continue
        name = f"refs/ouroboros/{tag}/{e.n}"
        sha = refs.get(name)
        if sha is None and e.status == "running" and refs.get(branch) == e.commit_sha:
            continue
        if sha is None:
            problems.append(Problem(f"ref {name}", f"is missing; the ledger says experiment {e.n} is commit "
                                                   f"{e.commit_sha[:12]}"))
        elif sha != e.commit_sha:
            problems.append(Problem(f"ref {name}", f"points to {sha[:12]}, the ledger says {e.commit_sha[:12]}"))
    return problems


def verify_tsv(ledger: Ledger, tag: str) -> list[Problem]:
    """results.tsv against the rows the ledger would write, as multisets: every ledger row missing from
    the table and every table row (or extra copy of one) the ledger has not, wherever it lies.

    A kill between the ledger's write and the table's leaves the table behind by its last rows; that
    is reported too (verify cannot tell it from rows cut off the end), with the note that `run
    --resume` rewrites the table from the ledger."""
    path = ledger.run_dir(tag) / "results.tsv"
    if not path.is_file():
        return []
    exps = ledger.experiments(tag, finished_only=True)
    expected = Counter(e.tsv_row().rstrip("\n") for e in exps)
    lines = Counter(path.read_text(errors="replace").splitlines()[1:])
    extra, missing = lines - expected, expected - lines
    problems = [Problem("results.tsv", f"row {r[:120]!r} is not in the ledger" + (f" ({k} times)" if k > 1 else ""))
                for r, k in extra.items()]
    latest = sorted(exps, key=lambda e: (e.finished or 0, e.n))[-sum(missing.values()):] if missing else []
    behind = not extra and Counter(e.tsv_row().rstrip("\n") for e in latest) == missing
    why = (" (only the last rows are missing, as a kill between the ledger's write and the table's leaves it; "
           "`run --resume` rewrites the table)") if behind else ""
    problems += [Problem("results.tsv", f"the ledger's row {r[:120]!r} is not in the table{why}") for r in missing]
    return problems


def verify_self(ledger: Ledger, tag: str) -> list[Problem]:
    """`run --self`'s copy of its holdout comparison and bad versions (runs/<tag>/self.json, for people to
    read) against the chained run row that holds them: the report reads only the row."""
    from ouroboros.readfile import read_regular

    path = ledger.run_dir(tag) / "self.json"
    if not path.exists() and not path.is_symlink():
        return []
    run = ledger.run(tag)
    text = read_regular(path, 1 << 20)
    try:
        copy = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        copy = None
    if run is None or copy != run.config.get("self"):
        return [Problem(str(path), "differs from the run's chained record of its holdout comparison and bad "
                                   "versions (the report shows the record)", tag)]
    return []


def verify(ledger: Ledger, repo: Path, tag: str, table: bool = True) -> list[Problem]:
    """Everything that disagrees between the chain, the rows, the attempt refs, results.tsv and self.json."""
    return verify_chain(ledger, tag) + verify_refs(ledger, repo, tag) + (verify_tsv(ledger, tag) if table else []) \
        + verify_self(ledger, tag)


def refuse_broken(ledger: Ledger, repo: Path, tag: str) -> None:
    """Refuse to build on records that were changed outside Ouroboros (`run --resume`, `exp`)."""
    problems = verify(ledger, repo, tag, table=False)
    if problems:
        raise OuroborosError(f"the records of run {tag!r} do not verify ({len(problems)} problem(s), first: "
                             f"{problems[0]}); they were changed outside Ouroboros, so the run is not continued. "
                             f"See `ouroboros verify {tag}`, and start a new run (--tag NEW)")
