"""What several routes do alike: refuse work when the queue is full, queue a job, stop one, read and send a finished
run's units, and take role thresholds from a query."""
from __future__ import annotations

import gzip

from fastapi import HTTPException, Query, Response, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from backend.settings import Settings
from backend.store import queue
from backend.store.folders import RunFolders, RunUnits, UnitsCache, units_bytes, units_parquet
from backend.store.tables import Job, Run

from . import checks
from .schemas import Accepted


def check_room(session: Session, settings: Settings) -> None:
    """A full queue is a 429 with Retry-After, before anything is written. The queue stays locked until the
    session commits the new job (or rolls back), so concurrent submits cannot overshoot the limit."""
    try:
        queue.admit(session, settings.max_queued_jobs)
    except queue.QueueFull:
        session.rollback()
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            detail=f"the queue is full ({settings.max_queued_jobs} jobs waiting); try again later",
                            headers={"Retry-After": str(settings.retry_after_s)}) from None


def finished_units(run: Run, folders: RunFolders, units: UnitsCache) -> RunUnits:
    """The cached units of a run that has succeeded (409 before that)."""
    if run.status != "succeeded" or not run.result_dir:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"run {run.id} is {run.status}; its units exist once it "
                                                             "has succeeded")
    return units.get(folders.folder(run.result_dir))


UNITS_MEDIA = {"csv": "text/csv", "json": "application/json", "arrow": "application/vnd.apache.arrow.stream",
               "parquet": "application/vnd.apache.parquet"}
COMPRESSIBLE = ("csv", "json", "arrow")  # parquet is compressed already


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (named, or `*`, with a q-value above 0)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return False
    return False


def units_response(run: Run, folders: RunFolders, units: UnitsCache, fmt: str, accept_encoding: str,
                   at=None) -> Response:
    """A finished run's units in `fmt`, with roles at the thresholds `at` (default: the run's own). At the run's
    own thresholds parquet is the run folder's own file and csv, json and arrow are encoded once and kept as files;
    at others the roles are recomputed, the thresholds named in the file name (and in Parquet's metadata). csv, json
    and arrow are sent gzipped (Content-Encoding) to a client that accepts it."""
    indexed = finished_units(run, folders, units)
    table, suffix = indexed.table, ""
    if at is not None:
        table = table.copy()
        table["role"] = indexed.roles.roles(at)
        suffix = "-" + "-".join(f"{k}{v:g}" for k, v in at.as_dict().items())
    name = {"csv": f"units-{run.id}{suffix}.csv", "arrow": f"units-{run.id}{suffix}.arrows",
            "parquet": f"units-{run.id}{suffix}.parquet"}.get(fmt)  # json is shown inline
    if fmt == "parquet":
        if at is None:
            return FileResponse(folders.folder(run.result_dir) / "units.parquet", filename=name,
                                media_type=UNITS_MEDIA[fmt])
        body = units_parquet(table, {"thresholds": at.as_dict(), "run": run.id})
        return Response(body, media_type=UNITS_MEDIA[fmt],
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    gzipped = fmt in COMPRESSIBLE and accepts_gzip(accept_encoding)
    headers = {"Vary": "Accept-Encoding"} | ({"Content-Encoding": "gzip"} if gzipped else {})
    if at is None:
        encoded = folders.encoded(run.result_dir, fmt, table, gzipped=gzipped)
        if encoded is not None:
            return FileResponse(encoded, media_type=UNITS_MEDIA[fmt], filename=name, headers=headers)
    body = units_bytes(table, fmt)  # other thresholds, or a read-only results folder: encoded on every request
    if gzipped:
        body = gzip.compress(body, 6)
    if name:
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return Response(body, media_type=UNITS_MEDIA[fmt], headers=headers)


def queue_job(session: Session, settings: Settings, runner, kind: str, run: Run, request: dict) -> Accepted:
    check_room(session, settings)
    job = queue.enqueue_job(session, kind, run.id, request)
    session.commit()
    runner.notify()
    return Accepted(id=job.id, status=job.status, job_id=job.id)


def stop_job(session, runner, job: Job, response: Response) -> str | None:
    """Cancel a queued job, or ask a running one's worker to stop (and answer 202); None if it had ended."""
    now = queue.cancel(session, job)
    session.commit()
    if now == "cancelling":
        runner.cancel(job.id)
        response.status_code = status.HTTP_202_ACCEPTED
    return now


def thresholds_of(run: Run, h_ru: float | None, h_scu: float | None, h_ucu: float | None):
    """The thresholds asked for, each defaulting to the run's own (422 when they do not fit together)."""
    from backend.engine.roles import Thresholds

    stored = run.settings.get("thresholds", {})
    asked = {"h_ru": h_ru, "h_scu": h_scu, "h_ucu": h_ucu}
    values = {k: v if v is not None else stored.get(k, Thresholds().as_dict()[k]) for k, v in asked.items()}
    try:
        return Thresholds(**values)
    except ValueError as error:
        raise checks.bad_field(("query", "h_ucu"), str(error)) from None


def lineage(session: Session, settings: Settings, model_path: str) -> dict:
    """Where a run's model came from: a fine-tune or alignment job of this service (its run is the parent), a
    folder with a report of `ssah finetune` / `ssah align`, or a base model."""
    import json
    from pathlib import Path

    path = Path(model_path)
    try:
        job_id = path.resolve().relative_to(settings.finetunes_dir.resolve()).parts[0]
    except (ValueError, IndexError, OSError):
        job_id = None
    job = session.get(Job, job_id) if job_id else None
    if job is not None and job.kind in ("finetune", "align"):
        result, request = job.result or {}, job.request or {}
        how = result.get("mode") or (request.get("config") or {}).get("mode")
        return {"parent_run": job.run_id, "origin": {"kind": job.kind, "job": job.id, "how": how,
                                                      "data": result.get("data")}}
    for report, kind in (("finetune.json", "finetune"), ("alignment.json", "align")):
        try:
            made = json.loads((path / report).read_text())
        except (OSError, ValueError):
            continue
        how = made.get("mode") or (made.get("config") or {}).get("mode")
        return {"parent_run": made.get("run_id"), "origin": {"kind": kind, "how": how,
                                                              "from": made.get("base_model") or made.get("model")}}
    return {"parent_run": None, "origin": {"kind": "base"}}


def fraction():
    """A threshold in the query (each parameter needs its own Query: FastAPI names a shared one after its first
    use)."""
    return Query(None, ge=0, le=1)
