"""The CLI presets: each runs its CLI's non-interactive mode with the right argv, environment and
working folder, records its transcript and usage, and fails at start with the install command when
the CLI is missing. The CLIs are stand-in executables on PATH that behave like the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ouroboros.agents import PRESETS, make_agent
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import path_with, stand_in

# Edits MOMENTUM the way an agent would (in its working folder), prints like the CLI, records argv.
EDITING_CLI = """
record()
src = open("train.py").read()
open("train.py", "w").write(re.sub(r"^MOMENTUM = .*$", "MOMENTUM = 0.9", src, flags=re.M))
with open(os.environ["OUROBOROS_DESCRIPTION"], "w") as f:
    f.write("momentum 0.5 -> 0.9\\n")
print(os.environ.get("STANDIN_OUTPUT", "done"))
"""

# What each preset must pass: flags for unattended, non-interactive edits and the model.
EXPECTED = {
    "codex": (["exec", "--json", "--sandbox", "workspace-write", "--model", "m1"], ["danger-full-access"]),
    "claude": (["-p", "--output-format", "json", "--permission-mode", "acceptEdits", "--model", "m1"],
               ["--dangerously-skip-permissions", "--allowedTools"]),
    "aider": (["--message-file", "--yes-always", "--no-auto-commits", "--no-dirty-commits", "--no-gitignore",
               "--model", "m1", "train.py"], ["--auto-commits"]),
    "opencode": (["run", "--model", "m1"], []),
    "gemini": (["-p", "--approval-mode", "auto_edit", "--model", "m1"], ["yolo", "--yolo"]),
}


def run_preset(root: Path, name: str, tmp_path: Path, monkeypatch, model: str | None = "m1",
               body: str = EDITING_CLI, output: str = "done", timeout: float | None = None):
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, PRESETS[name].executable, body)
    monkeypatch.setenv("PATH", path_with(bin_dir))
    # the CLI runs confined where bubblewrap works: its artifacts folder is one place it may write
    log = root / ".ouroboros" / "runs" / "t" / "artifacts" / "calls.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    monkeypatch.setenv("STANDIN_OUTPUT", output)
    task = load_task(root)
    options = {"model": model} if model else {}
    if timeout:
        options["timeout"] = timeout
    loop = Loop(task, Options(agent=name, tag="t", max_experiments=1, extra={"agent_options": options}))
    loop.run()
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return loop, Ledger(loop.records).experiments("t"), calls


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_runs_its_cli_unattended_in_the_worktree(quadratic, tmp_path, monkeypatch, name):
    loop, exps, calls = run_preset(quadratic, name, tmp_path, monkeypatch)
    assert len(calls) == 1
    call = calls[0]
    argv = call["argv"]
    wanted, unwanted = EXPECTED[name]
    for flag in wanted:
        assert flag in argv, f"{name}: {flag} missing from {argv}"
    for flag in unwanted:
        assert flag not in argv, f"{name}: {flag} must not be passed in harness mode"
    if name == "aider":  # the prompt goes as a file; aider's own files stay out of the worktree
        prompt = Path(argv[argv.index("--message-file") + 1]).read_text()
        assert str(loop.ws.task_dir) not in argv[argv.index("--chat-history-file") + 1]
    else:
        prompt = next(a for a in argv if a.startswith("# Program"))
    assert "# Editable files" in prompt and "# Results so far" in prompt
    assert Path(call["cwd"]).resolve() == loop.ws.task_dir.resolve()
    env = call["env"]
    assert Path(env["OUROBOROS_PROMPT"]).read_text() == prompt
    assert env["OUROBOROS_NOTES"].endswith("notes.md") and Path(env["OUROBOROS_ARTIFACTS"]).is_dir()
    if name == "opencode":
        assert json.loads(env["OPENCODE_CONFIG_CONTENT"])["permission"]["edit"] == "allow"
    exp = exps[1]
    assert exp.status in ("keep", "discard") and exp.description == "momentum 0.5 -> 0.9"
    assert exp.agent == name and exp.model == "m1"
    assert "done" in (loop.ledger.exp_dir("t", 1) / "agent.log").read_text()  # the transcript is kept


def test_preset_without_a_model_passes_no_model_flag(quadratic, tmp_path, monkeypatch):
    _, exps, calls = run_preset(quadratic, "codex", tmp_path, monkeypatch, model=None)
    assert "--model" not in calls[0]["argv"] and "-m" not in calls[0]["argv"]
    assert exps[1].model == "codex"


def test_model_can_be_given_in_the_spec(monkeypatch, tmp_path):
    stand_in(tmp_path / "bin", "gemini", "pass")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    agent = make_agent("gemini:gemini-2.5-pro")
    assert agent.model == "gemini-2.5-pro"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_missing_cli_fails_at_start_with_its_install_command(monkeypatch, tmp_path, name):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OuroborosError) as info:
        make_agent(name)
    assert PRESETS[name].install in str(info.value) and "not on PATH" in str(info.value)


def test_claude_usage_from_its_json_result_is_recorded(quadratic, tmp_path, monkeypatch):
    result = json.dumps({"type": "result", "subtype": "success", "result": "ok", "session_id": "s",
                         "total_cost_usd": 0.0123, "usage": {"input_tokens": 1200, "output_tokens": 300,
                                                             "cache_read_input_tokens": 100}})
    _, exps, _ = run_preset(quadratic, "claude", tmp_path, monkeypatch, output=result)
    assert (exps[1].tokens_in, exps[1].tokens_out, exps[1].cost_usd) == (1300, 300, 0.0123)


def test_codex_usage_from_its_json_events_is_recorded(quadratic, tmp_path, monkeypatch):
    events = "\n".join(json.dumps(e) for e in [
        {"type": "thread.started", "thread_id": "x"},
        {"type": "turn.completed", "usage": {"input_tokens": 500, "cached_input_tokens": 0, "output_tokens": 40}},
        {"type": "turn.completed", "usage": {"input_tokens": 700, "output_tokens": 60}}])
    _, exps, _ = run_preset(quadratic, "codex", tmp_path, monkeypatch, output=events)
    assert (exps[1].tokens_in, exps[1].tokens_out) == (1200, 100)


def test_a_failing_cli_is_a_crash_with_its_last_words(quadratic, tmp_path, monkeypatch):
    body = 'record()\nprint("Error: not logged in; run `codex login`")\nsys.exit(1)'
    _, exps, _ = run_preset(quadratic, "codex", tmp_path, monkeypatch, body=body)
    assert exps[1].status == "crash" and "not logged in" in exps[1].reason


def test_a_cli_past_its_timeout_is_killed_and_recorded_as_a_crash(quadratic, tmp_path, monkeypatch):
    body = "import time\nrecord()\ntime.sleep(60)"
    _, exps, _ = run_preset(quadratic, "gemini", tmp_path, monkeypatch, body=body, timeout=1)
    assert exps[1].status == "crash" and "timeout" in exps[1].reason


def test_a_cli_that_commits_is_refused(quadratic, tmp_path, monkeypatch):
    body = EDITING_CLI + ('subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qam", "x"],'
                          ' check=True)\n')
    loop, exps, _ = run_preset(quadratic, "aider", tmp_path, monkeypatch, body=body)
    if loop.agent_confined:  # inside the sandbox the repository's git dir is not even there
        assert exps[1].status == "crash" and "agent exited" in exps[1].reason
    else:
        assert exps[1].status == "violation" and "HEAD moved" in exps[1].reason
    assert loop.ws.head() == exps[0].commit_sha


def test_aider_cannot_drive_itself(monkeypatch, tmp_path):
    stand_in(tmp_path / "bin", "aider", "pass")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    with pytest.raises(OuroborosError, match="--drive harness"):
        make_agent("aider").session_argv(tmp_path / "p.md", tmp_path)


def test_agent_driven_sessions_get_permission_to_run_exp(monkeypatch, tmp_path):
    for name in ("codex", "claude", "opencode", "gemini"):
        stand_in(tmp_path / "bin", name, "pass")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    prompt = tmp_path / "p.md"
    prompt.write_text("go")
    assert "danger-full-access" in make_agent("codex").session_argv(prompt, tmp_path)
    assert "Bash(ouroboros exp:*)" in make_agent("claude").session_argv(prompt, tmp_path)
    assert "yolo" in make_agent("gemini").session_argv(prompt, tmp_path)
    assert json.loads(make_agent("opencode").extra_env("agent")["OPENCODE_CONFIG_CONTENT"])["permission"]["bash"] \
        == "allow"


def test_a_prompt_too_long_for_argv_is_passed_as_its_file(monkeypatch, tmp_path):
    stand_in(tmp_path / "bin", "codex", "pass")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    prompt = tmp_path / "p.md"
    prompt.write_text("x" * 200_000)
    argv = make_agent("codex").session_argv(prompt, tmp_path)
    assert len(argv[-1]) < 1000 and str(prompt) in argv[-1]


def test_a_prompt_holding_a_nul_is_passed_as_its_file(monkeypatch, tmp_path):
    stand_in(tmp_path / "bin", "codex", "pass")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    prompt = tmp_path / "p.md"
    prompt.write_bytes(b"# Your notes\n\nrate \x00 \xff\n")  # agent-written notes: any bytes
    argv = make_agent("codex").session_argv(prompt, tmp_path)
    assert "\0" not in argv[-1] and str(prompt) in argv[-1]
