"""Presets for the mainstream coding-agent CLIs: `codex`, `claude`, `aider`, `opencode`, `gemini`.

Each preset is a CommandAgent that builds the argv of its CLI's non-interactive mode: the prompt,
the model, and the flags that let it edit files unattended. It runs in the run's worktree (the
task folder), under the per-call timeout, and its transcript is the experiment's agent.log. In
agent-driven mode (`--drive agent`) the same CLI is started once per session with the session
prompt and the permissions it needs to run `ouroboros exp` itself.

What each CLI documents about its non-interactive mode (the facts these argvs rely on):
- codex: `codex exec PROMPT` runs without the TUI and never asks for approval; its default sandbox
  is read-only, `--sandbox workspace-write` allows edits in the working folder, and
  `danger-full-access` also lets commands write elsewhere (needed for `ouroboros exp`, which writes
  the run's records outside the worktree); `--json` prints events, with token usage, as JSON lines;
  `-m` picks the model; stdin must not be a pipe left open (the harness gives it /dev/null).
- claude: `claude -p PROMPT` (print mode) answers and exits; `--permission-mode acceptEdits`
  approves file edits, `--allowedTools` pre-approves named commands, `--output-format json`
  ends with one JSON object holding `total_cost_usd` and `usage`; `--model` picks the model.
- aider: `--message-file FILE` sends one message, applies the edits and exits; `--yes-always`
  answers every confirmation; aider commits every edit unless `--no-auto-commits` (and commits dirty
  files first unless `--no-dirty-commits`), and adds itself to .gitignore unless `--no-gitignore`.
  It has no autonomous multi-step mode, so it runs harness-driven only.
- opencode: `opencode run PROMPT` runs one prompt without the TUI; `-m provider/model` picks the
  model; permissions come from its config (`"permission": {...}` with allow/ask/deny), which the
  environment variable OPENCODE_CONFIG_CONTENT can supply inline.
- gemini: `gemini -p PROMPT` is its headless mode; `--approval-mode auto_edit` approves edits and
  `yolo` approves every action (shell commands included); `-m` picks the model.

Agents must not commit: the harness owns git (a moved HEAD is a violation). Aider is the one CLI
that commits by default, and its preset turns that off.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from ouroboros.agents.base import AgentError, Context, Proposal
from ouroboros.agents.command import CommandAgent
from ouroboros.errors import OuroborosError

# Linux caps one argv string at 128 KiB; a longer prompt is passed as a pointer to its file.
MAX_INLINE_PROMPT = 100_000


class PresetAgent(CommandAgent):
    """One coding-agent CLI. Subclasses set the class attributes and `flags`."""

    preset = ""
    executable = ""
    install = ""  # the command that installs the CLI, shown when it is missing
    auth = ""  # how to sign in, shown with the install hint
    agent_driven = True  # whether the CLI can run a long autonomous session (`--drive agent`)
    env_keys: tuple[str, ...] = ()  # the environment variables (keys, endpoints) the CLI reads: what a proxy passes on

    def __init__(self, model: str | None = None, timeout: float | None = None):
        self.model = model or ""
        self.run_dir = Path(".")
        super().__init__(self.executable, timeout, name=self.preset)
        self.require()

    def require(self) -> str:
        """The CLI's path; a missing CLI is the user's to fix, with the install command."""
        path = shutil.which(self.executable)
        if path is None:
            raise OuroborosError(f"--agent {self.preset}: the `{self.executable}` CLI is not on PATH; install it "
                                 f"with `{self.install}`, then {self.auth}")
        return path

    # -- argv ---------------------------------------------------------------------------------
    def flags(self, prompt: str, prompt_path: Path, ctx: Context | None, drive: str) -> list[str]:
        """The CLI's arguments. ctx is None for an agent-driven session; self.run_dir is the run's
        records folder (notes.md, artifacts/) either way."""
        raise NotImplementedError

    def prompt_arg(self, prompt_path: Path) -> str:
        text = prompt_path.read_text(errors="replace")
        if len(text) <= MAX_INLINE_PROMPT and "\0" not in text:  # a NUL (agent-written notes) cuts an argv string
            return text
        return f"Your full instructions are in the file {prompt_path}. Read all of it first, then follow it."

    def argv(self, ctx: Context, prompt_path: Path) -> list[str]:
        self.run_dir = ctx.run_dir
        return [self.executable, *self.flags(self.prompt_arg(prompt_path), prompt_path, ctx, "harness")]

    def session_argv(self, prompt_path: Path, run_dir: Path) -> list[str]:
        """The argv of one agent-driven session: the session prompt, permission to run commands."""
        if not self.agent_driven:
            raise OuroborosError(f"--agent {self.preset} has no autonomous mode that can run `ouroboros exp` "
                                 f"itself; run it with --drive harness (the default)")
        self.run_dir = run_dir
        return [self.executable, *self.flags(self.prompt_arg(prompt_path), prompt_path, None, "agent")]

    def extra_env(self, drive: str) -> dict[str, str]:
        return {}

    def readable(self) -> list[Path]:
        self.command = self.require()  # the CLI's real path: its installation is bound into the sandbox
        try:
            return super().readable()
        finally:
            self.command = self.executable

    def env(self, ctx: Context, prompt_path: Path, desc_path: Path) -> dict[str, str]:
        return {**super().env(ctx, prompt_path, desc_path), **self.extra_env("harness")}

    # -- usage --------------------------------------------------------------------------------
    def usage(self, transcript: str) -> tuple[int, int, float]:
        """Tokens in, tokens out and dollars, where the CLI reports them in its transcript."""
        return 0, 0, 0.0

    def propose(self, ctx: Context) -> Proposal:
        try:
            proposal = super().propose(ctx)
        except AgentError as exc:
            raise AgentError(str(exc), self._usage(ctx)) from exc
        u = self._usage(ctx)
        proposal.model, proposal.tokens_in, proposal.tokens_out, proposal.cost_usd = \
            u.model, u.tokens_in, u.tokens_out, u.cost_usd
        return proposal

    def _usage(self, ctx: Context) -> Proposal:
        log = ctx.exp_dir / "agent.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        tokens_in, tokens_out, cost = self.usage(text)
        return Proposal("", model=self.model or self.preset, tokens_in=tokens_in, tokens_out=tokens_out,
                        cost_usd=cost)


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


class CodexAgent(PresetAgent):
    preset, executable = "codex", "codex"
    env_keys = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    home_dirs = (".codex",)
    home_skip = ("sessions", "log", "history.jsonl")
    logins = (".codex/auth.json",)
    install = "npm install -g @openai/codex"
    auth = "sign in with `codex login` (or set OPENAI_API_KEY)"

    def flags(self, prompt: str, prompt_path: Path, ctx: Context | None, drive: str) -> list[str]:
        sandbox = "workspace-write" if drive == "harness" else "danger-full-access"
        model = ["--model", self.model] if self.model else []
        return ["exec", "--json", "--skip-git-repo-check", "--sandbox", sandbox, *model, prompt]

    def usage(self, transcript: str) -> tuple[int, int, float]:
        tin = tout = 0
        for event in _json_lines(transcript):
            u = event.get("usage") if event.get("type") == "turn.completed" else None
            if isinstance(u, dict):
                tin += int(u.get("input_tokens") or 0)
                tout += int(u.get("output_tokens") or 0)
        return tin, tout, 0.0


class ClaudeAgent(PresetAgent):
    preset, executable = "claude", "claude"
    env_keys = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")
    home_dirs = (".claude", ".claude.json", ".config/claude")
    home_skip = ("projects", "shell-snapshots", "todos", "file-history", "debug", "statsig")
    logins = (".claude/.credentials.json", ".config/claude/.credentials.json")
    install = "npm install -g @anthropic-ai/claude-code"
    auth = "sign in by running `claude` once (or set ANTHROPIC_API_KEY)"

    def flags(self, prompt: str, prompt_path: Path, ctx: Context | None, drive: str) -> list[str]:
        model = ["--model", self.model] if self.model else []
        out = ["-p", prompt, "--output-format", "json", "--permission-mode", "acceptEdits", *model]
        out += ["--add-dir", str(self.run_dir)]  # outside the worktree: the prompt, notes.md, artifacts/
        if drive == "agent":
            out += ["--allowedTools", "Bash(ouroboros exp:*)", "Bash(ouroboros log:*)"]
        return out

    def usage(self, transcript: str) -> tuple[int, int, float]:
        for obj in reversed(_json_lines(transcript)):
            if "total_cost_usd" in obj or obj.get("type") == "result":
                u = obj.get("usage") or {}
                tin = sum(int(u.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                                       "cache_read_input_tokens"))
                return tin, int(u.get("output_tokens") or 0), float(obj.get("total_cost_usd") or 0.0)
        return 0, 0, 0.0


class AiderAgent(PresetAgent):
    preset, executable = "aider", "aider"
    env_keys = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "GEMINI_API_KEY",
                "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY")
    home_dirs = (".aider",)

    def scratch(self, ctx: Context) -> list[Path]:
        return [ctx.exp_dir / "aider.chat.md", ctx.exp_dir / "aider.input.history"]
    install = "python -m pip install aider-install && aider-install"
    auth = "set the key of your model's provider (e.g. OPENAI_API_KEY or ANTHROPIC_API_KEY)"
    agent_driven = False

    def flags(self, prompt: str, prompt_path: Path, ctx: Context | None, drive: str) -> list[str]:
        assert ctx is not None
        model = ["--model", self.model] if self.model else []
        # Aider's history files would be new files in the worktree (a violation): keep them in the
        # experiment's records. No repo map: the editable files are named, and the map's cache is a
        # folder in the worktree too.
        return ["--message-file", str(prompt_path), "--yes-always", "--no-auto-commits", "--no-dirty-commits",
                "--no-gitignore", "--no-check-update", "--analytics-disable", "--no-show-release-notes",
                "--no-pretty", "--map-tokens", "0",
                "--chat-history-file", str(ctx.exp_dir / "aider.chat.md"),
                "--input-history-file", str(ctx.exp_dir / "aider.input.history"), *model,
                *ctx.task.editable_files(ctx.worktree)]


class OpenCodeAgent(PresetAgent):
    preset, executable = "opencode", "opencode"
    env_keys = ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "GEMINI_API_KEY",
                "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY")
    home_dirs = (".config/opencode", ".local/share/opencode", ".local/state/opencode", ".cache/opencode")
    home_skip = ("log", "snapshot", "storage")
    logins = (".local/share/opencode/auth.json",)
    install = "npm install -g opencode-ai"
    auth = "sign in with `opencode auth login`"

    def flags(self, prompt: str, prompt_path: Path, ctx: Context | None, drive: str) -> list[str]:
        model = ["--model", self.model] if self.model else []
        return ["run", *model, prompt]

    def extra_env(self, drive: str) -> dict[str, str]:
        permission = {"edit": "allow", "bash": "allow", "webfetch": "deny" if drive == "harness" else "allow"}
        return {"OPENCODE_CONFIG_CONTENT": json.dumps({"permission": permission})}


class GeminiAgent(PresetAgent):
    preset, executable = "gemini", "gemini"
    env_keys = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_CLOUD_PROJECT")
    home_dirs = (".gemini",)
    home_skip = ("tmp", "history")
    logins = (".gemini/oauth_creds.json",)
    install = "npm install -g @google/gemini-cli"
    auth = "sign in by running `gemini` once (or set GEMINI_API_KEY)"

    def flags(self, prompt: str, prompt_path: Path, ctx: Context | None, drive: str) -> list[str]:
        model = ["--model", self.model] if self.model else []
        return ["-p", prompt, "--approval-mode", "auto_edit" if drive == "harness" else "yolo", *model]


PRESETS: dict[str, type[PresetAgent]] = {cls.preset: cls for cls in
                                         (CodexAgent, ClaudeAgent, AiderAgent, OpenCodeAgent, GeminiAgent)}


def session_env(agent: PresetAgent | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an agent-driven session: the harness's `ouroboros` first on PATH."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    if agent is not None:
        env.update(agent.extra_env("agent"))
    return env
