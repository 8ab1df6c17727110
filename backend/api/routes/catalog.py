"""What a form can offer: models (built-in, and folders in the model roots) and built-in data sets; and health."""
from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from backend.store.queue import queued_count

from ..deps import CallerDep, RunnerDep, SessionDep, SettingsDep
from ..schemas import DatasetInfo, ModelInfo, errors

router = APIRouter(tags=["catalog"])


@router.get("/models", response_model=list[ModelInfo], responses=errors())
def list_models(_: CallerDep, settings: SettingsDep) -> list[ModelInfo]:
    """Built-in models, then the model folders directly inside the model roots (names usable as `model`)."""
    from backend.engine.models import list_builtin

    found = [ModelInfo(name=m["name"], description=m["description"], kind="builtin") for m in list_builtin()]
    for root in settings.model_roots:
        if root.is_dir():
            found += [ModelInfo(name=str(p), description="local folder", kind="local")
                      for p in sorted(root.iterdir()) if (p / "config.json").is_file()]
    return found


@lru_cache(maxsize=1)
def _datasets() -> tuple[DatasetInfo, ...]:
    from backend.engine.data import list_datasets

    return tuple(DatasetInfo(name=d.name, description=d.description, size=d.size, kind=d.kind, source=d.source)
                 for d in list_datasets())


@router.get("/datasets", response_model=list[DatasetInfo], responses=errors())
def list_datasets(_: CallerDep) -> list[DatasetInfo]:
    """Built-in calibration and evaluation sets; `kind` says what each is for (calibration-safety,
    calibration-utility, harmful, benign, utility)."""
    return list(_datasets())


@router.get("/health")
def health(session: SessionDep, runner: RunnerDep) -> dict:
    """Liveness for probes (no token needed): the database answers and the workers are alive."""
    workers = runner.health()["workers"]
    return {"status": "ok", "queued": queued_count(session), "workers": len(workers),
            "workers_alive": sum(w.get("alive", False) for w in workers)}
