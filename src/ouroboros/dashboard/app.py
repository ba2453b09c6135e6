"""The dashboard's web app: pages, a JSON API and server-sent events, behind a per-start token.

Stops: requests without the token (every path, static files included: 401 without one, 403 with a
wrong one); cross-site writes (the one write, guidance.md, needs POST with a CSRF header that only
the dashboard's own pages know, and a same-origin Origin where the browser sends one); script in
agent-written text (templates autoescape, the page's scripts set textContent only, and the
Content-Security-Policy allows no inline script at all). Does not stop: someone who can read the
token (it is printed on the terminal and kept in a cookie) or the user's own account.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sse_starlette.sse import EventSourceResponse

from ouroboros.dashboard import reader
from ouroboros.dashboard.study import StudyView
from ouroboros.errors import OuroborosError

HERE = Path(__file__).parent
TAIL_LIVE = 8_000
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"),
                         autoescape=select_autoescape(default=True, default_for_string=True))


class Sources:
    """The task folders the dashboard shows: one with -C, one per condition with --study."""

    def __init__(self, task_dirs: list[Path]):
        self.task_dirs = task_dirs
        self._open: dict[Path, reader.Source] = {}

    def all(self) -> list[reader.Source]:
        for d in self.task_dirs:  # a study's condition gets its ledger when its first run starts
            if d not in self._open and (d / ".ouroboros" / "ledger.sqlite").is_file():
                self._open[d] = reader.Source(d)
        return [self._open[d] for d in self.task_dirs if d in self._open]

    def find(self, tag: str) -> reader.Source:
        for s in self.all():
            if s.db.execute("SELECT 1 FROM runs WHERE tag=?", (tag,)).fetchone():
                return s
        raise HTTPException(404, f"no run {tag!r}")

    def close(self) -> None:
        for s in self._open.values():
            s.close()


def create_app(task_dir: Path | None = None, study_dir: Path | None = None, token: str | None = None,
               poll_s: float = 0.5, cookie: str = "ouroboros_token") -> FastAPI:
    """The app for one task's runs or one study's; `token` is required on every request."""
    token = token or secrets.token_urlsafe(24)
    csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()
    study = StudyView(study_dir) if study_dir is not None else None
    sources = Sources(study.task_dirs if study else [Path(task_dir or ".").resolve()])
    if not sources.all() and study is None:
        raise OuroborosError(f"no runs yet in {task_dir}; start one with `ouroboros run -C {task_dir} -n 10`")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        sources.close()

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.token, app.state.sources = token, sources

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            if request.method == "GET":  # the token leaves the address bar and history
                query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                path = "/" + request.url.path.lstrip("/")  # never `//host`: a redirect off this server
                response: Response = RedirectResponse(path + (f"?{query}" if query else ""), 303)
            else:
                response = await call_next(request)
            response.set_cookie(cookie, token, httponly=True, samesite="strict", path="/")
            return _harden(response)
        held = request.cookies.get(cookie) or request.headers.get("x-ouroboros-token")
        if held is None and given is None:
            return _harden(Response("token required: open the address `ouroboros dashboard` printed\n", 401,
                                    media_type="text/plain"))
        if not hmac.compare_digest((held or "").encode(), token.encode()):
            return _harden(Response("wrong token: open the address `ouroboros dashboard` printed\n", 403,
                                    media_type="text/plain"))
        return _harden(await call_next(request))

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(name: str, **values: Any) -> HTMLResponse:
        return HTMLResponse(_TEMPLATES.get_template(name).render(csrf=csrf, study=study is not None, **values))

    @app.get("/", response_class=HTMLResponse)
    async def runs_page() -> HTMLResponse:
        return page("runs.html", runs=[r for s in sources.all() for r in s.runs()])

    @app.get("/run/{tag}", response_class=HTMLResponse)
    async def run_page(tag: str) -> HTMLResponse:
        source = sources.find(tag)
        guidance = reader.read_tail(source.run_dir(tag) / "guidance.md", reader.GUIDANCE_MAX) or ""
        return page("run.html", run=source.run(tag), guidance=guidance)

    @app.get("/run/{tag}/lineage", response_class=HTMLResponse)
    async def lineage_page(tag: str) -> HTMLResponse:
        source = sources.find(tag)
        nodes, tree = source.lineage(tag)
        return page("lineage.html", run=source.run(tag), nodes=nodes, tree=tree)

    @app.get("/study", response_class=HTMLResponse)
    async def study_page() -> HTMLResponse:
        if study is None:
            raise HTTPException(404, "started with -C TASK: no study here (start with --study DIR)")
        return page("study.html", view=study.view(sources.all()))

    @app.get("/api/study")
    async def api_study() -> dict:
        """Each finished run's best-so-far curve (the report's own), by condition."""
        if study is None:
            raise HTTPException(404, "started with -C TASK: no study here")
        stats = study.view(sources.all())["stats"]
        return {"curves": stats["curves"] if stats else [], "conditions": list(study.conditions)}

    @app.get("/api/runs")
    async def api_runs() -> list[dict]:
        return [r for s in sources.all() for r in s.runs()]

    @app.get("/api/run/{tag}")
    async def api_run(tag: str) -> JSONResponse:
        """The run page's data: the run and every experiment's table row."""
        source = sources.find(tag)
        return JSONResponse({"run": source.run(tag), "table": source.table(tag), "now": time.time()})

    @app.get("/api/run/{tag}/exp/{n}")
    async def api_experiment(tag: str, n: int) -> dict:
        source = sources.find(tag)
        try:
            return source.experiment(tag, n)
        except KeyError:
            raise HTTPException(404, f"no experiment {n} in run {tag!r}") from None

    @app.get("/api/run/{tag}/events")
    async def events(tag: str, request: Request, since: float = 0.0) -> EventSourceResponse:
        source = sources.find(tag)
        return EventSourceResponse(_stream(source, tag, request, since, poll_s), ping=15)

    @app.post("/api/run/{tag}/guidance")
    async def guidance(tag: str, request: Request) -> dict:
        if not hmac.compare_digest(request.headers.get("x-ouroboros-csrf", "").encode(), csrf.encode()):
            raise HTTPException(403, "missing or wrong X-Ouroboros-CSRF header: save from the dashboard's page")
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
            raise HTTPException(403, f"cross-origin write refused (Origin {origin})")
        body = await request.body()
        try:
            text = json.loads(body)["text"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HTTPException(400, 'send JSON {"text": "..."}') from None
        try:
            path = reader.write_guidance(sources.find(tag).run_dir(tag), text)
        except OuroborosError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"saved": str(path.name), "bytes": len(text.encode())}

    return app


def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


async def _stream(source: reader.Source, tag: str, request: Request, since: float,
                  poll_s: float) -> AsyncIterator[dict]:
    """New and changed experiment rows, the run's summary, and the running experiment's log tail.

    Holds only cursors (the ledger's data_version, the last finished time, the log's size), so a
    stream that runs for hours keeps the same memory.
    """
    version, log_key = -1, None
    last_run = 0.0
    while not await request.is_disconnected():
        now = time.time()
        v = source.version()
        changed = v != version
        if changed:
            version = v
            table = source.table(tag, since=since)
            if table["rows"]:
                at = table["columns"].index("finished")
                since = max([since] + [r[at] for r in table["rows"] if r[at]])
                yield {"event": "exps", "data": json.dumps(table)}
        if changed or now - last_run >= 2:
            last_run = now
            yield {"event": "run", "data": json.dumps(source.run(tag))}
        n, log = source.current_log(tag)
        key = (n, reader.file_size(log) if log else -1)
        if key != log_key:
            log_key = key
            text = reader.redact(reader.read_tail(log, TAIL_LIVE), source.secrets) if log else None
            yield {"event": "tail", "data": json.dumps({"n": n, "text": text or ""})}
        await asyncio.sleep(poll_s)
