"""policy.py (the self task's editable file) is read as data: parsed, never run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import ouroboros
from ouroboros import policyfile
from ouroboros.errors import OuroborosError

SHIPPED = Path(ouroboros.__file__).parent / "policy.py"


def test_the_shipped_policy_reads_as_plain_settings():
    values = policyfile.read(SHIPPED)
    assert set(values) == set(policyfile.SETTINGS)
    assert isinstance(values["MUTATE_KNOBS"], int) and 0.0 <= values["EXPLORE"] <= 1.0


@pytest.mark.parametrize("tail, message", [
    ("\n__import__('atexit').register(print)\n", r"line \d+: a Expr statement; the policy file is read as data"),
    ("\ndef f():\n    pass\n", r"line \d+: a FunctionDef statement"),
    ("\nimport os\n", r"line \d+: a Import statement"),
    ("\nEXPLORE = __import__('os').getpid()\n", r"EXPLORE must be a literal float in \[0, 1\]"),
    ("\nMUTATE_KNOBS = 1.5\n", r"MUTATE_KNOBS must be a literal int in \[1, 1000\], not 1.5"),
    ("\nFOO = 1\n", r"unknown setting 'FOO'"),
    ("\nSTARTUP = 2\n", r"STARTUP is set twice"),
    ("\nMUTATE_KNOBS = (\n", r"is not valid Python"),
])
def test_anything_but_literal_settings_is_refused_with_the_line(tmp_path, tail, message):
    path = tmp_path / "policy.py"
    path.write_text(SHIPPED.read_text() + tail)
    with pytest.raises(OuroborosError, match=message):
        policyfile.read(path)


def test_a_setting_out_of_range_or_missing_is_refused(tmp_path):
    path = tmp_path / "policy.py"
    path.write_text(SHIPPED.read_text().replace("EXPLORE = 0.2", "EXPLORE = 1.5"))
    with pytest.raises(OuroborosError, match=r"EXPLORE must be a literal float in \[0, 1\], not 1.5"):
        policyfile.read(path)
    path.write_text("'''doc'''\nEXPLORE = 0.1\n")
    with pytest.raises(OuroborosError, match="does not set MUTATE_KNOBS, MUTATE_SCALE, STARTUP"):
        policyfile.read(path)


def test_the_harness_never_runs_the_policy_file(tmp_path, monkeypatch):
    """A policy file with code: the proposer refuses it, and the code never ran."""
    from ouroboros.agents.policy import PolicyAgent

    path = tmp_path / "policy.py"
    shutil.copy(SHIPPED, path)
    marker = tmp_path / "ran"
    path.write_text(path.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")
    monkeypatch.setattr(policyfile, "FILE", path)
    monkeypatch.setattr(policyfile.values, "__defaults__", (path,))
    with pytest.raises(OuroborosError, match="the policy file is read as data"):
        PolicyAgent().start(None)  # type: ignore[arg-type]  # refused before the context is used
    assert not marker.exists()
