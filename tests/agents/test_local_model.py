"""The local model's server (llm_server.py) with a stand-in model (no torch, no model file), and the
api agent's `api:local` mode through it: the OpenAI wire format with usage, bad requests answered
with one clear error, the compact prompt, and per call whether the reply parsed and applied."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from ouroboros import llm_server
from ouroboros.agents import ApiAgent, make_agent
from ouroboros.agents.api import LOCAL_URL
from ouroboros.ledger import Ledger
from ouroboros.loop import Loop, Options
from ouroboros.task import load_task
from ouroboros.testing import knob_edit


class StandInModel:
    """Answers with scripted replies; counts tokens as words, the way usage must report them."""

    name = "local"

    def __init__(self, replies, n_ctx: int = 100_000):
        self.replies, self.n_ctx, self.requests = list(replies), n_ctx, []

    def chat(self, messages, max_tokens, temperature, seed):
        self.requests.append({"messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                              "seed": seed})
        n_in = sum(len(m["content"].split()) for m in messages)
        if n_in >= self.n_ctx:
            raise ValueError(f"the prompt has {n_in} tokens, the context holds {self.n_ctx}")
        reply = self.replies.pop(0)
        text = reply({"messages": messages, "model": "local"}) if callable(reply) else reply
        n_out = len(text.split())
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "local",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}


@pytest.fixture
def serve():
    servers = []

    def start(model):
        server = ThreadingHTTPServer(("127.0.0.1", 0), llm_server.make_handler(model, 64, lambda s: None))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def post(url: str, body: bytes) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_server_speaks_openai_chat_completions_with_usage(serve):
    import openai

    model = StandInModel(["DESCRIPTION: nothing"])
    url = serve(model)
    client = openai.OpenAI(base_url=url, api_key="no-key")
    resp = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "one two three"}],
                                          temperature=0)
    assert resp.choices[0].message.content == "DESCRIPTION: nothing"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 2)
    assert model.requests[0]["max_tokens"] == 64 and model.requests[0]["temperature"] == 0.0
    assert [m.id for m in client.models.list()] == ["local"]


@pytest.mark.parametrize("body, message", [
    (b"{not json", "bad request"),
    (b'{"messages": "hi"}', "`messages` must be a non-empty list"),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', "each message must be {role: one of system, user"),
    (b'{"messages": [{"role": "user", "content": ["a"]}]}', "content: a string"),
    (b'{"messages": [{"role": "user", "content": "a"}], "max_tokens": -1}', "`max_tokens` must be a positive"),
    (b'{"messages": [{"role": "user", "content": "a"}], "temperature": "hot"}', "`temperature` must be a number"),
    (b'{"messages": [{"role": "user", "content": "a"}], "seed": 1.5}', "`seed` must be an integer"),
    (b'[1, 2]', "the body must be a JSON object"),
])
def test_bad_requests_get_one_clear_error_and_the_server_keeps_serving(serve, body, message):
    model = StandInModel(["fine"])
    url = serve(model)
    code, reply = post(url, body)
    assert code == 400 and message in reply["error"]["message"]
    code, reply = post(url, b'{"messages": [{"role": "user", "content": "a"}]}')
    assert code == 200 and reply["choices"][0]["message"]["content"] == "fine"


def test_a_request_whose_client_hung_up_while_it_waited_is_not_generated(serve):
    import socket

    busy, done = threading.Event(), threading.Event()

    def slow(req):
        busy.set()
        done.wait(30)
        return "first"

    model = StandInModel([slow, "third"])
    url = serve(model)
    first = threading.Thread(target=post, args=(url, b'{"messages": [{"role": "user", "content": "one"}]}'))
    first.start()
    assert busy.wait(30)  # the first request holds the model
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    body = b'{"messages": [{"role": "user", "content": "abandoned"}]}'
    with socket.create_connection((host, int(port))) as s:  # sent, then the client goes away
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    done.set()
    first.join(30)
    code, reply = post(url, b'{"messages": [{"role": "user", "content": "three"}]}')
    assert code == 200 and reply["choices"][0]["message"]["content"] == "third"
    assert [r["messages"][0]["content"] for r in model.requests] == ["one", "three"]


def test_a_prompt_longer_than_the_context_is_refused_with_its_length(serve):
    url = serve(StandInModel(["never"], n_ctx=3))
    code, reply = post(url, json.dumps({"messages": [{"role": "user", "content": "a b c d"}]}).encode())
    assert code == 400 and "the prompt has 4 tokens, the context holds 3" in reply["error"]["message"]


def test_api_local_defaults_to_the_local_server_and_the_compact_prompt(monkeypatch):
    monkeypatch.delenv("OUROBOROS_LOCAL_MODEL_URL", raising=False)
    agent = make_agent("api:local")
    assert isinstance(agent, ApiAgent) and agent.compact and agent.price == (0.0, 0.0)
    assert not make_agent("api:gpt-4o-mini").compact
    assert make_agent("api:gpt-4o-mini", options={"compact": True}).compact


def run_local(root, url, n=1, options=None):
    opts = {"base_url": url, **(options or {})}
    loop = Loop(load_task(root), Options(agent="api:local", tag="l", max_experiments=n,
                                         extra={"agent_options": opts}))
    run = loop.run()
    return run, Ledger(loop.records).experiments("l"), loop


def test_api_local_sends_the_short_prompt_and_logs_whether_each_reply_parsed_and_applied(quadratic, serve):
    model = StandInModel(["I would raise the momentum.",  # no block: not parsed
                          knob_edit("MOMENTUM", "0.55", "0.9"),  # parsed, SEARCH not in the file
                          knob_edit("MOMENTUM", "0.5", "0.9")])
    _, exps, loop = run_local(quadratic, serve(model), options={"retries": 2})
    assert exps[1].status in ("keep", "discard") and exps[1].description == "MOMENTUM 0.5 -> 0.9"
    prompt = model.requests[0]["messages"][-1]["content"]
    assert "train.py (current):" in prompt and "Results (baseline first" in prompt and "0. loss=" in prompt
    assert "# Program" not in prompt and "<<<<<<< SEARCH" in prompt
    assert len(prompt) < 4000  # the full prompt of this task is several times longer
    calls = [json.loads(line) for line in (loop.ledger.exp_dir("l", 1) / "agent.log").read_text().splitlines()]
    assert [(c["attempt"], c["parsed"], c["applied"]) for c in calls] == [(0, False, False), (1, True, False),
                                                                          (2, True, True)]
    assert "no SEARCH/REPLACE edit block" in calls[0]["error"] and "was not found in train.py" in calls[1]["error"]
    assert exps[1].tokens_in == sum(c["tokens_in"] for c in calls) > 0
    assert exps[1].tokens_out == sum(c["tokens_out"] for c in calls) > 0


def test_api_local_samples_with_the_experiments_seed_so_repeats_differ_and_resumes_repeat(quadratic, serve):
    from ouroboros.agents.base import experiment_seed

    model = StandInModel(["no block", knob_edit("MOMENTUM", "0.5", "0.9")])
    run, _, _ = run_local(quadratic, serve(model), options={"retries": 1})
    first = experiment_seed(run.seed, 1)
    assert [r["temperature"] for r in model.requests] == [0.7, 0.7]
    assert [r["seed"] for r in model.requests] == [first, first + 1]  # a retry is not the same draw again
    assert make_agent("api:local", options={"temperature": 0}).temperature == 0
    assert make_agent("api:gpt-4o-mini").temperature is None and not make_agent("api:gpt-4o-mini").seeded


def test_the_compact_prompt_shows_the_baseline_the_best_and_only_the_last_results(quadratic, serve):
    replies = [knob_edit("STEPS", str(200 + k), str(201 + k)) for k in range(8)]
    model = StandInModel(replies)
    _, exps, _ = run_local(quadratic, serve(model), n=8)
    last = model.requests[-1]["messages"][-1]["content"]
    shown = [int(line.split(".")[0]) for line in last.split("Results (baseline first")[1].splitlines()[1:]
             if line[:1].isdigit()]
    assert shown[0] == 0 and shown[-5:] == [3, 4, 5, 6, 7] and len(shown) <= 7
    assert "STEPS = 207" in last  # the file as it stands at the best commit


def test_the_demo_summary_reports_parse_and_apply_rates(quadratic, serve):
    from ouroboros import llm_demo

    model = StandInModel(["no block here", knob_edit("MOMENTUM", "0.5", "0.9"), knob_edit("STEPS", "200", "300")])
    run_local(quadratic, serve(model), n=2)
    said: list[str] = []
    tot = llm_demo.summary(quadratic, "l", echo=said.append)
    assert (tot["proposals"], tot["calls"], tot["parsed"], tot["applied"], tot["proposals_applied"]) == (2, 3, 2, 2, 2)
    text = "\n".join(said)
    assert "2/3 replies parsed, 2/3 applied; 2/2 proposals applied" in text
    assert "   | no block here" in text and "parsed=no applied=no" in text


def test_the_local_url_can_be_set_by_the_environment(quadratic, monkeypatch):
    monkeypatch.setenv("OUROBOROS_LOCAL_MODEL_URL", "http://127.0.0.1:9/v1")
    assert make_agent("api:local")._endpoint(load_task(quadratic))[0] == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("OUROBOROS_LOCAL_MODEL_URL")
    assert make_agent("api:local")._endpoint(load_task(quadratic))[0] == LOCAL_URL


def test_the_compact_format_example_is_neutral_and_cannot_be_applied_as_is(quadratic):
    from ouroboros.agents import edits
    from ouroboros.agents.api import compact_format

    task = load_task(quadratic)
    text = compact_format(task, quadratic)
    assert "<lines copied" not in text  # a small model copied that placeholder back as its SEARCH text
    assert "LEARNING_RATE" not in text  # a real knob, doubled, was applied verbatim 4 proposals of 4
    example = edits.parse(text)
    assert [b.path for b in example] == ["train.py"]
    assert example[0].search == "SOME_SETTING = OLD_VALUE  # its comment\n"
    assert example[0].replace == "SOME_SETTING = NEW_VALUE  # its comment\n"
    before = (quadratic / "train.py").read_text()
    with pytest.raises(edits.EditError, match="SEARCH"):
        edits.apply(task, quadratic, example)  # a model that copies the example gets an error to retry on
    assert (quadratic / "train.py").read_text() == before


def test_the_compact_format_example_never_names_a_line_the_file_has(quadratic):
    from ouroboros.agents import edits
    from ouroboros.agents.api import compact_format

    # A task whose file holds the example's own lines: the example's name changes so it still cannot apply.
    train = quadratic / "train.py"
    train.write_text(train.read_text() + "SOME_SETTING = OLD_VALUE\nSOME_SETTING_X = OLD_VALUE\n")
    task = load_task(quadratic)
    example = edits.parse(compact_format(task, quadratic))
    assert example[0].search == "SOME_SETTING_X_X = OLD_VALUE  # its comment\n"
    with pytest.raises(edits.EditError):
        edits.apply(task, quadratic, example)


def test_the_llm_study_loads_and_compares_the_local_model_with_random_and_tpe():
    from pathlib import Path

    from ouroboros.study import load_study

    study = load_study(Path(__file__).parents[2] / "examples" / "studies" / "llm-vs-random.toml")
    assert [c.agent for c in study.conditions] == ["random", "tpe", "api:local"]
    assert study.baseline_condition == "random" and study.repeats >= 3
    assert load_task(study.task_path(study.conditions[2])).name == "quadratic"


@pytest.mark.parametrize("search, nearest", [
    ("STEPS = 200", "'STEPS = 200  # gradient steps; each costs microseconds'"),  # its comment dropped
    ("STEPS = 400", "'STEPS = 200  # gradient steps; each costs microseconds'"),  # and its value changed
    ("CLIP=100.0", "'CLIP = 100.0  # gradient norm clip"),
    ("completely unrelated text \0 [/]", None),
])
def test_a_search_line_not_found_is_answered_with_the_files_nearest_line(quadratic, search, nearest):
    from ouroboros.agents import edits

    task = load_task(quadratic)
    before = (quadratic / "train.py").read_text()
    with pytest.raises(edits.EditError) as exc:
        edits.apply(task, quadratic, [edits.Edit("train.py", search + "\n", "X = 1\n")])
    assert "the SEARCH text was not found in train.py" in str(exc.value)
    if nearest:
        assert f"; the nearest line in the file is {nearest}" in str(exc.value)
    else:
        assert "nearest line" not in str(exc.value)
    assert (quadratic / "train.py").read_text() == before


def test_a_search_line_with_other_spacing_between_its_words_still_applies_once(quadratic):
    from ouroboros.agents import edits

    task = load_task(quadratic)
    line = next(x for x in (quadratic / "train.py").read_text().splitlines() if x.startswith("MOMENTUM = "))
    squeezed = " ".join(line.split())  # what the 1.5B model wrote: one space before the comment
    assert squeezed != line
    edits.apply(task, quadratic, [edits.Edit("train.py", squeezed + "\n", "MOMENTUM = 0.8  # tuned\n")])
    text = (quadratic / "train.py").read_text()
    assert "MOMENTUM = 0.8  # tuned\n" in text and line not in text
    with pytest.raises(edits.EditError, match="was not found"):  # indentation is never ignored
        edits.apply(task, quadratic, [edits.Edit("train.py", "    " + "MOMENTUM = 0.8 # tuned\n", "X = 1\n")])


def test_a_demo_stopped_by_sigterm_stops_the_server_it_started(tmp_path):
    """`make demo-llm` under a time limit or a stopped make gets SIGTERM: the server (9 GB) goes with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "server.pid"
    script = tmp_path / "demo.py"
    script.write_text(f"""
import subprocess, time
from pathlib import Path
from ouroboros import llm_demo
real = subprocess.Popen
def popen(argv, **kw):  # the model server, played by a process that never ends
    proc = real(["sleep", "600"], start_new_session=True)
    Path({str(pidfile)!r}).write_text(str(proc.pid))
    return proc
llm_demo.subprocess.Popen = popen
llm_demo.wait_ready = lambda url, server, timeout: time.sleep(600)
llm_demo.demo(Path({str(tmp_path)!r}), 1)
""")
    demo = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 60
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    server = int(pidfile.read_text())
    demo.send_signal(signal.SIGTERM)
    demo.wait(timeout=60)
    for _ in range(600):  # the server's group is killed in the demo's `finally`
        try:
            os.kill(server, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.killpg(server, signal.SIGKILL)
        pytest.fail("the server the demo started outlived the demo's SIGTERM")
