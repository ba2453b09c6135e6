"""Data, tokenizer and evaluator for the tinygpt example task.

################################################################################
#  PROTECTED FILE. The agent may not edit it; the harness checks its hash and  #
#  runs `python prepare.py evaluate` from a pristine copy.                      #
#                                                                              #
#  Fixed here, because val_bpb is only comparable across experiments if they   #
#  are: the corpus and its train/val split, the tokenizer (raw bytes), the     #
#  context length, the exact validation windows scored, and the scoring rule.  #
################################################################################

Usage:

    python prepare.py             build (or find) the corpus cache, print fingerprint and sizes
    python prepare.py evaluate    score ./ckpt.pt: the sealed, isolated evaluator
    python prepare.py zygote ...  internal: the model sandbox the evaluator starts

Corpus. By default the docstrings of the Python standard library installed with the running
interpreter, walked in sorted path order: offline on any fresh machine, but different Python
versions give different text. The metric therefore carries `corpus_sha256`, the hash of the exact
corpus bytes; results are comparable only when it matches. `TINYGPT_CORPUS=tinyshakespeare` uses
Karpathy's char-rnn Shakespeare instead (downloaded once, needs a network). The corpus is cached
under `$OUROBOROS_CACHE/tinygpt/<fingerprint>/` (default root `~/.cache/ouroboros`). Tokens are
bytes (vocabulary 256), so bits per byte is the mean cross-entropy in bits.

Checkpoint contract (what train.py must produce for `evaluate`). `ckpt.pt` in the working
directory, written with `torch.save({"config": dict, "state_dict": model.state_dict()})`, where
`config` holds only plain values. `train.py` must define `build_model(config) -> torch.nn.Module`
whose `model(idx)` maps a LongTensor (B, T) of bytes, T <= CONTEXT_LEN, to logits (B, T, 256),
and importing `train` must not start training (guard it with `if __name__ == "__main__":`).
The evaluator needs only this file, train.py and ckpt.pt in its working directory.

How the model is served. The evaluator never imports train.py. It starts a zygote (this file,
safe-path Python, no OUROBOROS_/TINYGPT_ variables, an empty working directory) that imports
torch once and forks a FRESH child for every request of EVAL_BATCH windows: the child imports
train.py, loads ckpt.pt, answers one forward pass through a pipe and dies, and the zygote kills
whatever it left (it is a child subreaper) before the next child starts. Each child runs in
private user, mount, IPC and network namespaces with every mount read-only but a private,
empty temporary directory (its working directory and TMPDIR) that dies with it, and, through a
nested user namespace, no capability to remount anything. That needs user namespaces; the
metric `model_sandbox` says which level each evaluation got, and without them RLIMIT_FSIZE is 0.
Each child also has its own CPU-time limit (CHILD_CPU_S) and a wall-clock limit (CHILD_WALL_S,
which bounds GPU time).
The evaluator and the zygote are not dumpable (no ptrace, no /proc/<pid>/mem or environ for the
model), and the evaluator writes the metrics only after every model process is dead, by an atomic
rename over the metrics path.

What `evaluate` protects against:
  - forged metrics: the run's own output is ignored; the score comes from the checkpoint alone;
    no model process is alive, or could have kept a handle, when the metrics file is written;
  - an edited scorer: cross-entropy and bits per byte are computed in this (pristine) process;
  - reading the answer: a child receives input windows, never their targets, cannot read this
    process's memory, and gets no environment variable that points to the data;
  - looking ahead: windows whose future was replaced by training text after a secret cut are
    mixed, in a secret random order, into the requests; if outputs at earlier positions change,
    the model is not causal and the evaluation fails. A probe never shares a process with its
    source window, and nothing survives from one process to the next (no files: read-only
    mounts and RLIMIT_FSIZE; no IPC or sockets: namespaces; no processes: killed), so a model
    that memoises per prefix cannot make a probe agree with its source;
  - training inside the evaluator: a child has CHILD_CPU_S CPU seconds, starts from the
    checkpoint every time, and cannot write anything a later child could read;
  - hiding a leak in noise: one window is scored twice, in two processes, and outputs that differ
    by more than MAX_NOISE fail the evaluation;
  - broken outputs: wrong shape or non-finite logits fail the evaluation.
What it does not protect against:
  - reading: a child can read the filesystem (read-only), including the cache and the standard
    library the default corpus is built from, so a model could look the validation text up.
    Hiding files is the sandbox's job (sandbox.py), and the guard should reject train.py
    changes that read data files;
  - without user namespaces (some containers) only the rlimits and the kill hold: a child can then
    leave empty files, links or SysV IPC objects that a later child reads;
  - a model that detects the causality probes and behaves only then, or that leaks less than the
    tolerance (CAUSALITY_TOL plus 10x its own noise, at most ~1e-2);
  - a child killing the evaluator (same user): that only ends the evaluation as a failure;
  - training on the validation split inside train.py (it can reach the same cache);
  - a tampered cache: the fingerprint is recomputed from the bytes actually scored, so tampering
    shows up as a changed `corpus_sha256`, which the harness compares with the baseline's.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------------
# FIXED: the benchmark. Changing any of these changes what val_bpb means.
# ------------------------------------------------------------------------------------------------
VOCAB_SIZE = 256  # byte-level tokens: no tokenizer to train, bits per byte is the loss in bits
CONTEXT_LEN = 256  # tokens per validation window; the model must accept windows this long
VAL_FRACTION = 0.1  # the last 10% of the corpus bytes is the validation split
EVAL_TOKENS = 32 * 1024  # bytes scored: 128 windows, ~1 s for the default model on 2 CPU cores
EVAL_BATCH = 16  # windows per request; each request is answered by a fresh model process
# CPU seconds one model process may use to import, load and answer 16 windows (env override:
# TINYGPT_CHILD_CPU_S). The default model needs ~0.35; any model whose training fits the default
# CPU budget needs < ~1. A model that trains inside the evaluator gets at most this much, from the
# checkpoint again in every process, and the same in each (or the twin check fails).
CHILD_CPU_S = 10
CHILD_WALL_S = 60  # wall seconds for the same, which also bounds GPU time (TINYGPT_CHILD_WALL_S)
CORPUS_MAX_BYTES = 4_000_000  # cap on the stdlib corpus (about 1.8 MB with CPython 3.11)
CAUSALITY_MIN_PROBES = 4  # altered-future copies of scored windows; more fill the last request
CAUSALITY_TOL = 1e-4  # allowed change in log-probabilities, added to 10x the measured noise
MAX_NOISE = 1e-3  # a window scored twice may differ by this much (log-probabilities), no more
CORPUS_BUILDER_VERSION = 1  # bump when the corpus recipe changes (keys the source cache)
TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
CHECKPOINT = "ckpt.pt"
# ------------------------------------------------------------------------------------------------

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_DATA_ENV_PREFIXES = ("OUROBOROS_", "TINYGPT_")  # the cache, metrics path, corpus choice, ...


class PrepareError(Exception):
    """A problem the user can fix; reported as one line on stderr."""


# --- corpus ---------------------------------------------------------------------------------------


def cache_root() -> Path:
    root = os.environ.get("OUROBOROS_CACHE") or Path.home() / ".cache" / "ouroboros"
    return Path(root) / "tinygpt"


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _docstrings_in_source_order(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                found.append((getattr(node, "lineno", 0), doc))
    return [doc for _, doc in sorted(found, key=lambda pair: pair[0])]


def build_stdlib_corpus() -> bytes:
    """Docstrings of the installed standard library, in sorted relative-path order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        (p for p in stdlib.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(stdlib).parts)),
        key=lambda p: p.relative_to(stdlib).as_posix(),
    )
    chunks: list[bytes] = []
    size = 0
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # old escape sequences in some modules
                tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for doc in _docstrings_in_source_order(tree):
            chunk = doc.encode("utf-8", errors="replace") + b"\n\n"
            if size + len(chunk) > CORPUS_MAX_BYTES:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def download_tinyshakespeare() -> bytes:
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
            return response.read()
    except OSError as exc:
        raise PrepareError(
            f"could not download tinyshakespeare from {TINYSHAKESPEARE_URL} ({exc}); "
            "connect to a network or unset TINYGPT_CORPUS to use the offline stdlib corpus"
        ) from exc


def _source_key() -> str:
    """Names the corpus recipe, so a cached corpus is found without rebuilding it."""
    source = os.environ.get("TINYGPT_CORPUS", "stdlib")
    if source == "tinyshakespeare":
        return "tinyshakespeare"
    if source != "stdlib":
        raise PrepareError(
            f"TINYGPT_CORPUS={source!r} is not a known corpus; "
            "use 'stdlib' (default, offline) or 'tinyshakespeare'"
        )
    recipe = f"{CORPUS_BUILDER_VERSION}|{sys.version}|{sysconfig.get_paths()['stdlib']}"
    return "stdlib-" + hashlib.sha256(recipe.encode()).hexdigest()[:16]


def corpus_path() -> Path:
    """Path of the cached corpus, building it first if needed."""
    root = cache_root()
    pointer = root / f"{_source_key()}.fingerprint"
    if pointer.is_file():
        path = root / pointer.read_text().strip() / "corpus.txt"
        if path.is_file():
            return path
    data = download_tinyshakespeare() if _source_key() == "tinyshakespeare" else build_stdlib_corpus()
    fp = fingerprint(data)
    folder = root / fp
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"corpus.txt.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    tmp.replace(folder / "corpus.txt")  # atomic, so concurrent runs never read half a file
    tmp = root / f"{pointer.name}.{os.getpid()}.tmp"
    tmp.write_text(fp + "\n")
    tmp.replace(pointer)
    return folder / "corpus.txt"


def load_corpus() -> tuple[np.ndarray, np.ndarray, str]:
    """(train bytes, val bytes, fingerprint); the fingerprint is of the bytes actually loaded."""
    data = corpus_path().read_bytes()
    tokens = np.frombuffer(data, dtype=np.uint8)
    split = int(len(tokens) * (1 - VAL_FRACTION))
    needed = (EVAL_TOKENS // CONTEXT_LEN) * (CONTEXT_LEN + 1)
    if len(tokens) - split < needed:
        raise PrepareError(
            f"corpus too small: {len(tokens)} bytes leaves {len(tokens) - split} validation bytes, "
            f"need {needed}"
        )
    return tokens[:split], tokens[split:], fingerprint(data)


def eval_windows(val: np.ndarray) -> np.ndarray:
    """The fixed scored windows: (EVAL_TOKENS // CONTEXT_LEN, CONTEXT_LEN + 1) uint8.

    Column t is the input at position t and column t + 1 its target. Windows do not overlap,
    so no window's last target is ever sent to the model as another window's input.
    """
    n = EVAL_TOKENS // CONTEXT_LEN
    starts = np.arange(n) * (CONTEXT_LEN + 1)
    return np.stack([val[s : s + CONTEXT_LEN + 1] for s in starts])


def bits_per_byte(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of `targets` (N, T) under `logits` (N, T, 256), in bits."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return float((log_norm - picked).mean() / math.log(2))


# --- helpers for train.py -----------------------------------------------------------------------

_loaded: dict[str, object] = {}


def _splits():
    if "splits" not in _loaded:
        import torch

        train, val, fp = load_corpus()
        _loaded["splits"] = (torch.from_numpy(train.copy()), torch.from_numpy(val.copy()), fp)
    return _loaded["splits"]


def corpus_fingerprint() -> str:
    return _splits()[2]


def get_batch(split: str, batch_size: int, seq_len: int = CONTEXT_LEN, device="cpu"):
    """Random windows (x, y) of shape (batch_size, seq_len), int64, y shifted by one byte."""
    import torch

    train, val, _ = _splits()
    data = train if split == "train" else val
    starts = torch.randint(len(data) - seq_len - 1, (batch_size,))
    rows = data[starts[:, None] + torch.arange(seq_len + 1)].long()
    x, y = rows[:, :-1], rows[:, 1:]
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def evaluate_bpb(model, device="cpu") -> float:
    """In-process val_bpb on the fixed windows: what train.py prints (the forgeable number)."""
    import torch

    windows = eval_windows(_splits()[1].numpy())
    was_training = model.training
    model.eval()
    outputs = []
    with torch.no_grad():
        for i in range(0, len(windows), EVAL_BATCH):
            x = torch.from_numpy(windows[i : i + EVAL_BATCH, :-1].astype(np.int64)).to(device)
            outputs.append(model(x).float().cpu().numpy())
    model.train(was_training)
    return bits_per_byte(np.concatenate(outputs), windows[:, 1:])


# --- the model sandbox: a zygote that forks one fresh, confined child per request ---------------
# The zygote runs only this file's code (it imports torch once, so a child costs a fork rather
# than a Python start). Each child imports the editable train.py, answers ONE request and dies,
# with its whole process tree, before the next child starts: no state survives from one request
# to the next, so a model cannot remember what it saw (memoisation) or keep learning.
#
# Evaluator -> zygote (a socket): uint32 B, uint32 T, and three pipe ends passed as SCM_RIGHTS;
# B == 0 ends. Zygote -> evaluator: int32 status, int32 detail, once the child's tree is dead.
# Evaluator -> child: B*T bytes of tokens. Child -> evaluator: the sandbox level (64 bytes), then
# uint32 B, T, V and B*T*V float32 logits; and its stderr on the third pipe.

_OK, _EXITED, _CPU, _WALL, _SHAPE = 0, 1, 2, 3, 4
_LEVEL_BYTES = 64  # the child's sandbox level, written before the editable code is imported
PRIVATE_TMP_MB = 64  # size of each model child's own temporary directory (a tmpfs that dies with it)
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36
_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND = 1, 32, 4096
# statvfs flags that a bind remount must repeat (the kernel refuses to clear locked ones)
_KEPT_FLAGS = {2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}  # nosuid nodev noexec atime


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _harden_self() -> None:
    """Trusted processes: no ptrace, /proc/<pid>/{mem,environ,fd} closed to same-user processes
    (the model could otherwise read the targets or the metrics path, or patch this process), and
    orphaned descendants re-parented here, so none can hide from the sweep."""
    if sys.platform.startswith("linux"):
        libc = _libc()
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _descendants(root: int) -> list[int]:
    """Live (non-zombie) descendants of root, from /proc/*/stat."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] != b"Z":
            parent[int(name)] = int(fields[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        todo += kids
    return found


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _kill_descendants() -> None:
    """SIGKILL every descendant until none is left (an orphan's children come back to us)."""
    if not sys.platform.startswith("linux"):
        return
    for _ in range(1000):
        _reap()
        pids = _descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        time.sleep(0.001)
    raise PrepareError("could not kill the model's processes (a fork bomb?)")


def _read_only_world() -> str:
    """In a child: private user, mount, IPC and network namespaces with every mount read-only.

    What it closes: files of any size (names, links, attributes, not only contents), SysV and
    POSIX IPC, sockets, so no process of a later request can receive anything from this one.
    Returns the level reached; where user namespaces are unavailable, only the rlimits hold.
    """
    if not sys.platform.startswith("linux"):
        return "rlimits"
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWNET) != 0:
        return "rlimits (no user namespaces)"
    _map_ids(uid, gid)
    with open("/proc/self/mountinfo", "rb") as f:
        points = [line.split()[4] for line in f.read().splitlines()]
    writable = 0
    for raw in points:
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), raw)
        try:
            have = os.statvfs(point).f_flag
        except OSError:
            continue  # hidden under another mount: unreachable anyway
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY
        flags |= sum(ms for st, ms in _KEPT_FLAGS.items() if have & st)
        if libc.mount(None, point, None, flags, None) != 0 and not os.statvfs(point).f_flag & 1:
            writable += 1
    if writable:
        return f"namespaces ({writable} mounts left writable)"
    # A private, empty temporary directory (torch wants one), gone with this child's namespace:
    # mounted over the working directory the evaluator made empty, and named by TMPDIR.
    scratch = os.getcwd()
    if libc.mount(b"tmpfs", scratch.encode(), b"tmpfs", 2 | 4, f"size={PRIVATE_TMP_MB}m,mode=700".encode()) != 0:
        return "namespaces (no private temporary directory)"
    os.chdir(scratch)
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = None
    # Give up the capabilities that made the mounts: in a nested user namespace the model holds
    # none over this mount namespace, so it cannot remount anything writable again.
    if libc.unshare(_CLONE_NEWUSER) != 0:
        return "namespaces (capabilities kept)"
    _map_ids(uid, gid)
    return "namespaces"


def _map_ids(uid: int, gid: int) -> None:
    """Keep the same user and group ids inside a new user namespace."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError:
            pass  # (a nested namespace inherits "deny"); unmapped ids still confine


def _confine(cpu_s: int) -> str:
    """The model child's limits: its own CPU seconds, no lasting file writes, dies with the zygote."""
    import resource

    os.setsid()
    if sys.platform.startswith("linux"):
        _libc().prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    level = _read_only_world()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
    # Files can then be written only in the private directory; without it, nowhere (contents at least).
    fsize = PRIVATE_TMP_MB << 20 if level == "namespaces" else 0
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return level


def _child(in_fd: int, batch: int, length: int, out_fd: int, workdir: Path, cpu_s: int) -> None:
    """One request in a fresh child: read its windows, import the editable model, answer, exit."""
    out = os.fdopen(out_fd, "wb")
    # Reported before any editable code runs, so the model cannot change what is reported.
    out.write(_confine(cpu_s).encode()[:_LEVEL_BYTES].ljust(_LEVEL_BYTES))
    out.flush()
    raw = bytearray()
    while len(raw) < batch * length:
        chunk = os.read(in_fd, batch * length - len(raw))
        if not chunk:
            raise EOFError("request ended early")
        raw += chunk
    os.close(in_fd)
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(workdir))
    import torch
    import train  # editable code, imported only here

    torch.set_num_threads(1)  # fixed, so outputs do not depend on the machine's core count
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = torch.load(workdir / CHECKPOINT, map_location="cpu", weights_only=True)
    model = train.build_model(checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    tokens = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(batch, length)
    x = torch.from_numpy(tokens.astype(np.int64)).to(device)
    with torch.no_grad():
        logits = model(x).float().cpu().numpy().astype(np.float32)
    shape = (list(logits.shape) + [0, 0, 0])[:3]
    out.write(struct.pack("<III", *shape))
    if logits.ndim == 3:
        out.write(logits.tobytes())
    out.flush()


def _fork_child(batch: int, length: int, fds: list[int], workdir: Path, cpu_s: int, wall_s: float) -> tuple[int, int]:
    """Run one request in a fresh child, then kill its whole tree; (status, detail).

    `fds` are the request's pipes, made by the evaluator: tokens in, reply out, stderr out. The
    zygote only passes them on and never reads them, so its memory, which every later child
    inherits, holds nothing of any request.
    """
    import signal

    in_fd, out_fd, err_fd = fds
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.dup2(err_fd, 2)
            os.dup2(err_fd, 1)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            keep = sorted({in_fd, out_fd})
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 1 << 16)
            _child(in_fd, batch, length, out_fd, workdir, cpu_s)
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    deadline, status, cpu = time.monotonic() + wall_s, None, 0.0
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            cpu = usage.ru_utime + usage.ru_stime
            break
        time.sleep(0.005)
    else:
        status = None
    _kill_descendants()  # the child (if it overstayed) and anything it started
    if status is None:
        return _WALL, int(wall_s)
    if os.WIFSIGNALED(status) and (os.WTERMSIG(status) == signal.SIGXCPU or cpu >= cpu_s):
        return _CPU, cpu_s
    return (_OK, 0) if os.waitstatus_to_exitcode(status) == 0 else (_EXITED, os.waitstatus_to_exitcode(status))


def zygote(workdir: Path, cpu_s: int, wall_s: float) -> None:
    """Internal: on the socket at fd 0, take (B, T) and three pipes per request, answer each in a
    fresh child and send back (status, detail); B == 0 ends."""
    import socket

    _harden_self()
    sock = socket.socket(fileno=0)
    import torch  # noqa: F401  imported once here, so that each child is a cheap fork

    while True:
        header, fds, _, _ = socket.recv_fds(sock, 8, 3)
        if len(header) != 8:
            return
        batch, length = struct.unpack("<II", header)
        if batch == 0 or len(fds) != 3:
            return
        sock.sendall(struct.pack("<ii", *_fork_child(batch, length, fds, workdir, cpu_s, wall_s)))


# --- the evaluator (parent process; never imports train) ----------------------------------------


def _budget(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise PrepareError(f"{name}={raw!r} is not a positive number of seconds; unset it for {default:g}")
    return value


class _ModelServer:
    """The evaluator's handle on the zygote; one call of `logits` is one fresh model child."""

    def __init__(self, workdir: Path, scratch: Path):
        import socket

        env = {k: v for k, v in os.environ.items() if not k.startswith(_DATA_ENV_PREFIXES)}
        self.cpu_s = int(math.ceil(_budget("TINYGPT_CHILD_CPU_S", CHILD_CPU_S)))
        self.wall_s = _budget("TINYGPT_CHILD_WALL_S", CHILD_WALL_S)
        self.levels: set[str] = set()  # what confinement each model process reached
        self.sock, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", str(Path(__file__).resolve()), "zygote", str(workdir),
                 str(self.cpu_s), str(self.wall_s)],
                cwd=scratch,  # empty: nothing the model could find relative to its working directory
                env=env,
                stdin=theirs,
                stdout=subprocess.DEVNULL,
            )
        finally:
            theirs.close()

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        import select
        import socket

        batch, length = tokens.shape
        need = _LEVEL_BYTES + 12 + batch * length * VOCAB_SIZE * 4
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            os.write(in_w, tokens.tobytes())  # 4 KiB: fits the pipe's buffer
            os.close(in_w)
            try:
                socket.send_fds(self.sock, [struct.pack("<II", batch, length)], [in_r, out_w, err_w])
            except OSError as exc:
                raise PrepareError(f"the model sandbox exited with code {self.proc.poll()} (see the log above)") from exc
            for fd in (in_r, out_w, err_w):
                os.close(fd)
            reply, err_left, open_fds = bytearray(), 1 << 20, {out_r, err_r}
            while open_fds:  # both end when the child and all it started are dead
                ready = select.select(list(open_fds), [], [], self.wall_s + 30)[0]
                if not ready:  # the zygote enforces wall_s; this is for a zygote that was killed
                    raise PrepareError(f"the model sandbox stopped answering (zygote exit code {self.proc.poll()})")
                for fd in ready:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        open_fds.discard(fd)
                    elif fd == err_r:
                        if err_left > 0:
                            sys.stderr.buffer.write(chunk[:err_left])
                            sys.stderr.buffer.flush()
                        err_left -= len(chunk)
                    elif len(reply) <= need:
                        reply += chunk
            answer = self.sock.recv(8)
        finally:
            for fd in (out_r, err_r):
                os.close(fd)
        if len(answer) != 8:
            raise PrepareError(f"the model sandbox exited with code {self.proc.wait()} (see the log above)")
        status, detail = struct.unpack("<ii", answer)
        level = bytes(reply[:_LEVEL_BYTES]).decode(errors="replace").strip()
        if level:
            self.levels.add(level)
        if status == _CPU:
            raise PrepareError(
                f"the model used more than its {detail} CPU seconds for one request of {batch} windows "
                "(TINYGPT_CHILD_CPU_S); evaluation is a forward pass, not training"
            )
        if status == _WALL:
            raise PrepareError(
                f"the model took more than {detail} s for one request of {batch} windows (TINYGPT_CHILD_WALL_S)"
            )
        if status == _EXITED:
            raise PrepareError(
                f"the model exited with code {detail} (see its traceback above); "
                "check build_model() in train.py and the checkpoint contract in prepare.py"
            )
        if len(reply) != need or struct.unpack("<III", reply[_LEVEL_BYTES : _LEVEL_BYTES + 12]) != (
            batch, length, VOCAB_SIZE
        ):
            raise PrepareError(
                f"model returned logits of a wrong shape or size for input {(batch, length)}; "
                f"expected {(batch, length, VOCAB_SIZE)}"
            )
        out = np.frombuffer(bytes(reply[_LEVEL_BYTES + 12 :]), dtype=np.float32).reshape(batch, length, VOCAB_SIZE)
        if not np.isfinite(out).all():
            raise PrepareError("model returned non-finite logits (nan or inf)")
        return out

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack("<II", 0, 0))
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _kill_descendants()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def _count_params(state_dict) -> int:
    seen, total = set(), 0
    for tensor in state_dict.values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel())
        if key not in seen:  # tied weights are stored once
            seen.add(key)
            total += tensor.numel()
    return total


def _requests(train: np.ndarray, inputs: np.ndarray, rng) -> tuple[np.ndarray, list, tuple[int, int], np.ndarray]:
    """Scored windows, causality probes and one twin, split into requests of EVAL_BATCH windows.

    A probe is a scored window whose bytes after a secret cut are replaced by training text (so it
    reads like any other window); the twin is a scored window sent again. A probe or twin never
    shares a request, hence a process, with its source window. Returns (windows, probes as
    (row, source, cut), (twin row, its source), the request each row goes to).
    """
    n = len(inputs)
    n_probes = CAUSALITY_MIN_PROBES + (-(n + 1 + CAUSALITY_MIN_PROBES) % EVAL_BATCH)
    sources = rng.choice(n, size=n_probes + 1, replace=False)
    rows, probes = [inputs], []
    for k, src in enumerate(sources[:-1]):
        cut = int(rng.integers(0, CONTEXT_LEN - 1))
        start = int(rng.integers(0, len(train) - CONTEXT_LEN))
        probe = inputs[src].copy()
        probe[cut + 1 :] = train[start : start + CONTEXT_LEN - cut - 1]
        rows.append(probe[None])
        probes.append((n + k, int(src), cut))
    twin = n + n_probes
    rows.append(inputs[sources[-1]][None])
    windows = np.concatenate(rows)
    family = {n + k: int(src) for k, src in enumerate(sources)}  # derived row -> its source row
    request = np.empty(len(windows), dtype=np.int64)
    request[rng.permutation(len(windows))] = np.arange(len(windows)) // EVAL_BATCH
    free = np.setdiff1d(np.arange(n), sources)  # scored windows with no relative: safe to swap
    for row, src in family.items():
        while request[row] == request[src]:
            other = int(rng.choice(free))
            if request[other] != request[src]:
                request[row], request[other] = request[other], request[row]
    return windows, probes, (twin, int(sources[-1])), request


def evaluate(workdir: Path) -> dict:
    import torch

    started = time.time()
    _harden_self()
    ckpt = workdir / CHECKPOINT
    if not ckpt.is_file():
        raise PrepareError(f"no {CHECKPOINT} in {workdir}; train.py must save one (see prepare.py)")
    train, val, fp = load_corpus()  # read before any child exists; no child ever sees the targets
    windows = eval_windows(val)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    requests, probes, (twin, twin_source), request_of = _requests(train, inputs, rng)

    with tempfile.TemporaryDirectory(prefix="tinygpt-model-") as scratch:
        server = _ModelServer(workdir, Path(scratch))
        try:
            # Loaded while the zygote starts up: weights_only never runs code from the file.
            try:
                checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
                num_params = _count_params(checkpoint["state_dict"])
            except Exception as exc:  # any unreadable checkpoint is the same user-facing problem
                raise PrepareError(f"cannot read {ckpt}: {exc}") from exc
            logits = np.empty((len(requests), CONTEXT_LEN, VOCAB_SIZE), dtype=np.float32)
            for r in rng.permutation(int(request_of.max()) + 1):
                idx = rng.permutation(np.flatnonzero(request_of == r))
                logits[idx] = server.logits(np.ascontiguousarray(requests[idx]))
        finally:
            server.close()  # every model process is dead before any metric is written

    scored = logits[: len(inputs)]
    noise = float(np.abs(_log_softmax(logits[twin]) - _log_softmax(scored[twin_source])).max())
    if noise > MAX_NOISE:
        raise PrepareError(
            f"the same window scored twice gave log-probabilities {noise:.3g} apart "
            f"(allowed {MAX_NOISE:g}); the model must be deterministic in eval mode"
        )
    for row, src, cut in probes:
        probe = _log_softmax(logits[row][: cut + 1])
        base = _log_softmax(scored[src][: cut + 1])
        change = float(np.abs(probe - base).max())
        if change > CAUSALITY_TOL + 10 * noise:
            raise PrepareError(
                f"causality violation: changing tokens after position {cut} changed the outputs "
                f"at positions <= {cut} by {change:.3g} (allowed {CAUSALITY_TOL + 10 * noise:.3g}); "
                "the model must not look at future tokens"
            )
    return {
        "val_bpb": bits_per_byte(scored, targets),
        "corpus_sha256": fp,
        "num_params_M": num_params / 1e6,
        "eval_seconds": time.time() - started,
        "model_sandbox": "; ".join(sorted(server.levels)),
    }


def write_metrics(path: Path, metrics: dict) -> None:
    """Atomically: whatever sits at `path` (a planted link, FIFO or file) is replaced, not written through."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(metrics) + "\n")
    os.replace(tmp, path)


def _main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "prepare"
    try:
        if command == "prepare":
            train, val, fp = load_corpus()
            print(f"corpus_sha256: {fp}")
            print(f"corpus_path:   {corpus_path()}")
            print(f"train_bytes:   {len(train)}")
            print(f"val_bytes:     {len(val)}")
            print(f"eval_bytes:    {EVAL_TOKENS}")
        elif command == "evaluate":
            metrics = evaluate(Path.cwd())
            out = os.environ.get("OUROBOROS_METRICS")
            if out:
                write_metrics(Path(out), metrics)
            else:
                print(json.dumps(metrics))
            print(f"val_bpb: {metrics['val_bpb']:.6f}")
        elif command == "zygote":
            zygote(Path(argv[2]), int(argv[3]), float(argv[4]))
        else:
            raise PrepareError(f"unknown command {command!r}; use: prepare.py [evaluate]")
    except PrepareError as exc:
        print(f"prepare.py {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
