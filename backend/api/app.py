"""The FastAPI app: `create_app(settings)` serves the REST contract under /api/v1 (OpenAPI at /docs).

Start-up is light (no torch): the app opens the database, fails jobs whose worker was lost, starts the runner and
imports the engine in the background. Other apps (the Dash dashboard) are mounted beside the API with `mounts`.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.jobs import Runner, make_runner
from backend.jobs.runner import recover_lost_jobs
from backend.settings import Settings
from backend.store.db import make_engine, session_factory
from backend.store.folders import RunFolders, UnitsCache

from .docs import serve_docs
from .logs import protect_logs
from .routes import catalog, compare, jobs, runs, shares, tokens, units

API_PREFIX = "/api/v1"
log = logging.getLogger("ssah.api")


def _preload_engine(default_model: str) -> None:
    """Import torch and the engine once, off the request path, so the first request that needs them is quick; and
    build the default model's tokenizer (a submit checks row lengths with it; from a GGUF that takes a while)."""
    try:
        import backend.engine.data  # noqa: F401
        import backend.engine.inspect  # noqa: F401
        import backend.engine.roles  # noqa: F401
        from backend.engine import models

        if default_model in models.BUILTIN_MODELS:
            models.load_tokenizer(default_model)
    except Exception:
        log.exception("could not preload the engine")


class BodyLimit:
    """413 (as JSON) for a request body over `max_bytes`, whether it says its length or streams chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=413)

    @property
    def detail(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes (SSAH_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._too_large()(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=self.detail)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except HTTPException as error:
            if error.status_code != 413 or started:
                raise
            await self._too_large()(scope, receive, send)


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class NoSuchRoute:
    """The ASGI app behind every path under /api/v1 that no API route serves for the request's method, whatever
    the method (TRACE, PROPFIND, ...): JSON 404, or 405 with Allow when the path exists for other methods, so a
    client never gets the dashboard's HTML page for an API path."""

    def __init__(self, app: FastAPI):
        self.app = app

    def allowed(self, scope: Scope) -> set[str]:
        from starlette.routing import Match, Mount

        methods: set[str] = set()
        for route in self.app.router.routes:
            if isinstance(route, Mount) or getattr(route, "app", None) is self:
                continue
            methods |= {m for m in METHODS if route.matches({**scope, "method": m})[0] == Match.FULL}
        return methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.allowed(scope)
        if methods:
            answer = JSONResponse({"detail": f"Method Not Allowed: {scope['method']} {scope['path']} answers "
                                             f"{', '.join(sorted(methods))}"},
                                  status_code=405, headers={"Allow": ", ".join(sorted(methods))})
        else:
            answer = JSONResponse({"detail": f"no API route {scope['path']}; the routes are listed at /docs"},
                                  status_code=404)
        await answer(scope, receive, send)


def no_such_route(app: FastAPI) -> None:
    """Answer JSON for every other path and method under /api/v1 (see NoSuchRoute); registered after the API's
    routes and before any mount. A route whose endpoint is an ASGI app and whose methods are None takes any
    method."""
    missing = NoSuchRoute(app)
    for path in (API_PREFIX, API_PREFIX + "/{rest:path}"):
        app.router.add_route(path, missing, methods=None, include_in_schema=False)


def create_app(settings: Settings | None = None, *, runner: Runner | None = None,
               mounts: Mapping[str, ASGIApp] | None = None) -> FastAPI:
    """The service. `runner` defaults to the one the settings name; `mounts` maps paths to ASGI apps served
    beside the API (e.g. {"/": dashboard}; wrap a WSGI app with a2wsgi's WSGIMiddleware)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        protect_logs()  # the server has configured its logging by now
        state = app.state
        lost = recover_lost_jobs(state.sessions, state.folders, settings)
        if lost:
            log.warning("%d job(s) whose worker was lost (queued again or failed): %s", len(lost), ", ".join(lost))
        state.folders.clean_partials(keep=_running_run_ids(state.sessions))
        if settings.preload_engine:
            threading.Thread(target=_preload_engine, args=(settings.default_model,), name="ssah-preload",
                             daemon=True).start()
        state.runner.start()
        try:
            yield
        finally:
            state.runner.stop()

    app = FastAPI(title="ssah-dashboard", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  summary="Score, classify, prune and freeze the units of a causal LM (Superficial Safety "
                          "Alignment Hypothesis).")
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.folders = RunFolders(settings.runs_dir)
    app.state.units = UnitsCache()
    app.state.runner = runner if runner is not None else make_runner(settings)

    for module in (runs, units, jobs, shares, compare, tokens, catalog):
        app.include_router(module.router, prefix=API_PREFIX)
    no_such_route(app)
    serve_docs(app)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, without echoing the input back (it may hold NaN or lone surrogates, not valid JSON)."""
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    for path, mounted in (mounts or {}).items():
        app.mount(path, mounted)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def _running_run_ids(sessions) -> set[str]:
    from sqlalchemy import select

    from backend.store.tables import Job

    with sessions() as session:
        return set(session.scalars(select(Job.run_id).where(Job.status == "running", Job.run_id.is_not(None))))
