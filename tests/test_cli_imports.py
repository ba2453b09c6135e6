"""`ouroboros --help`, `status` and `log` start without the heavy modules (the numbers: bench/cli_speed.py)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["optuna", "numpy", "fastapi", "matplotlib", "openai", "psutil", "pydantic", "rich.console",
         "ouroboros.loop", "ouroboros.agents"]


def test_importing_the_cli_loads_no_heavy_module() -> None:
    code = ("import json, sys, ouroboros.cli; "
            "print(json.dumps([m for m in sys.modules if type(sys.modules[m]).__name__ != '_LazyModule']))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert "ouroboros.cli" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_lists_the_commands_without_loading_the_loop() -> None:
    code = ("import json, sys, ouroboros.cli\n"
            "sys.argv = ['ouroboros', '--help']\n"
            "try:\n    ouroboros.cli.main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps([m for m in sys.modules if type(sys.modules[m]).__name__ != '_LazyModule']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *help_lines, last = proc.stdout.strip().splitlines()
    assert all(cmd in "\n".join(help_lines) for cmd in ("run", "exp", "log", "status", "report", "cheats"))
    assert not set(json.loads(last)) & {"optuna", "numpy", "ouroboros.loop", "ouroboros.agents"}


def test_status_and_log_read_the_records_without_the_loops_modules(tmp_path) -> None:
    from ouroboros.ledger import Experiment, Ledger, Run
    from ouroboros.scaffold import from_template

    task = from_template(tmp_path / "quadratic", "quadratic")
    ledger = Ledger(task / ".ouroboros")
    ledger.save_run(Run(tag="t", metric="loss"))
    ledger.finish(Experiment("t", 0, commit_sha="a" * 40, status="keep", metric=1.0))
    code = ("import io, json, sys, ouroboros.cli\n"
            f"for command in ('status', 'log'):\n    sys.argv = ['ouroboros', command, '-C', {str(task)!r}]\n"
            "    try:\n        ouroboros.cli.main()\n    except SystemExit:\n        pass\n"
            "print(json.dumps([m for m in sys.modules if type(sys.modules[m]).__name__ != '_LazyModule']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *shown, last = proc.stdout.strip().splitlines()
    assert any(line.startswith("t\t") for line in shown) and any(line.startswith("0\t") for line in shown), shown
    loaded = set(json.loads(last))
    assert not loaded & {"optuna", "numpy", "psutil", "ouroboros.loop", "ouroboros.agents", "ouroboros.sandbox",
                         "ouroboros.isolation", "ouroboros.workspace", "rich.table", "rich.live"}, loaded
