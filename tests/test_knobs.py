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


def test_extract_finds_top_level_all_caps_constants_only(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SOURCE)
    found = {k.name: k.value for k in knobs.extract(tmp_path, ["train.py"])}
    assert found == {"LEARNING_RATE": 3e-4, "DEPTH": 4, "USE_BIAS": True, "ACT": "gelu", "OFFSET": -2,
                     "TUPLE[0]": 1, "TUPLE[1]": 2}


def test_rewrite_changes_only_the_literals() -> None:
    out = knobs.rewrite(SOURCE, {"LEARNING_RATE": 0.001, "DEPTH": 6, "USE_BIAS": False, "ACT": "relu", "OFFSET": 3})
    expected = (SOURCE.replace("3e-4", "1e-3").replace("DEPTH: int = 4", "DEPTH: int = 6")
                .replace("True", "False").replace('"gelu"', '"relu"').replace("-2", "3"))
    assert out == expected


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False))
def test_rewrite_then_extract_gives_the_value_back(value: float) -> None:
    out = knobs.rewrite("# head\nLR = 0.1  # tail\n", {"LR": value})
    assert out.startswith("# head\nLR = ") and out.endswith("  # tail\n")
    written = float(out.split("=")[1].split("#")[0])
    assert written == value  # never rounded


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


# -- autoresearch's train.py: expressions, tuples, style, constraints ------------------------------
AUTORESEARCH = '''"""A stand-in with autoresearch's top-level constants."""
import math

ASPECT_RATIO = 64
HEAD_DIM = 128
WINDOW_PATTERN = "SSSL"
TOTAL_BATCH_SIZE = 2**19
EMBEDDING_LR = 0.6
ADAM_BETAS = (0.8, 0.95)
DEPTH = 8
DEVICE_BATCH_SIZE = 128
H100_BF16_PEAK_FLOPS = 989.5e12
MAX_SEQ = 8 * 1024
STEPS = 1_000_000
NEG = -0.5
LOG_EVERY = print
SCALE = math.sqrt(2)

assert TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * 2048) == 0
'''


def _ar_task(tmp_path: Path, knobs_toml: str = ""):
    from ouroboros.task import load_task

    (tmp_path / "train.py").write_text(AUTORESEARCH)
    (tmp_path / "program.md").write_text("tune\n")
    (tmp_path / "ouroboros.toml").write_text(
        '[task]\nname = "ar"\neditable = ["train.py"]\nrun = "python train.py"\n[metric]\nname = "val_bpb"\n'
        + knobs_toml)
    return load_task(tmp_path)


def test_expressions_and_tuples_are_knobs(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AUTORESEARCH)
    found = {k.name: k.value for k in knobs.extract(tmp_path, ["train.py"])}
    assert found["TOTAL_BATCH_SIZE"] == 2**19 and found["MAX_SEQ"] == 8192
    assert found["ADAM_BETAS[0]"] == 0.8 and found["ADAM_BETAS[1]"] == 0.95
    assert "LOG_EVERY" not in found and "SCALE" not in found


def test_writing_a_knobs_own_value_changes_no_byte(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AUTORESEARCH)
    same = {k.name: k.value for k in knobs.extract(tmp_path, ["train.py"])}
    assert knobs.rewrite(AUTORESEARCH, same) == AUTORESEARCH


def test_rewrite_keeps_the_literal_style() -> None:
    out = knobs.rewrite(AUTORESEARCH, {"TOTAL_BATCH_SIZE": 2**20, "MAX_SEQ": 4096, "ADAM_BETAS[1]": 0.99,
                                       "H100_BF16_PEAK_FLOPS": 1.5e15, "WINDOW_PATTERN": "SL", "STEPS": 2_000_000,
                                       "NEG": -0.25, "EMBEDDING_LR": 0.123456789012345, "DEVICE_BATCH_SIZE": 100})
    assert "TOTAL_BATCH_SIZE = 2**20\n" in out and "MAX_SEQ = 4 * 1024\n" in out
    assert "ADAM_BETAS = (0.8, 0.99)\n" in out and "H100_BF16_PEAK_FLOPS = 1.5e15\n" in out
    assert 'WINDOW_PATTERN = "SL"\n' in out and "STEPS = 2_000_000\n" in out and "NEG = -0.25\n" in out
    assert "EMBEDDING_LR = 0.123456789012345\n" in out and "DEVICE_BATCH_SIZE = 100\n" in out
    assert knobs.rewrite(AUTORESEARCH, {"TOTAL_BATCH_SIZE": 3 * 2**18}).count("TOTAL_BATCH_SIZE = 786432\n") == 1


@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False))
def test_exponent_notation_stays_and_is_exact(value: float) -> None:
    out = knobs.rewrite("PEAK = 989.5e12\n", {"PEAK": value})
    text = out.split("=")[1].strip()
    assert "e" in text and float(text) == value


def test_powers_of_two_stay_powers_of_two(tmp_path: Path) -> None:
    task = _ar_task(tmp_path)
    sp = knobs.space_of(task)
    assert sp.dists["TOTAL_BATCH_SIZE"] == CategoricalDistribution([2**17, 2**18, 2**19, 2**20, 2**21])
    assert sp.dists["DEVICE_BATCH_SIZE"] == CategoricalDistribution([32, 64, 128, 256, 512])
    assert isinstance(sp.dists["ADAM_BETAS[1]"], FloatDistribution)


def test_reporting_constants_are_not_searched_and_say_why(tmp_path: Path) -> None:
    task = _ar_task(tmp_path, '[knobs]\nexclude = ["DEPTH", "ADAM_*"]\n')
    sp = knobs.space_of(task)
    why = {s.name: s.why for s in sp.skipped}
    assert "H100_BF16_PEAK_FLOPS" not in sp.dists and "PEAK" in why["H100_BF16_PEAK_FLOPS"]
    assert "DEPTH" not in sp.dists and "exclude" in why["DEPTH"] and "exclude" in why["ADAM_BETAS[0]"]
    assert "not a constant" in why["LOG_EVERY"] and "not a constant" in why["SCALE"]
    assert "choices" in why["WINDOW_PATTERN"]
    searched = _ar_task(tmp_path, "[knobs.H100_BF16_PEAK_FLOPS]\nlow = 1e14\nhigh = 1e15\n")
    assert "H100_BF16_PEAK_FLOPS" in knobs.space_of(searched).dists  # an explicit table searches it


def test_constraints_are_evaluated_over_knob_values(tmp_path: Path) -> None:
    task = _ar_task(tmp_path, '[knobs]\nconstraints = ["TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * 2048) == 0"]\n')
    sp = knobs.space_of(task)
    assert sp.violated({}) == []
    assert sp.violated({"TOTAL_BATCH_SIZE": 2**17}) == ["TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * 2048) == 0"]
    assert sp.violated({"TOTAL_BATCH_SIZE": 2**17, "DEVICE_BATCH_SIZE": 64}) == []


@pytest.mark.parametrize(("constraint", "message"), [
    ("__import__('os').system('true')", "names __import__"),
    ("TOTAL_BATCH_SIZE.bit_length() > 1", "do not allow"),
    ("NO_SUCH_KNOB > 1", "NO_SUCH_KNOB"),
    ("TOTAL_BATCH_SIZE >", "not a Python expression"),
    ("TOTAL_BATCH_SIZE < 2", "baseline"),
])
def test_bad_constraints_are_one_line_errors(tmp_path: Path, constraint: str, message: str) -> None:
    task = _ar_task(tmp_path, f"[knobs]\nconstraints = [{constraint!r}]\n".replace("\'", "'"))
    with pytest.raises(OuroborosError, match=message):
        knobs.space_of(task)


def test_huge_powers_are_not_evaluated() -> None:
    assert knobs.rewrite("X = 10**10**10\n", {"X": 1}) == "X = 10**10**10\n"


def test_a_source_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_bytes(b"LR = 0.1  # \xe9\n")
    with pytest.raises(OuroborosError, match=r"train.py is not UTF-8 \(byte 12\)"):
        knobs.extract(tmp_path, ["train.py"])
