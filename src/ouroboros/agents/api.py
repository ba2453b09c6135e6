"""`api:<model>`: a model behind any OpenAI-compatible endpoint proposes SEARCH/REPLACE edits.

Works with OpenAI, vLLM, Ollama and llama.cpp's server: set `base_url` (task `[agent] base_url` or
`--base-url`) and the name of the environment variable holding the key (`api_key_env`, default
OPENAI_API_KEY; local servers need none). One proposal is one conversation: the prompt, the model's
reply, and, while the reply cannot be applied (no block, SEARCH text not found, a file that is not
editable), the error sent back for another try, up to `retries` times; then the proposal fails
(a crash, with what it cost). Every call's tokens, cost and latency go to the experiment's
agent.log (one JSON line per call) and add up in the Proposal the ledger records.

`api:local` is the model `ouroboros serve-model` serves (llm_server.py): its endpoint defaults to
http://127.0.0.1:8090/v1 (or $OUROBOROS_LOCAL_MODEL_URL, or --base-url), and it gets the compact
prompt (memory.compact_prompt: the editable files, the last few results, the rules) and a short
system message, since prompt length dominates a small CPU model's latency. `compact` turns that
prompt on or off for any model. Each call's agent.log line says whether the reply parsed into edit
blocks and whether they applied (and the error sent back when not).

Cost is tokens times the price per million tokens: `--price IN,OUT` (dollars), else the list price
below for known OpenAI models, else 0 (local and unknown models). A spend cap (`--spend-cap` dollars)
ends the run cleanly once the run's recorded cost reaches it, before the next experiment begins.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ouroboros import memory
from ouroboros.agents import edits
from ouroboros.agents.base import Agent, AgentError, Context, Proposal, StopRun
from ouroboros.agents.command import NOTES_FILE, bound_notes
from ouroboros.errors import OuroborosError
from ouroboros.task import Task

# Dollars per million tokens (input, output): OpenAI's list prices when this table was written.
# They change; pass --price IN,OUT to be exact, and for any model not listed here.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}

LOCAL = "local"
# api:local samples (temperature 0.7, the request seeded with the experiment's seed): at temperature 0
# every repeat of a study would make the same proposals; seeded, a resumed or repeated run makes the
# same ones again. The agent option `temperature` (options dict) overrides it.
LOCAL_TEMPERATURE = 0.7
LOCAL_URL = "http://127.0.0.1:8090/v1"

SYSTEM = ("You are a research engineer improving a codebase, one small experiment at a time. The harness "
          "runs each change under a fixed budget and keeps it only if the metric improves.\n\n" + edits.FORMAT)

# Small models copy a format's example. Placeholder lines (`<lines copied exactly ...>`) came back
# verbatim as the SEARCH text (3 tries of 3); an example made of a real line of the file (its first
# knob, doubled) was applied as-is in 4 proposals of 4, so the model never chose a change of its own.
# The compact format's example is therefore a pattern in code form that matches no line of the task's
# files: copied as-is it fails with "SEARCH not found" and the retry says so.
EXAMPLE_NAME, EXAMPLE_OLD, EXAMPLE_NEW = "SOME_SETTING", "OLD_VALUE", "NEW_VALUE"


def compact_format(task: Task, worktree: Path) -> str:
    """The edit format for small models: the first editable file's name and a neutral example edit
    (`SOME_SETTING = OLD_VALUE  # its comment` -> `... = NEW_VALUE ...`, a name lengthened until no
    editable file holds it). The comment is there because the model, shown a line without one, dropped
    the trailing comments of the file's lines from its SEARCH text (6 replies of 6)."""
    files = task.editable_files(worktree)
    if not files:
        return edits.FORMAT
    rel = files[0]
    texts = [memory.read_regular(worktree / f, 4 * memory.COMPACT_FILE_CHARS) or "" for f in files]  # what the model sees
    name = EXAMPLE_NAME
    while any(name in t for t in texts):
        name += "_X"
    old, new = f"{name} = {EXAMPLE_OLD}  # its comment", f"{name} = {EXAMPLE_NEW}  # its comment"
    return (f"Reply in this form. The edit shown is a pattern, not a change to make: {name}, {EXAMPLE_OLD} "
            f"and {EXAMPLE_NEW} stand for a real line of {rel} and your new value; no file has that line.\n\n"
            f"DESCRIPTION: one line saying what you changed and why\n{rel}\n<<<<<<< SEARCH\n{old}\n=======\n"
            f"{new}\n>>>>>>> REPLACE\n\nThe SEARCH line must be copied exactly from the current file above; "
            "copy the whole line, its comment included; choose the change you expect to improve the metric.")


COMPACT_SYSTEM = "You improve code one small experiment at a time. Answer only in the requested format."


def price_of(model: str, price: tuple[float, float] | list[float] | None) -> tuple[float, float]:
    if price is not None:
        return float(price[0]), float(price[1])
    return PRICES.get(model, (0.0, 0.0))


def spent(ctx: Context) -> float:
    """Dollars recorded for this run so far (failed proposals included)."""
    return sum(e.cost_usd or 0.0 for e in ctx.history)


class ApiAgent(Agent):
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = None,
                 price: tuple[float, float] | list[float] | None = None, spend_cap: float | None = None,
                 retries: int = 2, timeout: float | None = None, temperature: float | None = None,
                 http_client: Any = None, compact: bool | None = None):
        if not model:
            raise OuroborosError("api: needs a model name, e.g. --agent api:gpt-4o-mini or api:llama3.1")
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.price = price_of(model, price)
        self.spend_cap, self.retries, self.timeout, self.temperature = spend_cap, retries, timeout, temperature
        self.http_client = http_client
        self.compact = model == LOCAL if compact is None else compact
        if self.temperature is None and model == LOCAL:
            self.temperature = LOCAL_TEMPERATURE
        self.seeded = model == LOCAL  # the local server honours `seed`; hosted APIs vary in what they accept
        self.name = f"api:{model}"
        self.client: Any = None

    def check(self, task: Task) -> None:
        self._endpoint(task)

    def _endpoint(self, task: Task) -> tuple[str | None, str]:
        """The endpoint and key to use; a missing package or key is an error."""
        try:
            import openai  # noqa: F401
        except ImportError as exc:
            raise OuroborosError("the api agent needs the openai package: pip install 'ouroboros[api]'") from exc
        base_url = self.base_url or task.agent.base_url
        if base_url is None and self.model == LOCAL:
            base_url = os.environ.get("OUROBOROS_LOCAL_MODEL_URL") or LOCAL_URL
        key_env = self.api_key_env or task.agent.api_key_env
        key = os.environ.get(key_env)
        if not key:
            if base_url is None:
                raise OuroborosError(f"--agent {self.name}: set {key_env} to your OpenAI key, or point --base-url "
                                     "at an OpenAI-compatible server (vLLM, Ollama, llama.cpp)")
            key = "no-key"  # local servers accept any key
        return base_url, key

    def start(self, ctx: Context) -> None:
        import openai

        base_url, key = self._endpoint(ctx.task)
        self.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=1,
                                    timeout=self.timeout or ctx.task.agent.timeout, http_client=self.http_client)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price[0] + tokens_out * self.price[1]) / 1e6

    def propose(self, ctx: Context) -> Proposal:
        if self.client is None:
            self.start(ctx)
        if self.spend_cap is not None and spent(ctx) >= self.spend_cap:
            raise StopRun(f"spend cap reached: ${spent(ctx):.4f} of ${self.spend_cap:.4f} spent", status="spend_cap")
        usage = Proposal("", model=self.model, session=ctx.session)
        if self.compact:
            fmt = compact_format(ctx.task, ctx.worktree)
            messages = [{"role": "system", "content": COMPACT_SYSTEM},
                        {"role": "user", "content": memory.compact_prompt(ctx.task, ctx.worktree, ctx.history)
                         + "\n" + fmt}]
        else:
            messages = [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": ctx.prompt() + "\n" + edits.FORMAT}]
        log = ctx.exp_dir / "agent.log"
        for attempt in range(self.retries + 1):
            reply, record = self._call(messages, usage, log, attempt, ctx.seed + attempt if self.seeded else None)
            record["parsed"] = record["applied"] = False
            try:
                blocks = edits.parse(reply)
                record["parsed"] = True
                changed = edits.apply(ctx.task, ctx.worktree, blocks)
                record["applied"] = True
            except edits.EditError as exc:
                record["error"] = str(exc)
                self._log(log, record)
                if attempt == self.retries:
                    raise AgentError(f"reply could not be applied after {attempt + 1} tries: {exc}", usage) from exc
                messages += [{"role": "assistant", "content": reply},
                             {"role": "user", "content": f"Your reply could not be applied: {exc}\n"
                                                         "Nothing was changed. Reply again with corrected edit blocks."}]
                continue
            self._log(log, record)
            self._keep_notes(ctx, reply)
            usage.description = edits.description(reply) or f"{self.model}: edit {', '.join(changed)}"
            return usage
        raise AssertionError("unreachable")

    def _call(self, messages: list[dict], usage: Proposal, log: Path, attempt: int,
              seed: int | None = None) -> tuple[str, dict]:
        """The reply and its agent.log record (written by the caller once it knows the outcome)."""
        import openai

        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if seed is not None:
            kwargs["seed"] = seed
        start = time.monotonic()
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except openai.APIError as exc:
            self._log(log, {"attempt": attempt, "error": str(exc), "latency_s": time.monotonic() - start})
            raise AgentError(f"{self.model} at {self.client.base_url}: {type(exc).__name__}: {exc}", usage) from exc
        latency = time.monotonic() - start
        tin = resp.usage.prompt_tokens if resp.usage else 0
        tout = resp.usage.completion_tokens if resp.usage else 0
        cost = self.cost(tin, tout)
        usage.tokens_in += tin
        usage.tokens_out += tout
        usage.cost_usd += cost
        reply = (resp.choices[0].message.content or "") if resp.choices else ""
        record = {"attempt": attempt, "model": resp.model or self.model, "tokens_in": tin,
                  "tokens_out": tout, "cost_usd": round(cost, 8), "latency_s": round(latency, 4),
                  "prompt": messages[-1]["content"] if attempt else "(the experiment prompt: prompt.md)",
                  "reply": reply}
        if attempt == 0:
            (log.parent / "prompt.md").write_text(messages[1]["content"])
        return reply, record

    @staticmethod
    def _log(log: Path, record: dict) -> None:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")

    @staticmethod
    def _keep_notes(ctx: Context, reply: str) -> None:
        text = edits.notes(reply)
        if text is not None:
            path = ctx.run_dir / NOTES_FILE
            path.write_text(text)
            bound_notes(path, ctx.task.agent.notes_max_chars)
