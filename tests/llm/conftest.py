"""The tests that talk to the real local model. They run only under `make test-llm`
(OUROBOROS_TEST_LLM=1) and only when the model has been fetched (`make llm`); otherwise they skip,
so `make test` never waits for a model. One server is started for the whole session, unless
OUROBOROS_LOCAL_MODEL_URL names one that is already serving (the model takes minutes to load)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from ouroboros import model

pytestmark = pytest.mark.llm


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    reason = None
    if os.environ.get("OUROBOROS_TEST_LLM") != "1":
        reason = "talks to the real local model: run with `make test-llm` (OUROBOROS_TEST_LLM=1)"
    elif not model.model_path().is_file():
        reason = f"no local model at {model.model_path()}: run `make llm` first"
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.llm)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def llm_url():
    from ouroboros.llm_demo import answers, wait_ready

    running = os.environ.get("OUROBOROS_LOCAL_MODEL_URL")
    if running:
        if not answers(running.removesuffix("/v1")):
            pytest.fail(f"OUROBOROS_LOCAL_MODEL_URL={running} does not answer; start `ouroboros serve-model` or unset it")
        yield running
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "serve-model", "--port", str(port)],
                            start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=3000)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
