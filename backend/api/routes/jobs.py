"""Jobs: their state and result, a stream of their progress, and cancelling them."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from backend.store.tables import TERMINAL, Job

from ..actions import stop_job
from ..deps import CallerDep, JobDep, RunnerDep, SessionDep, WriterDep
from ..schemas import Deleted, JobList, JobOut, Status, errors

router = APIRouter(prefix="/jobs", tags=["jobs"])

EVENTS_POLL_S = 0.25
KEEPALIVE_S = 15.0


def job_out(job: Job) -> JobOut:
    out = JobOut.model_validate(job, from_attributes=True)
    return out.model_copy(update={"request": _public(job.request)})


def _public(request: dict) -> dict:
    """A job's request as the user gave it: without the server paths the worker reads sets from."""
    out = {k: v for k, v in request.items() if k not in ("paths", "data_path")}
    for part in ("sets", "check", "eval"):
        if isinstance(out.get(part), dict):
            out[part] = {k: v for k, v in out[part].items() if k != "paths"}
    return out


@router.get("", response_model=JobList, responses=errors(403))
def list_jobs(session: SessionDep, caller: CallerDep, run_id: str | None = None,
              kind: Literal["attribution", "preview", "sweep", "estimate", "finetune", "align", "inspect"] | None = None,
              status_: Status | None = Query(None, alias="status"),
              limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=2**31 - 1)) -> JobList:
    """Jobs, newest first, without their results (a share token sees only its run's)."""
    if caller.run_scope is not None:
        caller.check_run(run_id or caller.run_scope)
        run_id = caller.run_scope
    query = select(Job)
    for column, value in ((Job.run_id, run_id), (Job.kind, kind), (Job.status, status_)):
        if value is not None:
            query = query.where(column == value)
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = session.scalars(query.order_by(Job.created_at.desc()).limit(limit).offset(offset)).all()
    return JobList(data=[job_out(j).model_copy(update={"result": None}) for j in jobs], count=count or 0)


@router.get("/{job_id}", response_model=JobOut, responses=errors(403, 404))
def read_job(job: JobDep) -> JobOut:
    return job_out(job)


@router.delete("/{job_id}", response_model=Deleted, responses={
    202: {"model": Deleted, "description": "the job is running: its worker was asked to stop (status cancelling)"},
    **errors(403, 404, 409)})
def cancel_job(job: JobDep, _: WriterDep, session: SessionDep, runner: RunnerDep, response: Response) -> Deleted:
    """Cancel a queued job at once, or ask its worker to stop a running one (202; watch it end as cancelled)."""
    now = stop_job(session, runner, job, response)
    if now is not None:
        return Deleted(id=job.id, status=now)
    session.refresh(job)
    raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job.id} has already ended ({job.status})")


def _state(sessions, job_id: str) -> dict | None:
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        return {"id": job.id, "status": job.status, "progress": job.progress, "phase": job.phase, "error": job.error}


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`progress` events while the job changes, one `end` event when it ends"},
                       **errors(403, 404)})
async def job_events(job: JobDep, request: Request) -> StreamingResponse:
    """Server-sent events: `progress` with {id, status, progress, phase, error} on every change, then `end`."""
    sessions = request.app.state.sessions

    async def stream():
        last, quiet_since = None, time.monotonic()
        while True:
            state = await run_in_threadpool(_state, sessions, job.id)
            if state is None:
                yield f"event: end\ndata: {json.dumps({'id': job.id, 'status': 'deleted'})}\n\n"
                return
            if state != last:
                kind = "end" if state["status"] in TERMINAL else "progress"
                yield f"event: {kind}\ndata: {json.dumps(state)}\n\n"
                last, quiet_since = state, time.monotonic()
                if kind == "end":
                    return
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENTS_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
