"""Make docs/dashboard.png, the README's picture of the run page, from a real quadratic run.

    PYTHONPATH=src python docs/dashboard_screenshot.py [--experiments 40] [--out docs/dashboard.png]

Scaffolds the quadratic task in a temporary folder, runs the random agent on it with the real CLI,
serves the dashboard on a free local port and photographs the run page in headless Chromium
(/usr/bin/chromium) with the best experiment's diff open.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from ouroboros.dashboard.app import create_app
from ouroboros.scaffold import from_template

TOKEN = "screenshot"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiments", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "dashboard.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        task = from_template(Path(tmp) / "quadratic", "quadratic")
        subprocess.run([sys.executable, "-m", "ouroboros.cli", "run", "-C", str(task), "--agent", "random",
                        "-n", str(args.experiments), "--tag", "demo"], check=True, stdout=subprocess.DEVNULL)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(task, token=TOKEN), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            thread.join(0.05)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/run/demo?token={TOKEN}")
                page.wait_for_selector(f"#exp-{args.experiments}")
                page.click('#exps th[data-key="metric"]')  # sort by the metric, ascending: the best first
                page.click("#exps tbody tr:first-child")
                page.wait_for_selector("#detail:not([hidden])")
                page.wait_for_timeout(300)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
