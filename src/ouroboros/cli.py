"""The `ouroboros` command: one small function per command; the work is in the modules."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ouroboros import scaffold, views
from ouroboros.errors import OuroborosError
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Autonomous research loops: propose, run under a budget, evaluate out of reach, keep or revert.")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

TaskDir = Annotated[Path, typer.Option("--task", "-C", help="the task folder (holds ouroboros.toml)")]


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="folder to create, or the autoresearch repo")],
    template: Annotated[str, typer.Option(help="quadratic (seconds, no torch) or tinygpt")] = "quadratic",
    from_autoresearch: Annotated[bool, typer.Option("--from-autoresearch", help="write a task file for an "
                                                    "existing autoresearch-layout repo")] = False,
) -> None:
    """Scaffold a task repo, or describe an existing autoresearch repo as a task."""
    if from_autoresearch:
        path = scaffold.from_autoresearch(directory)
        console.print(f"wrote {path} and committed it; next: ouroboros run -C {directory} --agent random")
    else:
        scaffold.from_template(directory, template)
        console.print(f"created task {directory} from template {template}; next: "
                      f"ouroboros run -C {directory} --agent random --max-experiments 10")


@app.command()
def run(
    task: TaskDir = Path("."),
    agent: Annotated[str | None, typer.Option(help="random | tpe | cmd:<shell command>")] = None,
    max_experiments: Annotated[int | None, typer.Option("--max-experiments", "-n", min=0)] = None,
    hours: Annotated[float | None, typer.Option(help="stop after this many hours of experiments", min=0)] = None,
    budget: Annotated[float | None, typer.Option(help="seconds per experiment run (overrides the task)",
                                                    min=0.001)] = None,
    tag: Annotated[str | None, typer.Option(help="run name; the branch is ouroboros/<tag>")] = None,
    resume: Annotated[str | None, typer.Option(help="continue the run with this tag")] = None,
    seed: Annotated[int, typer.Option(help="seed for the agent and the run")] = 0,
) -> None:
    """Run the loop: the baseline first, then experiments until a limit is reached."""
    t = load_task(task)
    if resume is None and max_experiments is None and hours is None:
        raise OuroborosError("give a limit: --max-experiments N or --hours H (or both)")
    opts = Options(agent=agent or "random", tag=resume or tag, max_experiments=max_experiments, hours=hours,
                   budget=budget, seed=seed, resume=resume is not None)
    live = views.Live(console, t)
    loop = Loop(t, opts, on_experiment=live.line)
    live.header(loop)
    try:
        loop.run()
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped[/]; nothing recorded is lost. Continue with: "
                      f"ouroboros run -C {task} --resume {loop.tag}")
        raise typer.Exit(130) from None
    live.summary(loop)


@app.command()
def log(task: TaskDir = Path("."),
        run: Annotated[str | None, typer.Option("--run", help="run tag (default: the latest)")] = None) -> None:
    """Print a run's experiments."""
    views.log(console, load_task(task), run)


@app.command()
def status(task: TaskDir = Path(".")) -> None:
    """List the runs of a task with their best result."""
    views.status(console, load_task(task))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a run the way Ctrl-C does: cleanly, resumable


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except OuroborosError as exc:
        err.print(f"[red]error:[/] {exc}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
