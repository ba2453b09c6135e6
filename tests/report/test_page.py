"""The report written from ledgers, and the page opened in headless Chromium (no network)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ouroboros.ledger import Experiment, Ledger, Run
from ouroboros.report import build, data, load

CHROMIUM = "/usr/bin/chromium"


def fake_study(folder: Path, runs: int = 3, exps: int = 8) -> Path:
    """A study folder with a manifest and one ledger per condition, written straight to the ledger."""
    import json
    import random

    rng = random.Random(1)
    conds = {}
    for cond in ("random", "tpe"):
        task_dir = folder / "conditions" / cond
        ledger = Ledger(task_dir / ".ouroboros")
        for k in range(runs):
            tag = f"s-{cond}-r{k}"
            ledger.save_run(Run(tag, agent=cond, metric="loss", study="s", condition=cond, seed=k,
                                status="finished", config={"budget": 1.0, "max_experiments": exps}))
            best = 10.0
            for n in range(exps + 1):
                m = best * rng.uniform(0.8, 1.2) if n else best
                keep = n == 0 or m < best
                best = m if keep else best
                ledger.finish(Experiment(tag, n, status="keep" if keep else "discard", metric=m,
                                         description=f"[{rng.choice(['lr', 'arch'])}] idea {n}", started=n,
                                         finished=n + 1.0))
        ledger.close()
        conds[cond] = str(task_dir)
    manifest = {"study": {"name": "s", "task": ".", "repeats": runs, "limits": {"max_experiments": exps},
                          "conditions": [{"name": c, "agent": c} for c in conds]}, "conditions": conds}
    (folder / "study.json").write_text(json.dumps(manifest))
    return folder


def test_study_report_writes_png_svg_html_and_the_numbers(tmp_path: Path) -> None:
    folder = fake_study(tmp_path / "study")
    page = build.study_report(folder, tmp_path / "out")
    for stem in ("gain", "best_so_far", "per_run", "categories"):
        assert (tmp_path / "out" / f"{stem}.png").stat().st_size > 1000
        ET.parse(tmp_path / "out" / f"{stem}.svg")  # well-formed SVG
    text = page.read_text()
    assert text.count("<svg") == 4 and not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "Mann-Whitney" in text and "<td>tpe</td>" in text
    for words in ("gain 95% CI", "Cliff&#39;s delta", "Holm p", "Every run&#39;s baseline measured loss = 10"):
        assert words in text
    assert "no significant difference" in text or "gained more than" in text
    _, runs = load.study_runs(folder)
    assert set(data.box_notes(runs)["sessions"]) == {"random", "tpe"}  # written on the figure, not zeros
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())["runs"]) == 6
    _, runs = load.study_runs(folder)
    assert len(runs) == 6 and [r.seed for r in runs] == [0, 1, 2, 0, 1, 2]
    assert {r.condition for r in runs} == {"random", "tpe"}


def test_report_cli_single_run_view(quadratic: Path, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    run = [sys.executable, "-m", "ouroboros.cli"]
    subprocess.run([*run, "run", "-C", str(quadratic), "-n", "3", "--tag", "t"], check=True, env=env,
                   capture_output=True)
    proc = subprocess.run([*run, "report", "-C", str(quadratic), "--run", "t", "--out", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "r" / "index.html").read_text()
    experiments = html.split("<h2>experiments</h2>")[1].split("</table>")[0]
    assert "baseline" in html and experiments.count("<tr>") == 5  # header + 4 experiments
    assert 'id="lineage"' in html and "changes whose descendants improved most" in html
    bad = subprocess.run([*run, "report", "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--study" in bad.stderr


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")
def test_page_renders_every_figure_offline_in_headless_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    page_path = build.study_report(fake_study(tmp_path / "study"), tmp_path / "out")
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            figures = page.locator("figure svg")
            assert figures.count() == 4
            for i in range(figures.count()):
                box = figures.nth(i).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 100
                # the SVG drew something: paths inside it have a size too
                assert figures.nth(i).locator("path").count() > 10
            assert page.locator("table#summary tbody tr").count() == 2
            assert page.locator("table#pairs tbody tr").count() == 1
            assert page.locator("#findings p").count() == 2
        finally:
            browser.close()
    assert all(u.startswith("file://") for u in requests), requests


def test_a_study_report_warns_about_a_condition_whose_records_were_changed(tmp_path: Path) -> None:
    import io
    import sqlite3

    from rich.console import Console

    from ouroboros import views

    folder = fake_study(tmp_path / "study", runs=1, exps=3)
    said = io.StringIO()
    views.warn_study(Console(file=said, width=300), folder)
    assert said.getvalue() == ""  # records as Ouroboros wrote them: nothing to say
    with sqlite3.connect(folder / "conditions" / "tpe" / ".ouroboros" / "ledger.sqlite") as db:
        db.execute("UPDATE experiments SET metric = 0.001 WHERE n = 3")
    views.warn_study(Console(file=said, width=300), folder)
    out = said.getvalue()
    assert "do not verify" in out and str(folder / "conditions" / "tpe") in out
    assert str(folder / "conditions" / "random") not in out
    from ouroboros.testing import cli

    shown = cli("report", "--study", str(folder), "--out", str(tmp_path / "out"))
    assert shown.returncode == 0, shown.stderr
    assert "do not verify" in shown.stderr and (tmp_path / "out" / "index.html").is_file()
