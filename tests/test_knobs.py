"""Knobs: extraction, in-place rewriting and inferred ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ouroboros import knobs
from ouroboros.errors import OuroborosError
from ouroboros.task import KnobSpec

SOURCE = '''"""doc"""
import math

LEARNING_RATE = 3e-4  # the step size
DEPTH: int = 4
USE_BIAS = True
ACT = "gelu"
OFFSET = -2
lower_case = 5
NOT_LITERAL = math.pi
TUPLE = (1, 2)


def f():
    INNER = 3
    return INNER
'''


def test_extract_finds_top_level_all_caps_literals_only(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SOURCE)
    found = {k.name: k.value for k in knobs.extract(tmp_path, ["train.py"])}
    assert found == {"LEARNING_RATE": 3e-4, "DEPTH": 4, "USE_BIAS": True, "ACT": "gelu", "OFFSET": -2}


def test_rewrite_changes_only_the_literals() -> None:
    out = knobs.rewrite(SOURCE, {"LEARNING_RATE": 0.001, "DEPTH": 6, "USE_BIAS": False, "ACT": "relu", "OFFSET": 3})
    expected = (SOURCE.replace("3e-4", "0.001").replace("DEPTH: int = 4", "DEPTH: int = 6")
                .replace("True", "False").replace('"gelu"', "'relu'").replace("-2", "3"))
    assert out == expected


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False))
def test_rewrite_then_extract_gives_the_value_back(value: float) -> None:
    out = knobs.rewrite("# head\nLR = 0.1  # tail\n", {"LR": value})
    assert out.startswith("# head\nLR = ") and out.endswith("  # tail\n")
    written = float(out.split("=")[1].split("#")[0])
    assert written == pytest.approx(value, rel=1e-3)


def test_rewrite_keeps_unicode_and_other_lines() -> None:
    src = "# café ✓\nX = 1  # naïve\nY = 2\n"
    assert knobs.rewrite(src, {"X": 5}) == "# café ✓\nX = 5  # naïve\nY = 2\n"


def _knob(value):
    return knobs.Knob("K", "f.py", "K", value, 1)


def test_inferred_ranges() -> None:
    lr = knobs.infer(_knob(3e-4))
    assert isinstance(lr, FloatDistribution) and lr.log and lr.low == pytest.approx(7.5e-5) and lr.high == pytest.approx(1.2e-3)
    frac = knobs.infer(_knob(0.5))
    assert isinstance(frac, FloatDistribution) and frac.high == 1.0  # a fraction stays below 1
    depth = knobs.infer(_knob(8))
    assert isinstance(depth, IntDistribution) and (depth.low, depth.high, depth.log) == (2, 32, True)
    assert isinstance(knobs.infer(_knob(True)), CategoricalDistribution)
    assert knobs.infer(_knob("gelu")) is None  # strings need choices
    assert knobs.infer(_knob(0)) == IntDistribution(0, 4)


def test_overrides_win() -> None:
    assert knobs.infer(_knob("gelu"), KnobSpec(choices=["gelu", "relu"])) == CategoricalDistribution(["gelu", "relu"])
    assert knobs.infer(_knob(4), KnobSpec(low=1, high=12)) == IntDistribution(1, 12)
    assert knobs.infer(_knob(0.1), KnobSpec(low=0.0, high=0.3)) == FloatDistribution(0.0, 0.3)


def test_unknown_override_is_an_error(quadratic: Path) -> None:
    from ouroboros.task import load_task

    toml = quadratic / "ouroboros.toml"
    toml.write_text(toml.read_text() + "\nMOMENTOM = { low = 0.0, high = 1.0 }\n")
    with pytest.raises(OuroborosError, match="MOMENTOM"):
        knobs.space(load_task(quadratic))


def test_apply_writes_values_into_files(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SOURCE)
    found = knobs.extract(tmp_path, ["train.py"])
    knobs.apply(tmp_path, found, {"DEPTH": 9})
    assert "DEPTH: int = 9" in (tmp_path / "train.py").read_text()
