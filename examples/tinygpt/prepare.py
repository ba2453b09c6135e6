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
    python prepare.py serve       internal: the model server the evaluator spawns

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

What `evaluate` protects against:
  - forged metrics: the run's own output is ignored; the score comes from the checkpoint alone;
  - an edited scorer: cross-entropy and bits per byte are computed in this (pristine) process;
    the editable model code runs only in a child process (`serve`) behind a pipe;
  - reading the answer: the child receives input windows, never their targets, and gets no
    environment variable that points to the data;
  - looking ahead: windows whose future tokens were altered are mixed, in a secret random order,
    into the scored ones; if outputs at earlier positions change, the model is not causal and
    the evaluation fails;
  - hiding a leak in noise: one window is scored twice, and outputs that differ by more than
    MAX_NOISE fail the evaluation;
  - broken outputs: wrong shape or non-finite logits fail the evaluation.
What it does not protect against:
  - the child is not sandboxed: it can read the filesystem, including the cache and the standard
    library the default corpus is built from, so a model could look the validation text up.
    Filesystem isolation is the sandbox's job (sandbox.py), and the guard should reject
    train.py changes that read data files;
  - a model that detects the causality probes (a repeated prefix) and behaves only then, or
    that leaks less than the tolerance (CAUSALITY_TOL plus 10x its own noise, at most ~1e-2);
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
import struct
import subprocess
import sys
import sysconfig
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
EVAL_BATCH = 16  # windows per request to the model server
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


# --- the model server (child process; runs editable code) ---------------------------------------
# Wire format, little-endian. Request: uint32 B, uint32 T, then B*T bytes of tokens; B == 0 ends.
# Reply: uint32 B, uint32 T, uint32 V, then B*T*V float32 logits.


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"expected {n} bytes, got {len(data)}")
    return data


def serve() -> None:
    # Editable code may print; keep the protocol on a private copy of stdout.
    wire_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    wire_in = sys.stdin.buffer
    sys.path.insert(0, os.getcwd())
    import torch
    import train  # editable code, imported only in this child

    device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    model = train.build_model(checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    while True:
        batch, length = struct.unpack("<II", _read_exact(wire_in, 8))
        if batch == 0:
            return
        tokens = np.frombuffer(_read_exact(wire_in, batch * length), dtype=np.uint8)
        x = torch.from_numpy(tokens.astype(np.int64).reshape(batch, length)).to(device)
        with torch.no_grad():
            logits = model(x).float().cpu().numpy().astype(np.float32)
        shape = (list(logits.shape) + [0, 0, 0])[:3]
        wire_out.write(struct.pack("<III", *shape))
        if logits.ndim == 3:  # otherwise the parent rejects the shape and stops reading
            wire_out.write(logits.tobytes())
        wire_out.flush()


# --- the evaluator (parent process; never imports train) ----------------------------------------


class _ModelServer:
    def __init__(self, workdir: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DATA_ENV_PREFIXES)}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"],
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        batch, length = tokens.shape
        try:
            self.proc.stdin.write(struct.pack("<II", batch, length) + tokens.tobytes())
            self.proc.stdin.flush()
            shape = struct.unpack("<III", _read_exact(self.proc.stdout, 12))
            if shape != (batch, length, VOCAB_SIZE):
                raise PrepareError(
                    f"model returned logits of shape {shape} for input {(batch, length)}; "
                    f"expected {(batch, length, VOCAB_SIZE)}"
                )
            raw = _read_exact(self.proc.stdout, batch * length * VOCAB_SIZE * 4)
        except (EOFError, BrokenPipeError) as exc:
            code = self.proc.wait()
            raise PrepareError(
                f"model server exited with code {code} (see its traceback above); "
                "check build_model() in train.py and the checkpoint contract in prepare.py"
            ) from exc
        out = np.frombuffer(raw, dtype=np.float32).reshape(batch, length, VOCAB_SIZE)
        if not np.isfinite(out).all():
            raise PrepareError("model returned non-finite logits (nan or inf)")
        return out

    def close(self) -> None:
        try:
            self.proc.stdin.write(struct.pack("<II", 0, 0))
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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


def evaluate(workdir: Path) -> dict:
    import torch

    started = time.time()
    ckpt = workdir / CHECKPOINT
    if not ckpt.is_file():
        raise PrepareError(f"no {CHECKPOINT} in {workdir}; train.py must save one (see prepare.py)")
    _, val, fp = load_corpus()  # read before the child exists; the child never sees it
    windows = eval_windows(val)
    inputs, targets = windows[:, :-1], windows[:, 1:]

    # Causality probes: copies of scored windows with everything after a cut replaced.
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    probes, cuts, sources = [], [], []
    # Fill every request to EVAL_BATCH windows: equal shapes keep a causal model's outputs
    # bit-identical across requests, and the probes cost no extra request.
    n_probes = CAUSALITY_MIN_PROBES + (-(len(inputs) + 1 + CAUSALITY_MIN_PROBES) % EVAL_BATCH)
    for i in rng.choice(len(inputs), size=n_probes, replace=False):
        cut = int(rng.integers(0, CONTEXT_LEN - 1))
        probe = inputs[i].copy()
        probe[cut + 1 :] = rng.integers(0, VOCAB_SIZE, size=CONTEXT_LEN - cut - 1, dtype=np.uint8)
        probes.append(probe)
        cuts.append(cut)
        sources.append(int(i))
    # A scored window sent twice measures the model's own run-to-run noise.
    twin = int(rng.integers(len(inputs)))
    requests = np.concatenate([inputs, np.stack(probes), inputs[twin : twin + 1]])
    order = rng.permutation(len(requests))  # the child cannot tell probes by position

    server = _ModelServer(workdir)
    try:
        # Loaded while the child starts up: weights_only never runs code from the file.
        try:
            checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
            num_params = _count_params(checkpoint["state_dict"])
        except Exception as exc:  # any unreadable checkpoint is the same user-facing problem
            raise PrepareError(f"cannot read {ckpt}: {exc}") from exc
        logits = np.empty((len(requests), CONTEXT_LEN, VOCAB_SIZE), dtype=np.float32)
        for i in range(0, len(order), EVAL_BATCH):
            idx = order[i : i + EVAL_BATCH]
            logits[idx] = server.logits(np.ascontiguousarray(requests[idx]))
    finally:
        server.close()

    scored = logits[: len(inputs)]
    noise = float(np.abs(_log_softmax(logits[-1]) - _log_softmax(scored[twin])).max())
    if noise > MAX_NOISE:
        raise PrepareError(
            f"the same window scored twice gave log-probabilities {noise:.3g} apart "
            f"(allowed {MAX_NOISE:g}); the model must be deterministic in eval mode"
        )
    for k, (src, cut) in enumerate(zip(sources, cuts, strict=True)):
        probe = _log_softmax(logits[len(inputs) + k][: cut + 1])
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
    }


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
                Path(out).write_text(json.dumps(metrics) + "\n")
            else:
                print(json.dumps(metrics))
            print(f"val_bpb: {metrics['val_bpb']:.6f}")
        elif command == "serve":
            serve()
        else:
            raise PrepareError(f"unknown command {command!r}; use: prepare.py [evaluate]")
    except PrepareError as exc:
        print(f"prepare.py {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
