"""Non-causal attention in tinygpt: the isolated evaluator's causality probe fails the experiment."""

from __future__ import annotations

import pytest

from ouroboros import cheats

pytest.importorskip("torch", reason="the tinygpt example needs torch")


@pytest.mark.slow
def test_noncausal_attention_is_never_kept(tmp_path):
    result = cheats.run_attack(cheats.BY_NAME["tinygpt-noncausal"], tmp_path / "attack")
    assert result.verdict in cheats.FAILED, f"ended as {result.verdict}: {result.reason}"
    assert "causal" in result.caught_by
    assert result.leftovers == []
