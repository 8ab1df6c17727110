"""What each kind of job does on the engine: attribution, preview, fine-tune and alignment.

A task reads its inputs from the job's request (checked by the API) and its run, reports progress, and returns an
Outcome; files are written under a staging name and renamed into place, so a cancelled or killed job leaves no
half-written folder behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backend.engine import Thresholds, attribute, load_model, reclassify
from backend.engine.attribution import load_run, self_answered
from backend.engine.data import DataError, load_pairs
from backend.recipes.finetune import FinetuneConfig, finetune, save_model
from backend.engine.masks import trainable_masks
from backend.engine.interventions import GroupSpec, InterventionError, choose
from backend.engine.models import ModelError
from backend.engine.preview import preview
from backend.store.tables import Run
from backend.store.queue import cached_run
from backend.store.folders import PARTIAL

from .worker import Context, JobLost, Reporter, _free_memory


@dataclass
class Outcome:
    result: dict | None = None  # stored in the job (previews, fine-tunes)
    run_fields: dict | None = None  # written to the run (attribution)
    undo: Callable[[], None] = field(default=lambda: None)  # removes what was published, if the job was dropped


def describe_error(error: Exception) -> str:
    """The message a user sees for a failed job: the engine's own words for bad input, else the type too."""
    if isinstance(error, (DataError, ModelError, InterventionError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _run(ctx: Context, run_id: str) -> Run:
    with ctx.sessions() as session:
        run = session.get(Run, run_id)
    if run is None:
        raise JobLost(f"run {run_id} was deleted")
    return run


def group_spec(groups: dict) -> GroupSpec:
    return GroupSpec(tuple(groups.get("groups", ())), float(groups.get("cu_fraction", 0.0)),
                     bool(groups.get("random", False)))


def units_at(units, groups: dict):
    """The run's units, with roles recomputed when the groups name their own thresholds."""
    if groups.get("thresholds"):
        return reclassify(units, Thresholds(**groups["thresholds"]))
    return units


def group_label(groups: dict) -> str:
    """`SCU,CU:0.06`, `random (seed 0)`: the groups as the CLI writes them."""
    return group_spec(groups).label(groups.get("seed", 0))


def prompt_sets(names: list[str], limit: int, paths: dict[str, str]) -> dict[str, list[str]]:
    """The first `limit` prompts of each set, keyed by the name the user gave."""
    return {name: [p.prompt for p in load_pairs(paths.get(name, name)).pairs[:limit]] for name in names}


# ----------------------------------------------------------------------------------------------------------------


def run_attribution(ctx: Context, job, progress: Reporter) -> Outcome:
    run = _run(ctx, job.run_id)
    s = run.settings
    with ctx.sessions() as session:  # an equal run may have finished while this one was queued
        source = cached_run(session, run.cache_key)
    if source is not None and ctx.folders.folder(source.result_dir).is_dir():
        name = ctx.folders.copy(source.result_dir, run.id)
        return Outcome(run_fields={"result_dir": name, "manifest": source.manifest, "cached": True},
                       undo=lambda: ctx.folders.remove(name))

    self_responses = s["responses"] == "self"
    answering = [(f"answering {s['paths'][split]}", 15) for split in ("safety", "utility")] if self_responses else []
    progress.set_plan([("loading data", 1), ("loading model", 4), *answering, ("forward safety", 40),
                       ("forward utility", 40), ("scoring", 5), ("saving", 2)])
    progress("loading data", 0, 1)
    safety, utility = (load_pairs(s["paths"][split], samples=s["samples"], seed=s["seed"])
                       for split in ("safety", "utility"))
    progress("loading model", 0, 1)
    loaded = ctx.models.get(run.model_path, s["model_hash"], ctx.device, ctx.settings.dtype)
    progress("loading model", 1, 1)
    if self_responses:  # as engine.run_attribution does, with the worker's cached model
        safety, utility = (self_answered(loaded, part, s["self_max_new_tokens"], s["batch_size"], progress)
                           for part in (safety, utility))
    result = attribute(loaded, safety, utility, batch_size=s["batch_size"], max_length=s["max_length"],
                       positions=s["positions"], thresholds=Thresholds(**s["thresholds"]), seed=s["seed"],
                       progress=progress)
    result.manifest["responses"] = s["responses"]
    if self_responses:
        result.manifest["self_max_new_tokens"] = s["self_max_new_tokens"]
        result.self_responses = [{"split": split, "prompt": p.prompt, "response": p.response}
                                 for split, part in (("safety", safety), ("utility", utility)) for p in part.pairs]
    progress("saving", 0, 1)
    staging = ctx.folders.staging(run.id)
    try:
        result.save(staging)
        name = ctx.folders.publish(staging, run.id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Outcome(run_fields={"result_dir": name, "manifest": result.manifest},
                   undo=lambda: ctx.folders.remove(name))


def run_preview(ctx: Context, job, progress: Reporter) -> Outcome:
    request = job.request
    prune, ev = request.get("prune"), request["eval"]
    utility = 2 if ev.get("utility") else 0
    progress.set_plan([("loading", 2), ("baseline: generating", 8), ("baseline: utility", utility),
                       ("pruned: generating", 8 if prune else 0), ("pruned: utility", utility if prune else 0)])
    run = _run(ctx, job.run_id)
    progress("loading run", 0, 1)
    saved = load_run(ctx.folders.folder(run.result_dir))
    harmful, benign = (prompt_sets(ev[kind], ev["limit"], ev["paths"]) for kind in ("harmful", "benign"))
    utility_pairs = list(load_pairs(ev["paths"][ev["utility"]]).pairs[:ev["limit"]]) if ev.get("utility") else []
    selection, label = None, ""
    if prune:
        selection = choose(units_at(saved.units, prune), group_spec(prune), seed=prune.get("seed", 0),
                           reference=prune.get("reference"))
        label = group_label(prune)
    progress("loading model", 0, 1)
    loaded = ctx.models.get(run.model_path, run.settings["model_hash"], ctx.device, ctx.settings.dtype)
    result = preview(loaded, harmful, benign, run=saved, selection=selection, label=label,
                     utility_pairs=utility_pairs, max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                     progress=progress)
    result["run_id"] = run.id
    return Outcome(result=result)


def run_finetune(ctx: Context, job, progress: Reporter) -> Outcome:
    ev = job.request.get("eval")
    progress.set_plan([("loading", 2), ("before", 5 if ev else 0), ("fine-tuning", 20), ("after", 5 if ev else 0),
                       ("saving", 1)])
    run = _run(ctx, job.run_id)
    progress("loading model", 0, 1)
    # a fresh float32 copy: fine-tuning changes the weights in place, and AdamW steps vanish in bfloat16
    loaded = load_model(run.model_path, device=ctx.device, dtype="float32")
    try:
        report = _train_and_save(ctx, job, run, loaded, progress)
    finally:
        del loaded
        _free_memory()
    return Outcome(result=report, undo=lambda: shutil.rmtree(report["model"], ignore_errors=True))


def _safety_check(loaded, ev: dict | None, tag: str, progress: Reporter) -> dict | None:
    """Refusal and over-refusal of the model as it is now (the before/after of a fine-tune)."""
    if not ev:
        return None
    harmful, benign = (prompt_sets(ev[kind], ev["limit"], ev["paths"]) for kind in ("harmful", "benign"))
    return preview(loaded, harmful, benign, max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"],
                   progress=lambda p, d, t: progress(f"{tag}: {p}", d, t))["baseline"]


def _train_and_save(ctx: Context, job, run: Run, loaded, progress: Reporter) -> dict:
    request, ev = job.request, job.request.get("eval")
    groups = request.get("freeze") or request.get("train_only")
    data = load_pairs(request["paths"][request["data"]], samples=request.get("samples"), seed=request["seed"])
    config = FinetuneConfig(steps=request["steps"], lr=request["lr"], batch_size=request["batch_size"],
                            weight_decay=request["weight_decay"], seed=request["seed"])
    masks, mode = None, "full"
    if groups:
        saved = load_run(ctx.folders.folder(run.result_dir))
        freeze = request.get("freeze") is not None
        spec = group_spec(groups)
        masks = trainable_masks(loaded, units_at(saved.units, groups), freeze=spec if freeze else None,
                                train_only=None if freeze else spec, seed=groups.get("seed", 0))
        mode = f"{'freeze' if freeze else 'train only'} {group_label(groups)}"
    before = _safety_check(loaded, ev, "before", progress)
    log = finetune(loaded, data.pairs, masks, config, progress=progress)
    after = _safety_check(loaded, ev, "after", progress)
    progress("saving", 0, 1)
    out = ctx.settings.finetunes_dir / job.id
    report = {"run_id": run.id, "base_model": run.model, "model": str(out), "data": request["data"], "mode": mode,
              "training": log, "before": before, "after": after}
    _publish_model(loaded, out, run.id, "finetune.json", report)
    return report


def _publish_model(loaded, out: Path, run_id: str, report_name: str, report: dict) -> None:
    """Save the trained model with its report under a staging name beside `out`, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{run_id}-", dir=out.parent))
    try:
        folder = save_model(loaded, staging / "model")
        (folder / report_name).write_text(json.dumps(report, indent=2) + "\n")
        os.replace(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_align(ctx: Context, job, progress: Reporter) -> Outcome:
    """`ssah align` as a job: the run's model aligned (budget mode: only the run's RU train), evaluated before and
    after on sets never trained on, saved as a model folder with its alignment.json."""
    from backend.recipes.align import AlignConfig, align, evaluate_alignment, targets

    request, ev = job.request, job.request.get("eval")
    progress.set_plan([("loading", 2), ("before", 10 if ev else 0), ("answering benign prompts", 15),
                       ("fine-tuning", 40), ("after", 10 if ev else 0), ("saving", 1)])
    run = _run(ctx, job.run_id)
    mode = request["mode"]
    config = AlignConfig(mode=mode, steps=request["steps"], batch_size=request["batch_size"],
                         lr=request["lr"], rank=request.get("rank"), seed=request["seed"],
                         held_out=request["held_out"], budget_groups=request["budget_groups"],
                         benign_share=request.get("benign_share", AlignConfig.benign_share),  # older jobs lack it
                         strength=request.get("strength", AlignConfig.strength),
                         benign_distil=request.get("benign_distil", AlignConfig.benign_distil),
                         anchor=request.get("anchor", AlignConfig.anchor),
                         limit=request["train_limit"], answer_tokens=request["answer_tokens"])
    units = load_run(ctx.folders.folder(run.result_dir)).units if mode == "budget" else None
    progress("loading model", 0, 1)
    loaded = load_model(run.model_path, device=ctx.device, dtype="float32")  # trained in place, in float32

    def evaluated(tag: str) -> dict | None:
        if not ev:
            return None
        return evaluate_alignment(loaded, config.held_out, limit=ev["limit"], max_new_tokens=ev["max_new_tokens"],
                                  progress=lambda p, d, t: progress(f"{tag}: {p}", d, t),
                                  cache=tag == "before")  # the untouched model: its sets are cached
    try:
        before = evaluated("before")
        log = align(loaded, config, progress, units=units)
        after = evaluated("after")
        progress("saving", 0, 1)
        out = ctx.settings.finetunes_dir / job.id
        report = {"run_id": run.id, "base_model": run.model, "model": str(out), **log, "base": before,
                  "aligned": after, "targets": targets(after, before, config.held_out) if ev else None}
        _publish_model(loaded, out, run.id, "alignment.json", report)
    finally:
        del loaded
        _free_memory()
    return Outcome(result=report, undo=lambda: shutil.rmtree(report["model"], ignore_errors=True))


TASKS = {"attribution": run_attribution, "preview": run_preview, "finetune": run_finetune, "align": run_align}
