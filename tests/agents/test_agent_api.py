"""The API agent against a local OpenAI-compatible test server and against recorded HTTP exchanges:
edits as SEARCH/REPLACE blocks, retries with the error, tokens, cost and latency per call, the
spend cap, ensembles. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ouroboros.agents import ApiAgent, EnsembleAgent, make_agent
from ouroboros.errors import OuroborosError
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import FakeOpenAI, knob_edit

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes"


def run_api(root: Path, options: dict, n: int = 1, agent: str = "api:gpt-4o-mini", tag: str = "t"):
    loop = Loop(load_task(root), Options(agent=agent, tag=tag, max_experiments=n, extra={"agent_options": options}))
    run = loop.run()
    return run, Ledger(loop.records).experiments(tag), loop


def bump_steps(body: dict) -> str:
    """A model that adds one step to whatever STEPS the prompt shows, and says which model it is."""
    steps = re.search(r"^STEPS = (\d+)", body["messages"][-1]["content"], re.MULTILINE).group(1)
    return knob_edit("STEPS", steps, str(int(steps) + 1), description=body["model"])(body)


def test_a_reply_is_applied_and_its_tokens_cost_and_latency_are_recorded(quadratic, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI([knob_edit("MOMENTUM", "0.5", "0.9")]) as server:
        run, exps, loop = run_api(quadratic, {"base_url": server.base_url})
    e = exps[1]
    assert e.status in ("keep", "discard") and e.description == "MOMENTUM 0.5 -> 0.9"
    assert "MOMENTUM = 0.9" in loop.ws.show(e.commit_sha, "train.py").decode()
    assert e.model == "gpt-4o-mini" and e.agent == "api:gpt-4o-mini"
    assert e.tokens_in > 100 and e.tokens_out > 5
    assert e.cost_usd == pytest.approx((e.tokens_in * 0.15 + e.tokens_out * 0.60) / 1e6)  # the list price
    call = json.loads((loop.ledger.exp_dir("t", 1) / "agent.log").read_text().splitlines()[0])
    assert call["latency_s"] >= 0 and call["tokens_in"] == e.tokens_in and "REPLACE" in call["reply"]
    request = server.requests[0]
    assert request["model"] == "gpt-4o-mini"
    prompt = request["messages"][-1]["content"]
    for part in ("# Program", "# Rules", "## train.py", "# Results so far", "<<<<<<< SEARCH"):
        assert part in prompt


def test_price_override_and_unknown_models_cost_nothing_by_default(quadratic):
    with FakeOpenAI([knob_edit("STEPS", "200", "300")]) as server:
        _, exps, _ = run_api(quadratic, {"base_url": server.base_url}, agent="api:llama3.1")
    assert exps[1].cost_usd == 0.0 and exps[1].tokens_in > 0
    agent = ApiAgent("llama3.1", price=[1.0, 2.0])
    assert agent.cost(1_000_000, 500_000) == pytest.approx(2.0)


def test_a_malformed_reply_is_retried_with_the_error(quadratic):
    replies = ["I would raise the momentum.",  # no block
               knob_edit("MOMENTUM", "0.55", "0.9"),  # SEARCH text not in the file
               knob_edit("MOMENTUM", "0.5", "0.9")]
    with FakeOpenAI(replies) as server:
        _, exps, _ = run_api(quadratic, {"base_url": server.base_url, "retries": 2})
    assert exps[1].status in ("keep", "discard")
    assert len(server.requests) == 3
    second, third = server.requests[1]["messages"], server.requests[2]["messages"]
    assert "no SEARCH/REPLACE edit block" in second[-1]["content"]
    assert second[-2] == {"role": "assistant", "content": replies[0]}
    assert "was not found in train.py" in third[-1]["content"]
    assert exps[1].tokens_in > sum(len(m["content"]) for m in server.requests[0]["messages"]) // 4  # all 3 calls


def test_edits_to_files_that_are_not_editable_are_refused_and_retried(quadratic):
    evil = "evaluate.py\n<<<<<<< SEARCH\n    loss = objective(x)\n=======\n    loss = 0.0\n>>>>>>> REPLACE\n"
    with FakeOpenAI([evil]) as server:
        _, exps, loop = run_api(quadratic, {"base_url": server.base_url, "retries": 1})
    assert exps[1].status == "crash" and "evaluate.py is not editable" in exps[1].reason
    assert len(server.requests) == 2 and "not editable" in server.requests[1]["messages"][-1]["content"]
    assert exps[1].tokens_in > 0  # what the failed tries cost is still recorded
    assert "loss = objective(x)" in (loop.ws.task_dir / "evaluate.py").read_text()


def test_a_server_error_is_a_crash_and_the_run_goes_on(quadratic):
    with FakeOpenAI([knob_edit("MOMENTUM", "0.5", "0.9")]) as server:
        server.status = 400
        _, exps, _ = run_api(quadratic, {"base_url": server.base_url}, n=2)
    assert exps[1].status == "crash" and "BadRequest" in exps[1].reason
    assert exps[2].status in ("keep", "discard")


def test_the_spend_cap_ends_the_run_cleanly(quadratic):
    with FakeOpenAI([bump_steps]) as server:
        run, exps, loop = run_api(quadratic, {"base_url": server.base_url, "price": [300.0, 300.0],
                                              "spend_cap": 1.0}, n=10)
    assert run.status == "spend_cap" and "spend cap reached" in run.config["stop_reason"]
    assert [e.status for e in exps if e.status == "running"] == []
    costs = [e.cost_usd for e in exps[1:]]
    assert len(costs) >= 2 and len(server.requests) == len(costs)  # no call once the cap was reached
    assert sum(costs[:-1]) < 1.0 <= sum(costs)  # the last experiment crossed it, and was recorded whole
    assert not loop.ws.changes()
    # resuming with a higher cap goes on from where it stopped
    with FakeOpenAI([bump_steps]) as server:
        loop2 = Loop(load_task(quadratic), Options(tag="t", resume=True, max_experiments=len(exps)))
        loop2.agent.base_url, loop2.agent.spend_cap = server.base_url, 1e9
        assert loop2.run().status == "finished"
    assert len(Ledger(loop.records).experiments("t")) == len(exps) + 1


def test_an_ensemble_draws_its_members_by_weight_and_records_the_model(quadratic):
    with FakeOpenAI([bump_steps]) as server:
        _, exps, _ = run_api(quadratic, {"base_url": server.base_url}, n=6,
                             agent="api:model-a=0.5,api:model-b=0.5")
    models = [e.model for e in exps[1:]]
    assert set(models) == {"model-a", "model-b"}
    assert [e.description for e in exps[1:]] == models
    assert isinstance(make_agent("api:a=1,api:b=3"), EnsembleAgent)


def test_openai_without_a_key_fails_with_what_to_set(quadratic, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(OuroborosError, match="set OPENAI_API_KEY"):
        run_api(quadratic, {})


def test_the_key_is_read_from_the_named_variable(quadratic, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-local-123")
    seen = []

    with FakeOpenAI([knob_edit("MOMENTUM", "0.5", "0.8")]) as server:
        handler = server.server.RequestHandlerClass
        original = handler.do_POST

        def spy(self):
            seen.append(self.headers.get("Authorization"))
            original(self)

        handler.do_POST = spy
        run_api(quadratic, {"base_url": server.base_url, "api_key_env": "MY_LLM_KEY"})
    assert seen == ["Bearer sk-local-123"]


# -- recorded HTTP exchanges (vcrpy) ----------------------------------------------------------
RECORD = os.environ.get("OUROBOROS_RECORD_CASSETTES") == "1"


def test_recorded_exchanges_replay_offline(quadratic):
    """The cassette holds a real HTTP exchange with the test server (a malformed reply, then a good
    one), recorded by running this test with OUROBOROS_RECORD_CASSETTES=1; played back here with
    record_mode none, so any request that was not recorded fails the test."""
    vcr = pytest.importorskip("vcr")
    cassette = CASSETTES / "api_agent_retry.yaml"
    recorder = vcr.VCR(record_mode="all" if RECORD else "none", match_on=["method", "path"],
                       filter_headers=["authorization"], decode_compressed_response=True)
    replies = ["Raise the momentum, I think.", knob_edit("MOMENTUM", "0.5", "0.9", description="momentum up")]
    if RECORD:
        with FakeOpenAI(replies) as server, recorder.use_cassette(str(cassette)):
            _, exps, _ = run_api(quadratic, {"base_url": server.base_url, "retries": 1})
    else:
        with recorder.use_cassette(str(cassette)) as tape:
            # nothing listens here: every answer comes from the cassette
            _, exps, _ = run_api(quadratic, {"base_url": "http://127.0.0.1:9/v1", "retries": 1})
            assert tape.play_count == 2 and tape.all_played
    assert exps[1].description == "momentum up" and exps[1].status in ("keep", "discard")
    assert exps[1].tokens_in > 0 and exps[1].cost_usd > 0
