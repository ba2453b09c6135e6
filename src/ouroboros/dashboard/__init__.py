"""`ouroboros dashboard`: a local web app showing runs and studies live (see app.py for what it stops).

Importing this package imports no web framework; `serve` does, so the CLI starts fast and a
missing [dashboard] extra is one line telling how to install it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from ouroboros.errors import OuroborosError

INSTALL = "pip install 'ouroboros[dashboard]'"


def load_app():
    """The app factory, or an OuroborosError naming the install line when the extra is missing."""
    try:
        from ouroboros.dashboard.app import create_app
    except ImportError as exc:
        raise OuroborosError(f"the dashboard needs its extra ({exc.name or exc} is missing): {INSTALL}") from None
    return create_app


def serve(task_dir: Path | None, study_dir: Path | None, host: str = "127.0.0.1", port: int = 8765,
          echo: Callable[[str], None] = print, token: str | None = None) -> None:
    """Start the dashboard and block until Ctrl-C; prints the address with its token first."""
    create_app = load_app()
    import uvicorn

    token = token or secrets.token_urlsafe(24)
    app = create_app(task_dir, study_dir, token=token, cookie=f"ouroboros_token_{port}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: listening on {host}: anyone who can reach port {port} and has the token can read every "
             "log and diff of these runs; the token is required all the same")
    echo(f"dashboard: http://{shown}:{port}/?token={token}  (Ctrl-C stops it)")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run()
    except OSError as exc:
        raise OuroborosError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
