"""A newcomer's first hour: every dead end prints one line that says what to do, and doing it works."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from ouroboros import views
from ouroboros.ledger import Experiment
from ouroboros.testing import cli, commit_all

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

BLOCK = """
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Missing())
sys.argv = ["ouroboros", *{args!r}]
from ouroboros.cli import main
main()
"""


def cli_without(modules: set[str], *args: str) -> subprocess.CompletedProcess:
    """The CLI in a Python where these modules cannot be imported (an extra not installed)."""
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=modules, args=list(args))],
                          capture_output=True, text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def hinted_extra(text: str) -> str:
    m = re.search(r"pip install 'ouroboros\[(\w+)\]'", text)
    assert m, f"no install line naming an extra in: {text}"
    return m.group(1)


def provides(extra: str, module: str) -> bool:
    return any(re.split(r"[<>=\[ ]", req)[0] == module for req in EXTRAS[extra])


def test_the_api_agents_install_hint_keeps_its_extra(quadratic: Path) -> None:
    line = one_line(cli_without({"openai"}, "run", "-C", str(quadratic), "--agent", "api:m", "-n", "1"))
    assert provides(hinted_extra(line), "openai")


def test_report_without_the_report_extra_prints_its_install_line(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "--agent", "random", "-n", "1", "--tag", "r", check=True)
    line = one_line(cli_without({"matplotlib"}, "report", "-C", str(quadratic), "--run", "r"))
    assert provides(hinted_extra(line), "matplotlib")


def test_report_run_writes_into_the_runs_folder_by_default(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "--agent", "random", "-n", "1", "--tag", "r", check=True)
    out = cli("report", "-C", str(quadratic), "--run", "r", check=True).stdout
    assert (quadratic / ".ouroboros/runs/r/report/index.html").is_file() and "runs/r/report" in out


def test_tinygpt_without_torch_prints_the_install_line(tmp_path: Path) -> None:
    proc = cli_without({"torch"}, "init", str(tmp_path / "tg"), "--template", "tinygpt")
    assert proc.returncode == 0, proc.stderr
    assert provides(hinted_extra(proc.stdout), "torch")


def test_missing_task_file_hint_suggests_a_command_that_works(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    (repo / "train.py").write_text("X = 2.0\nprint('loss:', (X - 1) ** 2)\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    commit_all(repo, "mine")
    line = one_line(cli("run", "-C", str(repo), "-n", "1"))
    suggested = re.search(r"`(ouroboros init [^`]+)`", line).group(1)
    filled = suggested.replace("FILE", "train.py").replace("'CMD'", "'python train.py'").replace("NAME", "loss")
    cli(*shlex.split(filled)[1:], check=True)
    proc = cli("run", "-C", str(repo), "--agent", "random", "-n", "1", "--tag", "t", check=True)
    assert "done: 1 experiments" in proc.stdout
    assert "loss" in (repo / "program.md").read_text()


def test_init_on_an_existing_folder_suggests_describing_it(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    (repo / "train.py").write_text("LR = 0.5\nprint('acc:', 1 - abs(LR - 0.3))\n")
    (repo / "eval.py").write_text("# fixed\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    commit_all(repo, "mine")
    line = one_line(cli("init", str(repo), "--template", "quadratic"))
    assert "--editable FILE --run 'COMMAND' --metric NAME" in line
    cli("init", str(repo), "--editable", "train.py", "--protected", "eval.py", "--run", "python train.py",
        "--metric", "acc", "--direction", "maximize", check=True)
    toml = tomllib.loads((repo / "ouroboros.toml").read_text())
    assert toml["task"]["protected"] == ["eval.py"] and toml["metric"] == {"name": "acc", "direction": "maximize"}
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == ""
    cli("run", "-C", str(repo), "--agent", "random", "-n", "1", check=True)
    missing = one_line(cli("init", str(tmp_path / "other"), "--editable", "train.py"))
    assert "--run 'COMMAND' --metric NAME" in missing


def test_a_baseline_crash_prints_its_cause(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    (repo / "train.py").write_text("import no_such_torch_module\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    commit_all(repo, "mine")
    cli("init", "--here", "--editable", "train.py", "--run", "python train.py", "--metric", "loss", cwd=repo,
        check=True)
    line = one_line(cli("run", "-C", str(repo), "--agent", "random", "-n", "1"))
    assert "No module named 'no_such_torch_module'" in line and "install no_such_torch_module" in line


def test_the_summary_keeps_a_commit_hash_that_starts_with_a_letter() -> None:
    console = Console(record=True, width=300, force_terminal=False)
    task = SimpleNamespace(metric=SimpleNamespace(name="loss"))
    base = Experiment("t", 0, commit_sha="0123456789", metric=2.0, status="keep")
    best = Experiment("t", 1, commit_sha="abcdef0123", metric=1.0, status="keep")
    ledger = SimpleNamespace(run_dir=lambda tag: Path("/r"), records=Path("/r"))
    loop = SimpleNamespace(finished=[base, best], best=best, ledger=ledger, tag="t",
                           run_rec=SimpleNamespace(branch="ouroboros/t"))
    views.Live(console, task).summary(loop)  # type: ignore[arg-type]
    assert "[abcdef0]" in console.export_text()


def test_the_progress_line_shows_time_the_last_metric_line_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("compiling\nstep 00010 | loss: 3.2100 | dt: 120ms\nsaving [bold]x[/]\n")
    line = views.progress_line("7", log, 42.4, 300)
    assert line.startswith("experiment 7: 42/300 s") and "step 00010 | loss: 3.2100" in line and str(log) in line
    assert views.progress_line("7", tmp_path / "none.log", 0, 300).endswith(f"(log: {tmp_path / 'none.log'})")


def test_piped_log_and_status_print_one_row_per_line(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "--agent", "random", "-n", "3", "--tag", "p", check=True)
    lines = cli("log", "-C", str(quadratic), "--run", "p", check=True).stdout.splitlines()
    assert len(lines) == 1 + 4 and all(line.count("\t") == lines[0].count("\t") for line in lines)
    header = lines[0].split("\t")
    assert header[:4] == ["n", "commit", "loss", "status"] and header[-1] == "description"
    status = cli("status", "-C", str(quadratic), check=True).stdout.splitlines()
    row = dict(zip(status[0].split("\t"), status[1].split("\t"), strict=True))
    assert row["tag"] == "p" and row["best exp"].isdigit() and len(row["commit"]) == 7 and row["duration"]


@pytest.mark.parametrize("bad", ["mutate:x", "random:0"])
def test_bad_mutate_specs_say_how_to_write_them(quadratic: Path, bad: str) -> None:
    line = one_line(cli("run", "-C", str(quadratic), "--agent", bad, "-n", "1"))
    assert ":3" in line


def test_markup_in_a_description_is_printed_as_written(quadratic: Path, tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text("import os\nsrc = open('train.py').read()\n"
                      "open('train.py', 'w').write(src.replace('STEPS = 200', 'STEPS = 201'))\n"
                      "open(os.environ['OUROBOROS_DESCRIPTION'], 'w').write('[/] steps [bold]+1')\n")
    proc = cli("run", "-C", str(quadratic), "--agent", f"cmd:{sys.executable} {script}", "-n", "1", check=True)
    assert "[/] steps [bold]+1" in proc.stdout
