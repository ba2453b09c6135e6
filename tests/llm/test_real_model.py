"""The api agent against the real local model (Qwen2.5-Coder-1.5B behind `ouroboros serve-model`):
a proposal parses and applies, a malformed reply is sent back with its error and answered again,
usage and cost are recorded, the spend cap holds, and agent-driven mode with a scripted loop that
asks the model for each edit. Minutes per test on 2 CPU cores; `make test-llm` runs them."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import cli, path_with, stand_in

pytestmark = pytest.mark.llm

GREEDY = {"temperature": 0.0, "timeout": 3000}


def run_local(root, url, n=1, tag="l", **options):
    loop = Loop(load_task(root), Options(agent="api:local", tag=tag, max_experiments=n,
                                         extra={"agent_options": {"base_url": url, **GREEDY, **options}}))
    run = loop.run()
    return run, Ledger(loop.records).experiments(tag), loop


def calls(loop, tag, n):
    return [json.loads(line) for line in (loop.ledger.exp_dir(tag, n) / "agent.log").read_text().splitlines()]


def test_a_proposal_of_the_real_model_parses_applies_and_records_its_usage(quadratic, llm_url):
    _, exps, loop = run_local(quadratic, llm_url)
    e = exps[1]
    log = calls(loop, "l", 1)
    assert e.status in ("keep", "discard"), (e.status, e.reason, [c["reply"] for c in log])
    assert log[-1]["parsed"] and log[-1]["applied"]
    assert loop.ws.show(e.commit_sha, "train.py") != loop.ws.show(exps[0].commit_sha, "train.py")
    assert e.tokens_in == sum(c["tokens_in"] for c in log) > 200  # usage as the server counted it
    assert e.tokens_out == sum(c["tokens_out"] for c in log) > 10
    assert e.model == "local" and e.cost_usd == 0.0 and e.agent_s > 0


class Mangler(BaseHTTPRequestHandler):
    """Forwards to the real server; the first reply's SEARCH text is changed so that it cannot apply."""

    upstream = ""
    mangled = 0

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = urllib.request.Request(self.upstream + self.path.removeprefix("/v1"), data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3000) as r:
            resp = json.loads(r.read())
        if Mangler.mangled == 0:
            Mangler.mangled = 1
            resp["choices"][0]["message"]["content"] = (
                "DESCRIPTION: raise the momentum\n\ntrain.py\n<<<<<<< SEARCH\nMOMENTUM = 0.77  # not in the file\n"
                "=======\nMOMENTUM = 0.9\n>>>>>>> REPLACE\n")
        data = json.dumps(resp).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_malformed_reply_is_sent_back_with_its_error_and_the_model_answers_again(quadratic, llm_url):
    Mangler.upstream, Mangler.mangled = llm_url, 0
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Mangler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        _, exps, loop = run_local(quadratic, f"http://127.0.0.1:{proxy.server_address[1]}/v1", retries=2)
    finally:
        proxy.shutdown()
        proxy.server_close()
    log = calls(loop, "l", 1)
    assert (log[0]["parsed"], log[0]["applied"]) == (True, False)
    assert "was not found in train.py" in log[0]["error"]
    assert "Your reply could not be applied" in log[1]["prompt"] and "was not found" in log[1]["prompt"]
    assert log[1]["reply"] and log[1]["tokens_in"] > log[0]["tokens_in"]  # the whole conversation, sent again
    assert exps[1].tokens_in == sum(c["tokens_in"] for c in log)
    # What the model did with the error is its own; the verdict follows what it did.
    assert (exps[1].status in ("keep", "discard")) == any(c["applied"] for c in log)


def test_the_spend_cap_holds_with_the_configured_price(quadratic, llm_url):
    price = [1000.0, 2000.0]  # dollars per million tokens, so that one proposal costs about a dollar
    # One model call (no retries): a failed proposal's tokens are spent too, and count against the cap.
    run, exps, _ = run_local(quadratic, llm_url, n=5, price=price, spend_cap=0.05, retries=0)
    assert len(exps) == 2  # the baseline and one proposal: the cap is checked before each proposal
    e = exps[1]
    assert e.cost_usd == pytest.approx((e.tokens_in * price[0] + e.tokens_out * price[1]) / 1e6)
    assert e.cost_usd > 0.05
    assert "spend cap reached" in run.config["stop_reason"]


ASK_THE_MODEL = """
import urllib.request
sys.path.insert(0, os.environ["SRC"])
from pathlib import Path
from ouroboros.agents import edits
from ouroboros.agents.api import compact_format
from ouroboros.task import load_task

url = os.environ["LLM_URL"]
task = load_task(Path.cwd())
log = open(os.environ["STANDIN_LOG"], "a")
for i in range(3):  # at most 3 edits asked of the model; `exp` says when the run is closed
    src = open("train.py").read()
    messages = [{"role": "user", "content": "Improve train.py so that its final loss is lower.\\n\\n"
                 f"train.py (current):\\n```\\n{src}\\n```\\n\\n" + compact_format(task, Path.cwd())}]
    for attempt in range(2):  # a reply that does not apply is sent back with its error once
        body = json.dumps({"model": "local", "temperature": 0.7, "seed": 10 * i + attempt, "max_tokens": 200,
                           "messages": messages}).encode()
        req = urllib.request.Request(url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=3000).read())["choices"][0]["message"]["content"]
        try:
            changed = edits.apply(task, Path.cwd(), edits.parse(reply))
            applied, message = True, "model: " + (edits.description(reply) or "an edit of " + ", ".join(changed))
        except edits.EditError as exc:
            applied, message = False, f"model reply did not apply ({exc})"
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": f"Your reply could not be applied: {exc}\\nReply again."}]
        log.write(json.dumps({"reply": reply, "applied": applied, "error": None if applied else message}) + "\\n")
        log.flush()
        if applied:
            break
    if not applied:
        continue  # nothing changed: nothing to record
    r = subprocess.run(["ouroboros", "exp", "-m", message], capture_output=True, text=True)
    print(r.stdout.strip(), r.stderr.strip(), "exit", r.returncode, flush=True)
    if r.returncode not in (0, 1) or "closed" in (r.stdout + r.stderr):
        break
"""


def test_agent_driven_mode_with_a_scripted_loop_asking_the_real_model(quadratic, llm_url, tmp_path):
    import ouroboros

    stand_in(tmp_path / "bin", "codex", ASK_THE_MODEL)
    src = str(__import__("pathlib").Path(ouroboros.__file__).parents[1])
    env = {"PATH": path_with(tmp_path / "bin"), "STANDIN_LOG": str(tmp_path / "asks.jsonl"), "SRC": src,
           "LLM_URL": llm_url, "PYTHONPATH": src}
    cli("run", "-C", str(quadratic), "--agent", "codex", "--drive", "agent", "-n", "1", "--tag", "d",
        "--agent-timeout", "3000", env=env, check=True, timeout=3600)
    ledger = Ledger(quadratic / ".ouroboros")
    exps = ledger.experiments("d")
    asks = [json.loads(line) for line in (tmp_path / "asks.jsonl").read_text().splitlines()]
    applied = [a for a in asks if a["applied"]]
    assert len(exps) - 1 == min(1, len(applied)) == 1, asks  # the model's applied edit, recorded by exp
    assert all(e.description.startswith("model: ") and e.session >= 1 for e in exps[1:])
    assert all(e.status in ("keep", "discard", "crash", "timeout") for e in exps[1:])
