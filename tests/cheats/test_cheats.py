"""One test per attack on the bound: each ends as violation, crash or timeout, caught by the
defence it targets, with no process left running and no file written outside the task.

The attacks live in `ouroboros.cheats` (so that `ouroboros cheats` runs the same suite); each one
wins with a keep where its defence is missing, so these tests cannot pass by accident.
"""

from __future__ import annotations

import re

import pytest

from ouroboros import cheats
from ouroboros.isolation import LEVELS, available

LEVEL = next(level for level in LEVELS if available(level))
QUADRATIC = [a for a in cheats.ATTACKS if a.template == "quadratic"]


@pytest.mark.parametrize("attack", QUADRATIC, ids=[a.name for a in QUADRATIC])
def test_attack_is_stopped(attack: cheats.Attack, tmp_path):
    if LEVEL not in attack.stopped_at:
        pytest.skip(f"isolation here is {LEVEL!r}, which does not stop '{attack.title}' "
                    f"(needs {' or '.join(attack.stopped_at)})")
    result = cheats.run_attack(attack, tmp_path / "attack")
    assert result.isolation in ("", LEVEL)  # "" when the guard stopped it before any run
    assert result.verdict in cheats.FAILED, f"{attack.name} ended as {result.verdict}: {result.reason}"
    assert re.search(attack.expect, result.caught_by), result.caught_by
    assert result.leftovers == []
    assert result.effects == []


@pytest.mark.parametrize("name", ["network", "read-hidden", "steal-secret", "write-outside", "cache-carry"])
def test_isolation_attacks_win_without_isolation(name: str, tmp_path):
    """The run-time attacks are real: at level `process` (no namespaces) they get their keep."""
    result = cheats.run_attack(cheats.BY_NAME[name], tmp_path / "attack", isolation="process")
    assert result.verdict == "keep"
    assert result.effects  # and they leave their mark: a connection, a forged ledger, ...


def test_forged_records_at_level_process_are_a_violation_but_leave_their_mark(tmp_path):
    """At level process the run reaches the records: the guard sees its results.tsv written after the phase (a
    violation), but the ledger rows it rewrote stay rewritten (the chain shows them; docs/security.md)."""
    result = cheats.run_attack(cheats.BY_NAME["forge-records"], tmp_path / "attack", isolation="process")
    assert result.verdict == "violation" and "results.tsv" in result.reason, (result.verdict, result.reason)
    assert result.effects


def test_table_lists_every_attack_with_its_verdict(tmp_path):
    attack = cheats.BY_NAME["raise-budget"]
    result = cheats.run_attack(attack, tmp_path / "attack")
    table = cheats.table([result])
    assert "raise the budget in ouroboros.toml" in table
    assert "violation" in table and "guard: protected file ouroboros.toml" in table


UNSHARE_CLAIMED = [a for a in QUADRATIC if "unshare" in a.stopped_at and "process" not in a.stopped_at]


@pytest.mark.skipif(not available("unshare"), reason="unshare does not work here")
@pytest.mark.parametrize("attack", UNSHARE_CLAIMED, ids=[a.name for a in UNSHARE_CLAIMED])
def test_attack_is_stopped_at_unshare_too(attack: cheats.Attack, tmp_path):
    """What level unshare claims to stop (its mount namespace has bwrap's view), checked there, not only at the
    strongest level this machine has."""
    result = cheats.run_attack(attack, tmp_path / "attack", isolation="unshare")
    assert result.isolation in ("", "unshare")
    assert result.verdict in cheats.FAILED, f"{attack.name} ended as {result.verdict}: {result.reason}"
    assert result.leftovers == [] and result.effects == [], (result.leftovers, result.effects)
