"""Runs: attribute a model, read its units and roles, and start previews and fine-tunes on it."""
from __future__ import annotations

import io
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import FileResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.store import queue
from backend.store.models import ACTIVE, Job, Run, new_id
from backend.store.results import RunUnits

from .. import checks
from .jobs import stop_job
from ..deps import CallerDep, ResultsDep, RunDep, RunnerDep, SessionDep, SettingsDep, UnitsDep, WriterDep
from ..schemas import Accepted, Deleted, FinetuneCreate, PreviewCreate, RolesOut, RunCreate, RunList, RunOut, Status
from ..settings import Settings

router = APIRouter(prefix="/runs", tags=["runs"])
INTERNAL_SETTINGS = ("model_hash", "paths")  # what the worker needs, not what the user asked


def run_out(run: Run, job: Job | None, *, manifest: bool = True) -> RunOut:
    """A run as the API shows it: its status with its attribution job's progress and phase."""
    return RunOut(id=run.id, status=run.status, progress=job.progress if job else 1.0,
                  phase=job.phase if job else run.status, error=run.error, cached=run.cached, model=run.model,
                  settings={k: v for k, v in run.settings.items() if k not in INTERNAL_SETTINGS},
                  job_id=job.id if job else None, created_at=run.created_at, updated_at=run.updated_at,
                  manifest=run.manifest if manifest else None)


def check_room(session: Session, settings: Settings) -> None:
    """A full queue is a 429 with Retry-After, before anything is written."""
    if queue.queued_count(session) >= settings.max_queued_jobs:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            detail=f"the queue is full ({settings.max_queued_jobs} jobs waiting); try again later",
                            headers={"Retry-After": str(settings.retry_after_s)})


def finished_units(run: Run, results: ResultsDep, units: UnitsDep) -> RunUnits:
    """The cached units of a run that has succeeded (409 before that)."""
    if run.status != "succeeded" or not run.result_dir:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"run {run.id} is {run.status}; its units exist once it "
                                                             "has succeeded")
    return units.get(results.folder(run.result_dir))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
def create_run(body: RunCreate, _: WriterDep, session: SessionDep, settings: SettingsDep, runner: RunnerDep,
               results: ResultsDep) -> Accepted:
    """Queue an attribution; the same model, data and settings as a finished run are answered from the cache
    at once (status succeeded, cached true)."""
    model, model_path, run_settings, key = checks.check_run(body, settings)
    source = queue.cached_run(session, key)
    if source is not None:
        run_id = new_id()
        try:
            folder = results.copy(source.result_dir, run_id)
        except OSError:  # deleted meanwhile: compute it again
            folder = None
        if folder is not None:
            run, job = queue.add_cached_run(session, source, run_id=run_id, model=model, settings=run_settings,
                                            result_dir=folder)
            session.commit()
            return Accepted(id=run.id, status=run.status, job_id=job.id, cached=True)
    check_room(session, settings)
    run, job = queue.enqueue_run(session, model=model, model_path=model_path, settings=run_settings, cache_key=key)
    session.commit()
    runner.notify()
    return Accepted(id=run.id, status=run.status, job_id=job.id)


@router.get("", response_model=RunList)
def list_runs(session: SessionDep, caller: CallerDep, limit: int = Query(100, ge=1, le=1000),
              offset: int = Query(0, ge=0, le=2**31 - 1), status_: Status | None = Query(None, alias="status")) -> RunList:
    """Runs, newest first (a share token sees only its own run)."""
    query = select(Run)
    if caller.run_scope is not None:
        query = query.where(Run.id == caller.run_scope)
    if status_ is not None:
        query = query.where(Run.status == status_)
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    runs = session.scalars(query.order_by(Run.created_at.desc()).limit(limit).offset(offset)).all()
    jobs = queue.attribution_jobs(session, [r.id for r in runs])
    return RunList(data=[run_out(r, jobs.get(r.id), manifest=False) for r in runs], count=count or 0)


@router.get("/{run_id}", response_model=RunOut)
def read_run(run: RunDep, session: SessionDep) -> RunOut:
    return run_out(run, queue.attribution_job(session, run.id))


@router.delete("/{run_id}", response_model=Deleted)
def delete_run(run: RunDep, _: WriterDep, session: SessionDep, runner: RunnerDep, results: ResultsDep,
               units: UnitsDep, response: Response) -> Deleted:
    """Cancel a queued or running run; delete a finished one with its folder, previews and fine-tune records."""
    job = queue.attribution_job(session, run.id)
    if run.status in ACTIVE and job is not None:
        now = stop_job(session, runner, job, response)
        if now is not None:
            return Deleted(id=run.id, status=now)
        session.refresh(run)  # it finished meanwhile: delete it below
    for other in queue.active_jobs(session, run.id):
        if queue.cancel(session, other) == "cancelling":
            runner.cancel(other.id)
    folder = run.result_dir
    session.delete(run)
    session.commit()
    if folder:
        units.forget(results.folder(folder))
        results.remove(folder)
    return Deleted(id=run.id, status="deleted")


@router.get("/{run_id}/units", responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
def read_units(run: RunDep, results: ResultsDep, units: UnitsDep,
               format: Literal["json", "csv", "parquet"] = "json") -> Response:
    """One row per unit: layer, module, unit, params, score_safety, score_utility, z_safety, z_utility, role.
    Parquet is the run folder's own file; csv and json hold the same rows (json as a list of records)."""
    table = finished_units(run, results, units).table
    if format == "parquet":
        return FileResponse(results.folder(run.result_dir) / "units.parquet", filename=f"units-{run.id}.parquet",
                            media_type="application/vnd.apache.parquet")
    if format == "csv":
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="units-{run.id}.csv"'})
    return Response(table.to_json(orient="records", double_precision=15), media_type="application/json")


@router.get("/{run_id}/roles", response_model=RolesOut)
def read_roles(run: RunDep, results: ResultsDep, units: UnitsDep,
               h_ru: float | None = Query(None, ge=0, le=1), h_scu: float | None = Query(None, ge=0, le=1),
               h_ucu: float | None = Query(None, ge=0, le=1)) -> RolesOut:
    """Roles recomputed from the stored z-scores at other thresholds (default: the run's own), with counts and
    parameter fractions overall and per layer (as engine.roles.role_summary gives them)."""
    from backend.engine.roles import Thresholds

    indexed = finished_units(run, results, units)
    stored = run.settings.get("thresholds", {})
    asked = {"h_ru": h_ru, "h_scu": h_scu, "h_ucu": h_ucu}
    values = {k: v if v is not None else stored.get(k, Thresholds().as_dict()[k]) for k, v in asked.items()}
    try:
        thresholds = Thresholds(**values)
    except ValueError as error:
        raise checks.bad_field(("query", "h_ucu"), str(error)) from None
    return RolesOut(run_id=run.id, thresholds=thresholds.as_dict(), **indexed.roles.summary(thresholds))


def queue_job(session: Session, settings: Settings, runner, kind: str, run: Run, request: dict) -> Accepted:
    check_room(session, settings)
    job = queue.enqueue_job(session, kind, run.id, request)
    session.commit()
    runner.notify()
    return Accepted(id=job.id, status=job.status, job_id=job.id)


@router.post("/{run_id}/previews", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
def create_preview(run: RunDep, body: PreviewCreate, _: WriterDep, session: SessionDep, settings: SettingsDep,
                   runner: RunnerDep, results: ResultsDep, units: UnitsDep) -> Accepted:
    """Queue a preview: the run's model answers harmful and benign prompts as it is and with a unit group pruned;
    `GET /jobs/{id}` holds the generations side by side with verdicts once it is done."""
    request = checks.check_preview(body, finished_units(run, results, units).table, settings)
    return queue_job(session, settings, runner, "preview", run, request)


@router.post("/{run_id}/finetunes", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
def create_finetune(run: RunDep, body: FinetuneCreate, _: WriterDep, session: SessionDep, settings: SettingsDep,
                    runner: RunnerDep, results: ResultsDep, units: UnitsDep) -> Accepted:
    """Queue a fine-tune of the run's model with units frozen (or only some trained); the model folder lands in
    the results dir and the job's result reports the refusal check before and after."""
    request = checks.check_finetune(body, finished_units(run, results, units).table, settings)
    return queue_job(session, settings, runner, "finetune", run, request)
