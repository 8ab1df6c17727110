"""Checks of a request that need the settings or the engine: model and data paths inside their roots, model files
that can be read, data rows that fit the model's tokenizer and max_length, numbers within the service's limits,
unit groups that exist in a run, and the cache key of a run.

Each failure is a 422 whose `loc` names the field, shaped like FastAPI's own validation errors. The engine (and
with it torch) is imported here on first use, never when the API starts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from fastapi import HTTPException

from backend.settings import Settings

from .schemas import (
    AlignCreate,
    EstimateCreate,
    EvalIn,
    FinetuneCreate,
    PreviewCreate,
    RunCreate,
    SweepCreate,
    UnitGroups,
)

Loc = tuple[str | int, ...]


def bad_field(loc: Loc, msg: str) -> HTTPException:
    return HTTPException(422,
                         detail=[{"loc": list(loc), "msg": msg, "type": "value_error"}])


def check_at_most(value: int | None, limit: int, loc: Loc, setting: str) -> None:
    if value is not None and value > limit:
        raise bad_field(loc, f"must be at most {limit} on this server (SSAH_{setting.upper()}), got {value}")


def inside_roots(spec: str, roots: list[Path], loc: Loc, what: str, builtins: str = "") -> Path:
    """The real path of `spec` (absolute, or relative to a root) when it lies inside one of `roots` after `..`
    and links are resolved; otherwise a 422 at `loc`."""
    path = Path(spec)
    real_roots = [root.resolve() for root in roots]
    if not real_roots:
        raise bad_field(loc, f"{spec!r} is not a built-in {what} name ({builtins}), and this server takes no "
                             f"{what} paths (set SSAH_{what.upper()}_ROOTS)")
    candidates = [path] if path.is_absolute() else [root / path for root in real_roots]
    escaped = False
    for candidate in candidates:
        try:
            real = candidate.resolve()
            if not any(real.is_relative_to(root) for root in real_roots):
                escaped = True
                continue
            if real.exists():
                return real
        except (OSError, ValueError) as error:  # a name too long for the file system, a NUL byte, ...
            raise bad_field(loc, f"{spec[:80]!r} is not a usable path: {error}") from None
    if escaped:
        raise bad_field(loc, f"{spec!r} resolves outside the {what} roots of this server; paths must stay inside "
                             "them (no '..' or links out)")
    raise bad_field(loc, f"{spec!r} is neither a built-in {what} name ({builtins}) nor a path inside the {what} "
                         "roots of this server")


# ----------------------------------------------------------------------------------------------------------------
# Models and data


def check_model(spec: str, settings: Settings, loc: Loc = ("body", "model")) -> str:
    """A built-in name as it is, or the real path of a model folder / .gguf file inside the model roots."""
    from backend.engine import models

    if spec in models.BUILTIN_MODELS:
        return spec
    path = inside_roots(spec, [*settings.model_roots, settings.finetunes_dir], loc, "model",
                        ", ".join(models.BUILTIN_MODELS))
    try:
        if path.is_dir():
            path = models.resolve(str(path))  # reads config.json: architecture, safetensors, no remote code
        elif path.suffix != ".gguf":
            raise models.ModelError(f"{spec} is a file but not a .gguf model; give a model folder or a .gguf file")
        models.check_weights(path)  # headers only: a damaged file is refused now, not in the worker
    except models.ModelError as error:
        raise bad_field(loc, str(error)) from None
    return str(path)


def model_hash(model_path: str, loc: Loc = ("body", "model")) -> str:
    """Content hash of a model's weights and config (memoised on disk by the engine). For a built-in model, the
    hash of the file its package ships, so the API never converts a model itself."""
    from backend.engine import models

    try:
        return models.model_hash(model_path)
    except models.ModelError as error:
        raise bad_field(loc, f"built-in model {model_path!r} is not installed on this server: {error}") from None


@lru_cache(maxsize=8)
def _tokenizer(model_path: str, content_hash: str):
    from backend.engine import models

    return models.load_tokenizer(model_path)


def check_lengths(model_path: str, content_hash: str, sets, max_length: int | None, prompts_only: bool,
                  loc: Loc = ("body", "model")) -> None:
    """Tokenise each calibration set (`sets`: (loc, name as given, CalibrationSet)) as the worker will, with the
    model's tokenizer: a row over `max_length` (default: the model's context length) is a 422 at its set."""
    from backend.engine import models
    from backend.engine.chat import encode_pairs
    from backend.engine.data import DataError, Pair

    try:
        tokenizer, context = _tokenizer(model_path, content_hash)
    except models.ModelError as error:
        raise bad_field(loc, str(error)) from None
    limit = max_length or context
    if limit is None:
        return
    for where, name, calibration in sets:
        pairs = [Pair(p.prompt, "") for p in calibration.pairs] if prompts_only else calibration.pairs
        try:
            encode_pairs(tokenizer, pairs, max_length=limit, source=name)
        except DataError as error:
            raise bad_field(where, str(error)) from None


def data_path(spec: str, settings: Settings, loc: Loc) -> str:
    """A built-in set name as it is, or the real path of a data file inside the data roots."""
    from backend.engine.data import BUILTINS

    if spec in BUILTINS:
        return spec
    return str(inside_roots(spec, settings.data_roots, loc, "data", ", ".join(BUILTINS)))


def load_set(spec: str, settings: Settings, loc: Loc, *, samples: int | None = None, seed: int = 0):
    """(resolved spec, the loaded set); a set that cannot be read is a 422 with the engine's message."""
    from backend.engine.data import DataError, load_pairs

    resolved = data_path(spec, settings, loc)
    try:
        return resolved, load_pairs(resolved, samples=samples, seed=seed)
    except DataError as error:
        raise bad_field(loc, str(error)) from None


def eval_sets(ev: EvalIn, settings: Settings, loc: Loc):
    """The prompt sets of a preview or fine-tune check, as `verbs.EvalSets`; `paths` maps each set as given to the
    file the worker reads."""
    from backend.verbs import EvalSets

    check_at_most(ev.limit, settings.max_limit, (*loc, "limit"), "max_limit")
    check_at_most(ev.max_new_tokens, settings.max_new_tokens, (*loc, "max_new_tokens"), "max_new_tokens")
    check_at_most(ev.batch_size, settings.max_batch_size, (*loc, "batch_size"), "max_batch_size")
    if not ev.harmful and not ev.benign:
        raise bad_field((*loc, "harmful"), "name at least one harmful or benign prompt set")
    named = [((*loc, kind, i), name) for kind in ("harmful", "benign") for i, name in enumerate(getattr(ev, kind))]
    if ev.utility:
        named.append(((*loc, "utility"), ev.utility))
    paths = {name: load_set(name, settings, where)[0] for where, name in named}
    return EvalSets(harmful=tuple(ev.harmful), benign=tuple(ev.benign), utility=ev.utility, limit=ev.limit,
                    max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, judge=ev.judge, paths=paths)


# ----------------------------------------------------------------------------------------------------------------
# Requests


def check_run(body: RunCreate, settings: Settings) -> tuple[str, str, dict, str]:
    """(model as given, model path, run settings, cache key) of a new run."""
    check_at_most(body.samples, settings.max_samples, ("body", "samples"), "max_samples")
    check_at_most(body.batch_size, settings.max_batch_size, ("body", "batch_size"), "max_batch_size")
    check_at_most(body.max_length, settings.max_length, ("body", "max_length"), "max_length")
    check_at_most(body.self_max_new_tokens, settings.max_new_tokens, ("body", "self_max_new_tokens"),
                  "max_new_tokens")
    model = body.model or settings.default_model
    model_path = check_model(model, settings)
    safety, safety_set = load_set(body.safety, settings, ("body", "safety"), samples=body.samples, seed=body.seed)
    utility, utility_set = load_set(body.utility, settings, ("body", "utility"), samples=body.samples,
                                    seed=body.seed)
    content_hash = model_hash(model_path)
    check_lengths(model_path, content_hash, [(("body", "safety"), body.safety, safety_set),
                                             (("body", "utility"), body.utility, utility_set)],
                  body.max_length, prompts_only=body.responses == "self")
    run_settings = body.model_dump(exclude={"model", "name", "tags", "notes"}) | {
        "paths": {"safety": safety, "utility": utility}, "model_hash": content_hash}
    keyed = {k: v for k, v in run_settings.items() if k not in ("safety", "utility", "paths")}
    if body.responses == "given":
        keyed.pop("self_max_new_tokens")
    keyed |= {"safety_hash": safety_set.content_hash(), "utility_hash": utility_set.content_hash(),
              "dtype": settings.dtype}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    return model, model_path, run_settings, key


def unit_groups(groups: UnitGroups, units, loc: Loc):
    """Unit groups as `verbs.UnitGroups`, after trying them on the run's units (an empty or impossible selection
    is a 422 here, not a failed job later)."""
    from backend.engine.interventions import InterventionError
    from backend.engine.roles import Thresholds
    from backend.verbs import UnitGroups as Groups

    spec = groups.model_dump()
    thresholds = Thresholds(**spec["thresholds"]) if spec.get("thresholds") else None
    explicit = tuple((u["layer"], u["module"], u["unit"]) for u in spec.get("units") or ())
    layers = tuple(spec["layers"]) if spec.get("layers") is not None else None
    chosen_groups = Groups(groups=tuple(spec["groups"]), cu_fraction=spec["cu_fraction"], random=spec["random"],
                           seed=spec["seed"], thresholds=thresholds, reference=spec.get("reference"),
                           explicit=explicit, layers=layers)
    try:
        chosen = chosen_groups.choose(units)
    except InterventionError as error:
        raise bad_field(loc, str(error)) from None
    if chosen.empty:
        raise bad_field(loc, "the groups select no unit of this run (are they empty at its thresholds?)")
    return chosen_groups


def check_preview(body: PreviewCreate, units, settings: Settings) -> dict:
    """The job request of a preview (`verbs.EvaluateRequest` without what the worker fills in: the run's model
    and folder, its device)."""
    return {"prune": asdict(unit_groups(body.prune, units, ("body", "prune"))) if body.prune else None,
            "sets": asdict(eval_sets(body.eval, settings, ("body", "eval"))), "controls": body.controls}


def check_sweep(body: SweepCreate, units, settings: Settings) -> dict:
    """The job request of a sweep (`verbs.SweepRequest` without the run's model and folder): every point tried on
    the run's units."""
    from backend.engine.interventions import InterventionError
    from backend.engine.roles import Thresholds
    from backend.engine.sweep import group_at

    thresholds = Thresholds(**body.thresholds.model_dump()) if body.thresholds else None
    for i, fraction in enumerate(body.fractions):
        try:
            chosen = group_at(units, thresholds or Thresholds(), body.group, fraction, body.reference)
        except InterventionError as error:
            raise bad_field(("body", "fractions", i), str(error)) from None
        if chosen.empty:
            raise bad_field(("body", "fractions", i), f"{body.group} at {fraction:g} selects no unit of this run")
    return {"group": body.group, "fractions": body.fractions, "sets": asdict(eval_sets(body.eval, settings,
                                                                                          ("body", "eval"))),
            "thresholds": asdict(thresholds) if thresholds else None, "reference": body.reference,
            "controls": body.controls, "seed": body.seed}


def check_estimate(body: EstimateCreate, units, settings: Settings) -> dict:
    """The job request of an estimate (`verbs.EstimateRequest` without the run's model and folder)."""
    return {"prune": asdict(unit_groups(body.prune, units, ("body", "prune"))) if body.prune else None,
            "sets": asdict(eval_sets(body.eval, settings, ("body", "eval")))}


def check_finetune(body: FinetuneCreate, units, settings: Settings) -> dict:
    """The job request of a fine-tune (`verbs.FinetuneRequest` without the model, run, output folder and device)."""
    check_at_most(body.steps, settings.max_steps, ("body", "steps"), "max_steps")
    check_at_most(body.samples, settings.max_samples, ("body", "samples"), "max_samples")
    check_at_most(body.batch_size, settings.max_batch_size, ("body", "batch_size"), "max_batch_size")
    data_path = load_set(body.data, settings, ("body", "data"), samples=body.samples, seed=body.seed)[0]
    request = {"data": body.data, "data_path": data_path, "steps": body.steps, "lr": body.lr,
               "batch_size": body.batch_size, "weight_decay": body.weight_decay, "samples": body.samples,
               "seed": body.seed, "freeze": None, "train_only": None, "check": None}
    for mode in ("freeze", "train_only"):
        if getattr(body, mode) is not None:
            request[mode] = asdict(unit_groups(getattr(body, mode), units, ("body", mode)))
    if body.eval is not None:
        request["check"] = asdict(eval_sets(body.eval, settings, ("body", "eval")))
    return request


def check_align(body: AlignCreate, units, settings: Settings) -> dict:
    """The job request of an alignment (`verbs.AlignRequest` without the model, run, output folder and device):
    numbers within the server's limits, the budget groups tried on the run."""
    from backend.engine.interventions import GroupSpec, InterventionError, choose
    from backend.recipes.align import AlignConfig

    check_at_most(body.steps, settings.max_steps, ("body", "steps"), "max_steps")
    check_at_most(body.batch_size, settings.max_batch_size, ("body", "batch_size"), "max_batch_size")
    check_at_most(body.train_limit, settings.max_samples, ("body", "train_limit"), "max_samples")
    check_at_most(body.answer_tokens, settings.max_new_tokens, ("body", "answer_tokens"), "max_new_tokens")
    if body.eval is not None:
        check_at_most(body.eval.limit, settings.max_limit, ("body", "eval", "limit"), "max_limit")
        check_at_most(body.eval.max_new_tokens, settings.max_new_tokens, ("body", "eval", "max_new_tokens"),
                      "max_new_tokens")
    if body.rank is not None and body.mode != "lowrank":
        raise bad_field(("body", "rank"), f"rank is for mode lowrank; mode {body.mode} has no rank")
    if body.mode == "budget" and body.budget_score == "utility" and body.budget_groups != "RU":
        raise bad_field(("body", "budget_groups"), "budget_groups choose units by the run's roles: give "
                                                   "budget_score both with them (budget_score utility trains the "
                                                   "lowest z_U units making up h_ru of the parameters)")
    if body.mode == "budget" and body.budget_score == "both":
        try:
            chosen = choose(units, GroupSpec.parse(body.budget_groups), seed=body.seed)
        except InterventionError as error:
            raise bad_field(("body", "budget_groups"), str(error)) from None
        if chosen.empty:
            raise bad_field(("body", "budget_groups"), f"{body.budget_groups!r} selects no unit of this run")
    fields = body.model_dump(exclude={"eval", "train_limit"})
    try:
        config = AlignConfig(**fields, limit=body.train_limit)
    except ValueError as error:
        raise bad_field(("body",), str(error)) from None
    return {"config": asdict(config), "evaluate": body.eval is not None,
            "eval_limit": body.eval.limit if body.eval else None,
            "max_new_tokens": body.eval.max_new_tokens if body.eval else 48}
