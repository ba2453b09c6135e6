"""The dashboard served for real (uvicorn on a free port) and driven by urllib and headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the dashboard extra: pip install 'ouroboros[dashboard]'")
import uvicorn  # noqa: E402

from ouroboros.dashboard.app import create_app  # noqa: E402
from ouroboros.ledger import Experiment, Ledger, Run  # noqa: E402
from ouroboros.memory import build_prompt  # noqa: E402
from ouroboros.task import load_task  # noqa: E402
from ouroboros.testing import cli  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TOKEN = "test-token-123"
XSS = '<img src=x onerror="window.__xss=1">'


@contextmanager
def serving(task_dir: Path | None = None, study_dir: Path | None = None) -> Iterator[str]:
    """The dashboard on 127.0.0.1 in a thread; yields its base address (no token)."""
    app = create_app(task_dir, study_dir, token=TOKEN, poll_s=0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        thread.join(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def get(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, str, dict]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def hostile_run(task_dir: Path) -> None:
    """A run whose agent wrote markup into every field the dashboard shows."""
    ledger = Ledger(task_dir / ".ouroboros")
    ledger.save_run(Run("evil", agent="cmd:x", metric="loss", status="finished", config={"max_experiments": 2}))
    ledger.finish(Experiment("evil", 0, commit_sha="a" * 40, parent="a" * 40, status="keep", metric=2.0,
                             description="baseline"))
    exp_dir = ledger.exp_dir("evil", 1)
    (exp_dir / "diff.patch").write_text(f"--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-X = 1\n+X = 2  # {XSS}\n")
    (exp_dir / "run.log").write_text(f"loss: 1.0 <script>window.__xss=2</script> {XSS}\n")
    ledger.finish(Experiment("evil", 1, commit_sha="b" * 40, parent="a" * 40, status="violation",
                             reason=f"edited a protected file {XSS}", description=f"tune X {XSS}"))
    ledger.close()


def test_every_request_needs_the_token_and_writes_need_the_csrf_header(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "-n", "1", "--tag", "t", check=True)
    with serving(quadratic) as base:
        for path in ("/", "/run/t", "/api/runs", "/api/run/t/exp/1", "/static/run.js"):
            assert get(base + path)[0] == 401, path
            assert get(base + path + "?token=wrong")[0] == 403, path
        status, _, headers = get(f"{base}/?token={TOKEN}")
        assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
        assert get(f"{base}//evil.example/x?token={TOKEN}")[2]["location"] == "/evil.example/x"  # stays here
        cookie = headers["set-cookie"]
        assert f"={TOKEN}" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        name = cookie.split("=")[0]
        status, page, headers = get(base + "/run/t", {"Cookie": f"{name}={TOKEN}"})
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        body = json.dumps({"text": "try smaller steps"}).encode()
        with_token = {"Cookie": f"{name}={TOKEN}", "Content-Type": "application/json"}
        status, text, _ = get(base + "/api/run/t/guidance", with_token, body)
        assert status == 403 and "X-Ouroboros-CSRF" in text  # a cross-site form would carry the cookie
        csrf = page.split('name="ouroboros-csrf" content="')[1].split('"')[0]
        status, _, _ = get(base + "/api/run/t/guidance",
                           {**with_token, "X-Ouroboros-CSRF": csrf, "Origin": "http://evil.example"}, body)
        assert status == 403
        assert get(base + "/api/run/t/guidance", {"Content-Type": "application/json", "X-Ouroboros-CSRF": csrf},
                   body)[0] == 401
        assert not (quadratic / ".ouroboros" / "runs" / "t" / "guidance.md").exists()
        status, text, _ = get(base + "/api/run/t/guidance", {**with_token, "X-Ouroboros-CSRF": csrf},
                              json.dumps({"text": "a\x00b"}).encode())
        assert status == 400 and "NUL" in text
        assert get(base + "/api/run/t/guidance", {**with_token, "X-Ouroboros-CSRF": csrf}, body)[0] == 200
        assert (quadratic / ".ouroboros" / "runs" / "t" / "guidance.md").read_text() == "try smaller steps"


def test_the_ledger_is_opened_read_only(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "-n", "1", "--tag", "t", check=True)
    from ouroboros.dashboard.reader import Source

    source = Source(quadratic)
    with pytest.raises(Exception, match="readonly"):
        source.db.execute("DELETE FROM experiments")
    assert [r["tag"] for r in source.runs()] == ["t"]
    source.close()


def test_lineage_hangs_each_experiment_under_its_parent_and_survives_unknown_parents(tmp_path: Path) -> None:
    from ouroboros.dashboard.reader import Source

    task = tmp_path / "task"
    ledger = Ledger(task / ".ouroboros")
    ledger.save_run(Run("tree", metric="loss"))
    for n, parent, status in [(0, "c0", "keep"), (1, "c0", "keep"), (2, "c0", "keep"), (3, "c1", "discard"),
                              (4, "gone", "discard")]:
        ledger.finish(Experiment("tree", n, commit_sha=f"c{n}", parent=parent, status=status, metric=float(n)))
    ledger.close()
    source = Source(task)
    nodes, tree = source.lineage("tree")
    assert tree  # experiment 3 started from 1, not from the latest keep (2)
    assert [(n["n"], n["depth"]) for n in nodes] == [(0, 0), (1, 1), (3, 2), (2, 1), (4, 1)]
    source.close()


def test_secrets_in_the_dashboards_environment_are_redacted_from_what_it_shows(quadratic: Path,
                                                                               monkeypatch) -> None:
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    ledger = Ledger(quadratic / ".ouroboros")
    ledger.save_run(Run("k", metric="loss", status="finished"))
    ledger.finish(Experiment("k", 0, status="keep", metric=1.0, description=f"baseline {key}"))
    (ledger.exp_dir("k", 0) / "agent.log").write_text(f"env: OPENAI_API_KEY={key}\n")
    ledger.close()
    with serving(quadratic) as base:
        rows = get(base + "/api/run/k", {"X-Ouroboros-Token": TOKEN})[1]
        detail = json.loads(get(base + "/api/run/k/exp/0", {"X-Ouroboros-Token": TOKEN})[1])
    assert key not in rows and "baseline [redacted]" in rows
    assert detail["agent_log"] == "env: OPENAI_API_KEY=[redacted]\n"


def test_cli_prints_the_tokened_address_and_warns_when_listening_beyond_localhost(quadratic: Path) -> None:
    cli("run", "-C", str(quadratic), "-n", "1", "--tag", "t", check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "dashboard", "-C", str(quadratic), "--host",
                             "0.0.0.0", "--port", str(port)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    try:
        warning, address = proc.stdout.readline(), proc.stdout.readline()
        assert warning.startswith("warning: listening on 0.0.0.0") and "token is required" in warning
        url = address.split()[1]
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        for _ in range(100):
            try:
                status = get(f"http://127.0.0.1:{port}/")[0]
                break
            except OSError:
                proc.poll()
                assert proc.returncode is None
                threading.Event().wait(0.1)
        assert status == 401
        assert get(url)[0] == 303
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_task_without_runs_is_a_one_line_error(quadratic: Path) -> None:
    proc = cli("dashboard", "-C", str(quadratic))
    assert proc.returncode == 2 and "no runs yet" in proc.stderr and "ouroboros run" in proc.stderr


def test_a_missing_extra_is_one_line_with_the_install_command(quadratic: Path) -> None:
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['ouroboros', 'dashboard', '-C', sys.argv[1]]\n"
            "from ouroboros.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(quadratic)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "pip install 'ouroboros[dashboard]'" in proc.stderr


def test_help_does_not_import_the_web_framework() -> None:
    code = ("import sys, runpy; sys.argv = ['ouroboros', '--help']\n"
            "try: runpy.run_module('ouroboros.cli', run_name='__main__')\nexcept SystemExit: pass\n"
            "print('LOADED' if 'fastapi' in sys.modules or 'uvicorn' in sys.modules else 'LAZY')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "dashboard" in proc.stdout and proc.stdout.strip().endswith("LAZY")


def test_study_page_shows_progress_and_the_reports_statistics(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    conds = {}
    for c, offset in (("random", 0.0), ("tpe", -1.0)):
        ledger = Ledger(folder / "conditions" / c / ".ouroboros")
        for k in range(3):
            tag = f"s-{c}-r{k}"
            ledger.save_run(Run(tag, agent=c, metric="loss", study="s", condition=c,
                                status="finished" if k < 2 else "running"))
            for n in range(3):
                ledger.finish(Experiment(tag, n, status="keep", metric=5.0 - n + offset - 0.1 * k))
        ledger.close()
        conds[c] = str(folder / "conditions" / c)
    (folder / "study.json").write_text(json.dumps({"study": {"name": "s", "repeats": 4, "conditions": [
        {"name": c, "agent": c} for c in conds]}, "conditions": conds}))
    with serving(study_dir=folder) as base:
        status, page, _ = get(base + "/study", {"X-Ouroboros-Token": TOKEN})
        curves = json.loads(get(base + "/api/study", {"X-Ouroboros-Token": TOKEN})[1])["curves"]
    assert status == 200
    assert sorted((c["tag"], c["best"][-1]) for c in curves if c["condition"] == "tpe") == [
        ("s-tpe-r0", 2.0), ("s-tpe-r1", 1.9)]  # finished runs only
    rows = page.split('<table id="progress"')[1].split("</table>")[0]
    assert "<td class=\"text\">random</td><td>2</td><td>1</td><td>0</td><td>1</td>" in rows  # 2 done, 1 running, 1 queued
    assert "Mann-Whitney" in page and "too few finished runs" not in page
    assert "<td class=\"text\">tpe</td><td>2</td><td>1.95</td>" in page  # median of finished finals 2.0 and 1.9


# -- in a real browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip("needs Debian chromium at /usr/bin/chromium (make system)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        yield b
        b.close()


def test_runs_started_elsewhere_show_up_and_new_experiments_arrive_without_reload(quadratic: Path, browser) -> None:
    cli("run", "-C", str(quadratic), "-n", "2", "--tag", "live", check=True)  # another process
    with serving(quadratic) as base:
        page = browser.new_page()
        page.goto(f"{base}/?token={TOKEN}")
        page.wait_for_selector('#runs tr[data-tag="live"]')
        page.click('#runs tr[data-tag="live"] a')
        page.wait_for_selector("#exp-2")
        page.evaluate("window.__sameDocument = true")
        resumed = subprocess.Popen([sys.executable, "-m", "ouroboros.cli", "run", "-C", str(quadratic), "--resume",
                                    "live", "-n", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            page.wait_for_selector("#exp-4", timeout=120_000)  # the run's own speed is not under test
        finally:
            assert resumed.wait(120) == 0, resumed.stderr.read() if resumed.stderr else ""
        assert page.evaluate("window.__sameDocument") is True  # arrived by events, not a reload
        assert page.locator("#chart circle").count() >= 5
        page.uncheck('#filters input[value="discard"]')
        assert page.locator("#exps td.discard").count() == 0 and page.locator("#exps td.keep").count() >= 1
        page.check('#filters input[value="discard"]')
        page.click('#exps th[data-key="metric"]')  # ascending: the best (lowest loss) first
        metrics = [float(t) for t in page.locator("#exps tbody tr td:nth-child(3)").all_inner_texts() if t != "-"]
        assert metrics == sorted(metrics)
        page.click("#exp-3")
        page.wait_for_selector("#detail:not([hidden])")
        diff = (quadratic / ".ouroboros" / "runs" / "live" / "exp" / "3" / "diff.patch").read_text()
        added = next(line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
        page.wait_for_function("() => document.querySelector('#d-n').textContent === '3'")
        assert added in page.locator("#d-diff .add").all_inner_texts()
        assert page.locator("#d-metrics").inner_text().strip().startswith("{")
        page.close()


def test_agent_written_markup_is_shown_as_text_and_runs_nothing(tmp_path: Path, browser) -> None:
    task = tmp_path / "task"
    hostile_run(task)
    with serving(task) as base:
        page = browser.new_page()
        page.goto(f"{base}/run/evil?token={TOKEN}")
        page.wait_for_selector("#exp-1")
        assert XSS in page.locator("#exp-1 td.desc").inner_text()
        page.click("#exp-1")
        page.wait_for_selector("#detail:not([hidden])")
        assert XSS in page.locator("#d-diff").inner_text() and "<script>" in page.locator("#d-runlog").inner_text()
        assert XSS in page.locator("#d-guard").inner_text()
        page.goto(f"{base}/run/evil/lineage")
        assert XSS in page.locator("#lineage").inner_text()
        page.goto(f"{base}/")
        assert page.locator("img").count() == 0
        assert page.evaluate("window.__xss") is None
        page.close()


def test_the_running_experiments_log_is_tailed_live(tmp_path: Path, browser) -> None:
    task = tmp_path / "task"
    ledger = Ledger(task / ".ouroboros")
    ledger.save_run(Run("r", metric="loss", status="running", config={"budget": 60}))
    ledger.finish(Experiment("r", 0, status="keep", metric=1.0, description="baseline"))
    ledger.begin(Experiment("r", 1, status="running", description="trying"))
    log = ledger.exp_dir("r", 1) / "run.log"
    log.write_text("step 1 loss 0.9\n")
    with serving(task) as base:
        page = browser.new_page()
        page.goto(f"{base}/run/r?token={TOKEN}")
        page.wait_for_function("() => document.querySelector('#tail').textContent.includes('step 1 loss 0.9')")
        with open(log, "a") as f:
            f.write("step 2 loss <b>0.8</b>\n")
        page.wait_for_function("() => document.querySelector('#tail').textContent.includes('step 2 loss <b>0.8</b>')")
        assert page.locator("#tail-n").inner_text() == "#1" and page.locator("#tail b").count() == 0
        assert "experiment 1 running" in page.locator("#summary").inner_text()
        page.close()
    ledger.close()


def test_guidance_saved_on_the_page_is_in_the_next_prompt(quadratic: Path, browser) -> None:
    cli("run", "-C", str(quadratic), "-n", "1", "--tag", "g", check=True)
    note = "Try a smaller LEARNING_RATE first; <b>not</b> bigger."
    with serving(quadratic) as base:
        page = browser.new_page()
        page.goto(f"{base}/run/g?token={TOKEN}")
        page.fill("#guidance", note)
        page.click("#save-guidance")
        page.wait_for_function("() => document.querySelector('#guidance-status').textContent.startsWith('saved')")
        page.close()
    task = load_task(quadratic)
    prompt = build_prompt(task, quadratic, [], quadratic / ".ouroboros" / "runs" / "g")
    assert f"# Guidance from a person (guidance.md)\n\n{note}" in prompt
