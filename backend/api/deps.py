"""Dependencies of the routes: settings, a database session, the runner and result stores, and auth.

Auth: on a loopback bind address (127.0.0.0/8, ::1, localhost) every request is allowed. On any other address
every request needs `Authorization: Bearer <token>`: a write token may do anything; a share token (read scope,
pinned to one run) may only read its run, and only it may come as `?token=` on a GET (share links, EventSource).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from backend.jobs import Runner
from backend.settings import Settings
from backend.store.folders import RunFolders, UnitsCache
from backend.store.tables import Job, Run, Token, utcnow
from backend.store.tokens import check_token

LAST_USED_EVERY = timedelta(minutes=1)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_runner(request: Request) -> Runner:
    return request.app.state.runner


def get_folders(request: Request) -> RunFolders:
    return request.app.state.folders


def get_units_cache(request: Request) -> UnitsCache:
    return request.app.state.units


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
FoldersDep = Annotated[RunFolders, Depends(get_folders)]
UnitsDep = Annotated[UnitsCache, Depends(get_units_cache)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: `token` is None on a loopback server (everything allowed)."""

    token: Token | None = None

    @property
    def can_write(self) -> bool:
        return self.token is None or self.token.scope == "write"

    @property
    def run_scope(self) -> str | None:
        """The one run a share token may read; None for a caller that may read every run."""
        return self.token.run_id if self.token is not None and self.token.scope == "read" else None

    def check_run(self, run_id: str) -> None:
        if self.run_scope is not None and self.run_scope != run_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token may read only the run it was shared for")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def get_caller(request: Request, session: SessionDep, settings: SettingsDep) -> Caller:
    if settings.loopback:
        return Caller()
    header = request.headers.get("authorization", "")
    scheme, _, plain = header.partition(" ")
    if header and scheme.lower() != "bearer":
        raise _unauthorized("the Authorization header must be 'Bearer <token>'")
    plain, in_query = plain.strip(), False
    if not plain and request.method in ("GET", "HEAD"):
        plain, in_query = request.query_params.get("token", ""), True
    if not plain:
        raise _unauthorized("this server needs a token: send 'Authorization: Bearer <token>' "
                            "(make one with `ssah tokens create`, or use a share link)")
    token, why = check_token(session, plain)
    if token is None:
        raise _unauthorized(why)
    if in_query and token.scope != "read":  # URLs end up in logs, histories and Referer headers
        raise _unauthorized("a write token is taken only from the header 'Authorization: Bearer <token>', never "
                            "from ?token= (that is for read-only share links)")
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_EVERY:  # not a write per request
        token.last_used_at = now
        session.commit()
    return Caller(token)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_write(caller: CallerDep) -> Caller:
    if not caller.can_write:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token is read-only (a share token cannot write)")
    return caller


WriterDep = Annotated[Caller, Depends(require_write)]


def get_run(run_id: str, session: SessionDep, caller: CallerDep) -> Run:
    """The run named in the path, if the caller may read it."""
    caller.check_run(run_id)
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run {run_id!r}")
    return run


def get_job(job_id: str, session: SessionDep, caller: CallerDep) -> Job:
    """The job named in the path, if the caller may read its run."""
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    caller.check_run(job.run_id or "")
    return job


RunDep = Annotated[Run, Depends(get_run)]
JobDep = Annotated[Job, Depends(get_job)]
