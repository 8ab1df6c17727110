"""Units and layers of a run up close: one unit's numbers, channel statistics and (once inspected) its top tokens
and contexts; starting its inspection; every unit of one layer."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status
from fastapi import Path as PathParam

from backend.store import queue
from backend.store.tables import ACTIVE, Job

from ..actions import finished_units, fraction, queue_job, thresholds_of
from ..deps import FoldersDep, RunDep, RunnerDep, SessionDep, SettingsDep, UnitsDep, WriterDep
from ..schemas import Accepted, InspectionState, LayerOut, Module, UnitOut, errors

router = APIRouter(prefix="/runs", tags=["units"])
T = TypeVar("T")


def index_param(what: str):
    return PathParam(ge=0, le=2**31 - 1, description=what)


def _found(read: Callable[[], T]) -> T:
    """The engine's answer, or a 404 naming what the run has when it has no such layer or unit."""
    from backend.engine.inspect import NoSuchUnit

    try:
        return read()
    except NoSuchUnit as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from None


def _unit_request(module: str, layer: int, unit: int) -> dict:
    return {"module": module, "layer": layer, "unit": unit}


def _state(job: Job | None) -> InspectionState | None:
    if job is None:
        return None
    return InspectionState(job_id=job.id, status=job.status, progress=job.progress, phase=job.phase, error=job.error)


@router.get("/{run_id}/units/{module}/{layer}/{unit}", response_model=UnitOut, responses=errors(403, 404, 409))
def read_unit(run: RunDep, module: Module, session: SessionDep, folders: FoldersDep, units: UnitsDep,
              layer: int = index_param("layer"), unit: int = index_param("MLP channel or attention head"),
              h_ru: float | None = fraction(), h_scu: float | None = fraction(),
              h_ucu: float | None = fraction()) -> UnitOut:
    """One unit: scores, z-scores and their percentiles, its role and distance from each role's boundary at the
    thresholds asked for (default: the run's own), its channel means and variances per calibration set, and its
    top tokens and contexts once an inspect job has computed them (null before), with that job's state."""
    from backend.engine.errors import DataError
    from backend.engine.inspect import unit_channels, unit_numbers

    indexed = finished_units(run, folders, units)
    thresholds = thresholds_of(run, h_ru, h_scu, h_ucu)
    numbers = _found(lambda: unit_numbers(indexed.table, module, layer, unit, thresholds, indexed.roles))
    try:
        channels = unit_channels(folders.folder(run.result_dir), module, layer, unit, numbers.layer_units)
    except DataError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"the folder of run {run.id} cannot be read: "
                                                             f"{error}") from None
    cached = folders.inspection(run.result_dir, module, layer, unit) or {}
    job = queue.latest_job(session, run.id, "inspect", **_unit_request(module, layer, unit))
    return UnitOut(run_id=run.id, module=module, layer=layer, unit=unit, params=numbers.params, **numbers.values,
                   role=numbers.role, thresholds=numbers.thresholds, percentiles=numbers.percentiles,
                   boundaries=numbers.boundaries, layer_units=numbers.layer_units, model_units=numbers.model_units,
                   channels=channels, top_tokens=cached.get("top_tokens"), contexts=cached.get("contexts"),
                   inspection_settings=cached.get("settings"), inspection=_state(job))


@router.post("/{run_id}/units/{module}/{layer}/{unit}/inspections", status_code=status.HTTP_202_ACCEPTED,
             response_model=Accepted, responses=errors(400, 403, 404, 409, 413, 429))
def create_inspection(run: RunDep, module: Module, _: WriterDep, session: SessionDep, settings: SettingsDep,
                      runner: RunnerDep, folders: FoldersDep, units: UnitsDep, layer: int = index_param("layer"),
                      unit: int = index_param("MLP channel or attention head")) -> Accepted:
    """Queue an inspect job: the run's model computes the unit's top tokens and its contexts (one forward over
    the run's calibration pairs, stopped at the unit's layer) and caches them in the run folder; the unit's
    resource then holds them. While one is queued or running for this unit, that job is answered."""
    from backend.engine.inspect import unit_row

    indexed = finished_units(run, folders, units)
    _found(lambda: unit_row(indexed.table, module, layer, unit))
    request = _unit_request(module, layer, unit)
    job = queue.latest_job(session, run.id, "inspect", **request)
    if job is not None and job.status in ACTIVE:
        return Accepted(id=job.id, status=job.status, job_id=job.id)
    return queue_job(session, settings, runner, "inspect", run, request)


@router.get("/{run_id}/layers/{layer}", response_model=LayerOut, responses=errors(403, 404, 409))
def read_layer(run: RunDep, folders: FoldersDep, units: UnitsDep, layer: int = index_param("layer"),
               h_ru: float | None = fraction(), h_scu: float | None = fraction(),
               h_ucu: float | None = fraction()) -> LayerOut:
    """Every unit of one layer with its role at the thresholds asked for (default: the run's own), and each
    role's boundary (model-wide, on the key it is ranked by)."""
    from backend.engine.inspect import layer_units

    indexed = finished_units(run, folders, units)
    thresholds = thresholds_of(run, h_ru, h_scu, h_ucu)
    columns = _found(lambda: layer_units(indexed.table, layer, thresholds, indexed.roles))
    return LayerOut(run_id=run.id, layer=layer, layers=sorted(int(x) for x in indexed.table.layer.unique()),
                    thresholds=thresholds.as_dict(), cutoffs=indexed.roles.cutoffs(thresholds), units=columns)
