"""Compare two runs of one architecture (base vs aligned, before vs after fine-tuning): role transitions and SCU
overlap."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, status

from backend.store.tables import Run

from ..actions import finished_units
from ..checks import bad_field
from ..deps import CallerDep, FoldersDep, SessionDep, UnitsDep
from ..schemas import CompareOut, errors

router = APIRouter(tags=["runs"])


@router.get("/compare", response_model=CompareOut, responses=errors(403, 404, 409))
def compare_runs(session: SessionDep, caller: CallerDep, folders: FoldersDep, units: UnitsDep,
                 a: str = Query(min_length=1, max_length=64),
                 b: str = Query(min_length=1, max_length=64)) -> CompareOut:
    """How units change role from run A to run B (4x4, by units and by parameters) and how much of A's SCU set
    is SCU in B (Jaccard), overall and per layer. Both runs must have succeeded on the same architecture."""
    from backend.recipes.transfer import compare

    tables = []
    for name, run_id in (("a", a), ("b", b)):
        caller.check_run(run_id)
        run = session.get(Run, run_id)
        if run is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run {run_id!r} (query {name})")
        tables.append(finished_units(run, folders, units).table)
    try:
        transfer = compare(*tables)
    except ValueError as error:
        raise bad_field(("query", "b"), f"runs {a} and {b} cannot be compared: {error}") from None
    return CompareOut(a=a, b=b, **transfer.to_dict())
