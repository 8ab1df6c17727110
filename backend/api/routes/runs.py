"""Runs: attribute a model, read its units and roles, and start previews and fine-tunes on it."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import func, select

from backend.store import queue
from backend.store.tables import ACTIVE, Job, Run, new_id

from .. import checks
from ..actions import (
    check_room,
    finished_units,
    fraction,
    lineage,
    queue_job,
    stop_job,
    thresholds_of,
    units_response,
)
from ..deps import CallerDep, FoldersDep, RunDep, RunnerDep, SessionDep, SettingsDep, UnitsDep, WriterDep
from ..schemas import (
    Accepted,
    AlignCreate,
    Deleted,
    EstimateCreate,
    FinetuneCreate,
    PreviewCreate,
    RolesOut,
    RunCreate,
    RunList,
    RunOut,
    RunPatch,
    Status,
    SweepCreate,
    errors,
)

router = APIRouter(prefix="/runs", tags=["runs"])
INTERNAL_SETTINGS = ("model_hash", "paths")  # what the worker needs, not what the user asked
THRESHOLDS_HEADER = "X-SSAH-Thresholds"  # the thresholds a units export holds its roles at


def run_out(run: Run, job: Job | None, *, manifest: bool = True) -> RunOut:
    """A run as the API shows it: its status with its attribution job's progress and phase."""
    return RunOut(id=run.id, name=run.name, tags=run.tags or [], notes=run.notes, parent_run=run.parent_run,
                  origin=run.origin, status=run.status, progress=job.progress if job else 1.0,
                  phase=job.phase if job else run.status, error=run.error, cached=run.cached, model=run.model,
                  settings={k: v for k, v in run.settings.items() if k not in INTERNAL_SETTINGS},
                  job_id=job.id if job else None, created_at=run.created_at, updated_at=run.updated_at,
                  manifest=run.manifest if manifest else None)




@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=errors(400, 403, 413, 429))
def create_run(body: RunCreate, _: WriterDep, session: SessionDep, settings: SettingsDep, runner: RunnerDep,
               folders: FoldersDep) -> Accepted:
    """Queue an attribution; the same model, data and settings as a finished run are answered from the cache
    at once (status succeeded, cached true)."""
    model, model_path, run_settings, key = checks.check_run(body, settings)
    identity = {"name": body.name, "tags": body.tags or [], "notes": body.notes, **lineage(session, settings,
                                                                                              model_path)}
    source = queue.cached_run(session, key)
    if source is not None:
        run_id = new_id()
        try:
            folder = folders.copy(source.result_dir, run_id)
        except OSError:  # deleted meanwhile: compute it again
            folder = None
        if folder is not None:
            run, job = queue.add_cached_run(session, source, run_id=run_id, model=model, settings=run_settings,
                                            result_dir=folder, **identity)
            session.commit()
            return Accepted(id=run.id, status=run.status, job_id=job.id, cached=True)
    check_room(session, settings)
    run, job = queue.enqueue_run(session, model=model, model_path=model_path, settings=run_settings, cache_key=key,
                                 **identity)
    session.commit()
    runner.notify()
    return Accepted(id=run.id, status=run.status, job_id=job.id)


@router.get("", response_model=RunList, responses=errors())
def list_runs(session: SessionDep, caller: CallerDep, limit: int = Query(100, ge=1, le=1000),
              offset: int = Query(0, ge=0, le=2**31 - 1), status_: Status | None = Query(None, alias="status"),
              q: str | None = Query(None, max_length=200, description="part of the name, model or id"),
              tag: str | None = Query(None, max_length=40)) -> RunList:
    """Runs, newest first (a share token sees only its own run); `q` and `tag` filter them."""
    query = select(Run)
    if q:
        like = f"%{q}%"
        query = query.where(Run.name.ilike(like) | Run.model.ilike(like) | Run.id.ilike(like))
    if caller.run_scope is not None:
        query = query.where(Run.id == caller.run_scope)
    if status_ is not None:
        query = query.where(Run.status == status_)
    if tag:  # tags are a JSON list: filtered here (a team's runs number in the thousands, not millions)
        runs = [r for r in session.scalars(query.order_by(Run.created_at.desc())).all() if tag in (r.tags or [])]
        count, runs = len(runs), runs[offset:offset + limit]
    else:
        count = session.scalar(select(func.count()).select_from(query.subquery()))
        runs = session.scalars(query.order_by(Run.created_at.desc()).limit(limit).offset(offset)).all()
    jobs = queue.attribution_jobs(session, [r.id for r in runs])
    return RunList(data=[run_out(r, jobs.get(r.id), manifest=False) for r in runs], count=count or 0)


@router.get("/{run_id}", response_model=RunOut, responses=errors(403, 404))
def read_run(run: RunDep, session: SessionDep) -> RunOut:
    return run_out(run, queue.attribution_job(session, run.id))


@router.patch("/{run_id}", response_model=RunOut, responses=errors(400, 403, 404))
def update_run(run: RunDep, body: RunPatch, _: WriterDep, session: SessionDep) -> RunOut:
    """Set a run's name, tags or notes (fields left out stay as they are; null clears one)."""
    for field in body.model_fields_set:
        value = getattr(body, field)
        setattr(run, field, (value or []) if field == "tags" else value)
    session.commit()
    session.refresh(run)
    return run_out(run, queue.attribution_job(session, run.id))


@router.delete("/{run_id}", response_model=Deleted, responses={
    202: {"model": Deleted, "description": "the run is running: its worker was asked to stop (status cancelling)"},
    **errors(403, 404)})
def delete_run(run: RunDep, _: WriterDep, session: SessionDep, runner: RunnerDep, folders: FoldersDep,
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
        units.forget(folders.folder(folder))
        folders.remove(folder)
    return Deleted(id=run.id, status="deleted")


@router.get("/{run_id}/units", responses={
    200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}, "application/vnd.apache.arrow.stream": {}},
          "description": "the units; csv, json and arrow gzipped (Content-Encoding) when the client accepts it"},
    **errors(403, 404, 409)})
def read_units(run: RunDep, folders: FoldersDep, units: UnitsDep, request: Request,
               format: Literal["json", "csv", "parquet", "arrow"] = "json", h_ru: float | None = fraction(),
               h_scu: float | None = fraction(), h_ucu: float | None = fraction()) -> Response:
    """One row per unit: layer, module, unit, params, score_safety, score_utility, z_safety, z_utility, role, with
    roles at the thresholds asked for (default: the run's own). The thresholds are in the `X-SSAH-Thresholds` header
    (and, at other thresholds than the run's, in the file name and in the Parquet key-value metadata `ssah`, a JSON
    object with `thresholds`). Parquet at the run's own thresholds is the run folder's own file; csv, json (a list
    of records) and arrow (an Arrow IPC stream) hold the same rows."""
    thresholds = thresholds_of(run, h_ru, h_scu, h_ucu)
    asked = thresholds.as_dict()
    own = asked == thresholds_of(run, None, None, None).as_dict()
    response = units_response(run, folders, units, format, request.headers.get("accept-encoding", ""),
                              at=None if own else thresholds)
    response.headers[THRESHOLDS_HEADER] = ",".join(f"{k}={v:g}" for k, v in asked.items())
    return response


@router.get("/{run_id}/roles", response_model=RolesOut, responses=errors(403, 404, 409))
def read_roles(run: RunDep, folders: FoldersDep, units: UnitsDep, h_ru: float | None = fraction(),
               h_scu: float | None = fraction(), h_ucu: float | None = fraction()) -> RolesOut:
    """Roles recomputed from the stored z-scores at other thresholds (default: the run's own), with counts and
    parameter fractions overall and per layer (as engine.roles.role_summary gives them)."""
    indexed = finished_units(run, folders, units)
    thresholds = thresholds_of(run, h_ru, h_scu, h_ucu)
    return RolesOut(run_id=run.id, thresholds=thresholds.as_dict(), **indexed.roles.summary(thresholds))


@router.get("/{run_id}/report", response_class=HTMLResponse, responses={
    200: {"content": {"text/html": {}}, "description": "one self-contained HTML file"}, **errors(403, 404, 409)})
def read_report(run: RunDep, session: SessionDep, folders: FoldersDep, units: UnitsDep,
                h_ru: float | None = fraction(), h_scu: float | None = fraction(),
                h_ucu: float | None = fraction()) -> HTMLResponse:
    """The run as one self-contained HTML file for teammates without access to this server (as `ssah report`
    writes it): settings, role table, per-layer bars and the role map (inline SVG), the top SCU with their promoted
    tokens where inspected, and the run's newest previews with replies and verdicts. It opens offline and fetches
    nothing. Roles at the thresholds given (default: the run's own)."""
    from backend.report import PREVIEWS, read_inspections, report_html

    table = finished_units(run, folders, units).table
    thresholds = thresholds_of(run, h_ru, h_scu, h_ucu)
    jobs = session.scalars(select(Job).where(Job.run_id == run.id, Job.kind == "preview", Job.status == "succeeded")
                           .order_by(Job.created_at.desc()).limit(PREVIEWS)).all()
    previews = [{**job.result, "request": job.request, "created_at": job.created_at.isoformat()}
                for job in jobs if job.result]
    described = run_out(run, None).model_dump(mode="json")
    parent = session.get(Run, run.parent_run) if run.parent_run else None
    if parent is not None:
        described["parent_name"] = parent.name
    page = report_html(described, table, thresholds, previews=previews,
                       inspections=read_inspections(folders.folder(run.result_dir)),
                       made_by="the ssah-dashboard API")
    filename = f"ssah-report-{run.id}.html"
    return HTMLResponse(page, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{run_id}/masks", responses={200: {"content": {"application/octet-stream": {}}}, **errors(403, 404, 409)})
def read_masks(run: RunDep, folders: FoldersDep, units: UnitsDep,
               groups: str = Query(min_length=1, max_length=200, description="e.g. SCU,CU:0.06 or RU or SCU,random"),
               mode: Literal["freeze", "train_only"] = "freeze", seed: int = Query(0, ge=0, le=2**32 - 1),
               h_ru: float | None = fraction(), h_scu: float | None = fraction(), h_ucu: float | None = fraction(),
               format: Literal["safetensors", "json"] = "safetensors") -> Response:
    """Freeze masks for your own training code. `mode=freeze`: the entries the groups own stay fixed;
    `mode=train_only` (the alignment budget): only they train. Roles are taken at the thresholds given (default:
    the run's own). safetensors holds one int64 index tensor per owned (parameter, axis), keyed `param@axis`, with
    the mode and all parameter shapes in its metadata (`backend.engine.masks.load_masks` makes dense masks);
    json holds the same."""
    from backend.engine.errors import ModelError
    from backend.engine.interventions import InterventionError
    from backend.verbs import UnitGroups, masks

    table = finished_units(run, folders, units).table
    thresholds = thresholds_of(run, h_ru, h_scu, h_ucu)
    try:
        chosen = UnitGroups.parse(groups, seed=seed,
                                  thresholds=None if thresholds.as_dict() == run.settings.get("thresholds")
                                  else thresholds)
    except InterventionError as error:
        raise checks.bad_field(("query", "groups"), str(error)) from None
    folder = ((run.manifest or {}).get("model") or {}).get("folder", "")
    if not folder or not (Path(folder) / "config.json").is_file():
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"the model of run {run.id} ({folder}) is not on this "
                                                             "server any more; masks need its config")
    try:
        plan = masks(folder, table, chosen, mode)
    except InterventionError as error:
        raise checks.bad_field(("query", "groups"), str(error)) from None
    except (ModelError, OSError, ValueError) as error:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"the model of run {run.id} cannot be read: {error}") from None
    if not plan.owned:
        raise checks.bad_field(("query", "groups"), f"{groups!r} selects no unit of this run at these thresholds")
    spec = chosen.spec
    name = f"masks-{run.id}-{mode}-{spec.label(seed).split(' ')[0].replace(',', '+').replace(':', '')}"
    if format == "json":
        return JSONResponse(plan.to_json(), headers={"Content-Disposition": f'attachment; filename="{name}.json"'})
    return Response(plan.to_bytes(), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}.safetensors"'})



@router.post("/{run_id}/previews", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=errors(400, 403, 404, 409, 413, 429))
def create_preview(run: RunDep, body: PreviewCreate, _: WriterDep, session: SessionDep, settings: SettingsDep,
                   runner: RunnerDep, folders: FoldersDep, units: UnitsDep) -> Accepted:
    """Queue a preview: the run's model answers harmful and benign prompts as it is and with a unit group pruned;
    `GET /jobs/{id}` holds the generations side by side with verdicts once it is done."""
    request = checks.check_preview(body, finished_units(run, folders, units).table, settings)
    return queue_job(session, settings, runner, "preview", run, request)


@router.post("/{run_id}/sweeps", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=errors(400, 403, 404, 409, 413, 429))
def create_sweep(run: RunDep, body: SweepCreate, _: WriterDep, session: SessionDep, settings: SettingsDep,
                 runner: RunnerDep, folders: FoldersDep, units: UnitsDep) -> Accepted:
    """Queue a sweep: one role group pruned at growing fractions in one job that loads the model once and
    generates the unpruned replies once; `GET /jobs/{id}` holds every point's rates and replies once done."""
    request = checks.check_sweep(body, finished_units(run, folders, units).table, settings)
    return queue_job(session, settings, runner, "sweep", run, request)


@router.post("/{run_id}/estimates", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=errors(400, 403, 404, 409, 413, 429))
def create_estimate(run: RunDep, body: EstimateCreate, _: WriterDep, session: SessionDep, settings: SettingsDep,
                    runner: RunnerDep, folders: FoldersDep, units: UnitsDep) -> Accepted:
    """Queue the instant estimate of a preview: the first-token refusal probe on the same prompts, as the model is
    and with the selection pruned (one forward pass each); queue it before the preview to see it first."""
    request = checks.check_estimate(body, finished_units(run, folders, units).table, settings)
    return queue_job(session, settings, runner, "estimate", run, request)


@router.post("/{run_id}/finetunes", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=errors(400, 403, 404, 409, 413, 429))
def create_finetune(run: RunDep, body: FinetuneCreate, _: WriterDep, session: SessionDep, settings: SettingsDep,
                    runner: RunnerDep, folders: FoldersDep, units: UnitsDep) -> Accepted:
    """Queue a fine-tune of the run's model with units frozen (or only some trained); the model folder lands in
    the results dir and the job's result reports the refusal check before and after."""
    request = checks.check_finetune(body, finished_units(run, folders, units).table, settings)
    return queue_job(session, settings, runner, "finetune", run, request)


@router.post("/{run_id}/alignments", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses=errors(400, 403, 404, 409, 413, 429))
def create_alignment(run: RunDep, body: AlignCreate, _: WriterDep, session: SessionDep, settings: SettingsDep,
                     runner: RunnerDep, folders: FoldersDep, units: UnitsDep) -> Accepted:
    """Queue a safety alignment of the run's (unaligned) model: `ssah align` as a job. In budget mode only the
    run's redundant units train. The aligned model lands in the results dir (attributable in turn) and the job's
    result holds the evaluation before and after on sets never trained on, and the targets met."""
    request = checks.check_align(body, finished_units(run, folders, units).table, settings)
    return queue_job(session, settings, runner, "align", run, request)
