"""serve-model's cache of the dequantized weights (llm_server.load): written once beside the GGUF,
keyed by its sha256, complete or absent, read instead of the GGUF on later starts, rebuilt when it
does not load. A tiny random Qwen2 model stands in for the real one (no model file, seconds)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from ouroboros import llm_server  # noqa: E402
from ouroboros.model import sha256_of  # noqa: E402


def tiny():
    """A 2-layer Qwen2 with random weights and a one-letter-per-token Qwen2 tokenizer with a chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg).eval()
    letters = "abcdefghijklmnopqrstuvwxyz0123456789Ġ"  # Ġ: the byte-level tokenizers' space
    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(letters)} | {"<|endoftext|>": len(letters)}, merges=[])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok, model


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file; reading it "from GGUF" gives the tiny model and is counted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF stand-in")
    reads = []
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained
    made = tiny()

    def model_from(where, *a, gguf_file=None, **kw):
        if gguf_file is not None:
            reads.append("model")
            return made[1]
        return real_model(where, *a, **kw)

    def tok_from(where, *a, gguf_file=None, **kw):
        if gguf_file is not None:
            reads.append("tokenizer")
            return made[0]
        return real_tok(where, *a, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tok_from)
    return path, reads, made


def test_the_first_load_saves_a_cache_the_next_load_reads_with_the_same_weights(gguf):
    path, reads, (tok, model) = gguf
    said: list[str] = []
    _, _, source = llm_server.load(path, said.append)
    cache = llm_server.cache_for(path, sha256_of(path))
    assert source == str(path) and reads == ["tokenizer", "model"]
    assert cache.name == f"m.gguf.{sha256_of(path)[:16]}.f32" and cache.parent == path.parent
    assert any("saved the dequantized weights" in s for s in said)
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left

    tok2, model2, source2 = llm_server.load(path, said.append)
    assert source2 == str(cache) and reads == ["tokenizer", "model"]  # the GGUF was not read again
    for name, t in model.state_dict().items():
        assert torch.equal(t, model2.state_dict()[name]), name
    assert tok2.chat_template == tok.chat_template  # the GGUF's chat template travels with the cache
    assert tok2("ab c")["input_ids"] == tok("ab c")["input_ids"] == [0, 1, 36, 2]


def test_a_cache_of_another_file_or_an_unfinished_one_is_not_used(gguf):
    path, reads, _ = gguf
    llm_server.load(path, lambda s: None)
    cache = llm_server.cache_for(path, sha256_of(path))
    assert llm_server.cache_valid(cache, sha256_of(path))
    assert not llm_server.cache_valid(cache, "0" * 64)  # the stamp names the GGUF it came from
    path.write_bytes(b"another GGUF")  # another file: another key, so the GGUF is read again
    llm_server.load(path, lambda s: None)
    assert reads.count("model") == 2
    (cache / "ouroboros-cache.json").unlink()  # what a save killed before its rename would lack
    assert not llm_server.cache_valid(cache, sha256_of(path))


def test_a_cache_that_does_not_load_is_rebuilt_from_the_gguf(gguf):
    path, reads, _ = gguf
    llm_server.load(path, lambda s: None)
    cache = llm_server.cache_for(path, sha256_of(path))
    (cache / "model.safetensors").write_bytes(b"\0garbage")
    said: list[str] = []
    _, model, source = llm_server.load(path, said.append)
    assert source == str(path) and reads.count("model") == 2
    assert any("does not load" in s and "rebuilding it" in s for s in said)
    _, _, source = llm_server.load(path, said.append)
    assert source == str(cache) and reads.count("model") == 2  # rebuilt, and read from now on


def test_a_cache_that_cannot_be_written_leaves_the_model_served_and_no_half_cache(gguf, monkeypatch):
    import safetensors.torch

    path, _, _ = gguf

    def disk_full(model, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", disk_full)
    said: list[str] = []
    _, model, source = llm_server.load(path, said.append)
    assert source == str(path) and model is not None
    assert any("could not save the dequantized weights" in s and "No space left" in s for s in said)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.gguf"]  # nothing half-written stays
