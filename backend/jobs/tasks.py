"""What each kind of job does: it rebuilds the verb's request from what the job stored (filling in what only the
server knows: the run's model and folder, this worker's device, where outputs go), runs the verb of
`backend.verbs`, and says what to publish. Outputs are written under a staging name and renamed into place, so a
cancelled or killed job leaves no half-written folder behind. Importing this module does not import torch.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from backend import verbs
from backend.store.folders import PARTIAL
from backend.store.queue import cached_run
from backend.store.tables import Run

from .context import Context, JobLost, Reporter, free_memory


@dataclass
class Outcome:
    result: dict | None = None  # stored in the job (previews, fine-tunes)
    run_fields: dict | None = None  # written to the run (attribution)
    undo: Callable[[], None] = field(default=lambda: None)  # removes what was published, if the job was dropped


def describe_error(error: Exception, *, batch_size: int | None = None, dtype: str | None = None) -> str:
    """The message a user sees for a failed job: the engine's own words for bad input, what to change for running
    out of GPU memory, else the error's type and text."""
    from backend.engine.delta import DeltaError
    from backend.engine.errors import DataError, ModelError
    from backend.engine.interventions import InterventionError

    if isinstance(error, (DataError, ModelError, InterventionError, DeltaError)):
        return str(error)
    if _out_of_memory(error):
        return describe_out_of_memory(str(error), batch_size=batch_size, dtype=dtype)
    return f"{type(error).__name__}: {error}"


def _out_of_memory(error: Exception) -> bool:
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(error, out_of_memory) or "CUDA out of memory" in str(error)


def describe_out_of_memory(text: str, *, batch_size: int | None = None, dtype: str | None = None) -> str:
    """'out of GPU memory: it asked for 3.50 GiB more (GPU 0: 79.19 GiB in all, 1.25 GiB free); lower batch_size
    ...', from torch's message."""
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]?i?B)", text)
    device = re.search(r"(GPU \d+) has a total capacity of ([\d.]+ ?[KMGT]?i?B) of which ([\d.]+ ?[KMGT]?i?B) is free",
                       text)
    what = f"it asked for {asked.group(1)} more" if asked else "an allocation did not fit"
    if device:
        what += f" ({device.group(1)}: {device.group(2)} in all, {device.group(3)} free)"
    changes = [f"lower batch_size (now {batch_size})" if batch_size else "lower batch_size"]
    if dtype not in ("bfloat16", "float16"):
        changes.append(f"run in bfloat16 (SSAH_DTYPE=bfloat16, now {dtype or 'auto'}: half the memory of float32)")
    changes.append("use fewer samples, a smaller max_length or a GPU with more memory")
    return f"out of GPU memory: {what}. To fit: {'; '.join(changes[:-1])}; or {changes[-1]}"


def error_hints(ctx: Context, job) -> dict:
    """What a failure message may name: the job's batch size and the worker's dtype."""
    request = job.request or {}
    batch_size = request.get("batch_size") or (request.get("sets") or {}).get("batch_size") \
        or (request.get("config") or {}).get("batch_size")
    if batch_size is None and job.kind == "attribution" and job.run_id:
        with ctx.sessions() as session:
            run = session.get(Run, job.run_id)
            batch_size = run.settings.get("batch_size") if run is not None else None
    return {"batch_size": batch_size, "dtype": ctx.settings.dtype}


def _run(ctx: Context, run_id: str) -> Run:
    with ctx.sessions() as session:
        run = session.get(Run, run_id)
    if run is None:
        raise JobLost(f"run {run_id} was deleted")
    return run


def _run_folder(ctx: Context, run: Run) -> str:
    return str(ctx.folders.folder(run.result_dir))


def _staging(run_id: str) -> str:
    """The prefix of a job's staging folders, by which `RunFolders.clean_partials` finds leftovers."""
    return f"{PARTIAL}{run_id}-"


def attribute_request(run: Run, ctx: Context) -> verbs.AttributeRequest:
    """The attribution a run's settings describe, on this worker's device."""
    s = run.settings
    fields = {k: s[k] for k in ("samples", "max_length", "batch_size", "seed", "positions", "responses",
                                "self_max_new_tokens", "thresholds") if k in s}
    return verbs.AttributeRequest.from_dict({**fields, "model": run.model_path, "safety": s["paths"]["safety"],
                                             "utility": s["paths"]["utility"], "device": ctx.device,
                                             "dtype": ctx.settings.dtype})


# ----------------------------------------------------------------------------------------------------------------


def attribution_task(ctx: Context, job, progress: Reporter) -> Outcome:
    run = _run(ctx, job.run_id)
    with ctx.sessions() as session:  # an equal run may have finished while this one was queued
        source = cached_run(session, run.cache_key)
    if source is not None and ctx.folders.folder(source.result_dir).is_dir():
        name = ctx.folders.copy(source.result_dir, run.id)
        return Outcome(run_fields={"result_dir": name, "manifest": source.manifest, "cached": True},
                       undo=lambda: ctx.folders.remove(name))
    request = attribute_request(run, ctx)
    answering = [(f"answering {split}", 15) for split in ("safety", "utility")] if request.responses == "self" else []
    progress.set_plan([("loading data", 1), ("loading model", 4), *answering, ("forward safety", 40),
                       ("forward utility", 40), ("scoring", 5), ("saving", 2)])
    result = verbs.attribute(request, models=ctx.models, progress=progress)
    progress("saving", 0, 1)
    with ctx.folders.staged(run.id) as staging:
        result.save(staging)
    return Outcome(run_fields={"result_dir": run.id, "manifest": result.manifest},
                   undo=lambda: ctx.folders.remove(run.id))


def preview_task(ctx: Context, job, progress: Reporter) -> Outcome:
    stored = job.request
    utility = 2 if stored["sets"].get("utility") else 0
    pruned = stored.get("prune") is not None
    progress.set_plan([("loading", 2), ("baseline: generating", 8), ("baseline: utility", utility),
                       ("pruned: generating", 8 if pruned else 0), ("pruned: utility", utility if pruned else 0)])
    run = _run(ctx, job.run_id)
    progress("loading run", 0, 1)
    request = verbs.EvaluateRequest.from_dict({**stored, "model": run.model_path, "run": _run_folder(ctx, run),
                                               "device": ctx.device, "dtype": ctx.settings.dtype})
    result = verbs.evaluate(request, models=ctx.models, progress=progress)
    result.run_id = run.id
    return Outcome(result=result.to_dict())


def sweep_task(ctx: Context, job, progress: Reporter) -> Outcome:
    stored = job.request
    points = len(stored["fractions"]) * (1 + verbs.sweep_controls(stored.get("controls", 0)))
    progress.set_plan([("loading", 1), ("baseline", 4), *[(f"point {i + 1}/", 4) for i in range(points)]])
    run = _run(ctx, job.run_id)
    request = verbs.SweepRequest.from_dict({**stored, "model": run.model_path, "run": _run_folder(ctx, run),
                                            "device": ctx.device, "dtype": ctx.settings.dtype})
    result = verbs.sweep(request, models=ctx.models, progress=progress)
    result.run_id = run.id
    return Outcome(result=result.to_dict())


def estimate_task(ctx: Context, job, progress: Reporter) -> Outcome:
    progress.set_plan([("loading", 1), ("probing", 1)])
    run = _run(ctx, job.run_id)
    request = verbs.EstimateRequest.from_dict({**job.request, "model": run.model_path, "run": _run_folder(ctx, run),
                                               "device": ctx.device, "dtype": ctx.settings.dtype})
    return Outcome(result={**verbs.estimate(request, models=ctx.models, progress=progress), "run_id": run.id})


def finetune_task(ctx: Context, job, progress: Reporter) -> Outcome:
    checked = job.request.get("check") is not None
    progress.set_plan([("loading", 2), ("before", 5 if checked else 0), ("fine-tuning", 20),
                       ("after", 5 if checked else 0), ("saving", 1)])
    run = _run(ctx, job.run_id)
    out = ctx.settings.finetunes_dir / job.id
    request = verbs.FinetuneRequest.from_dict({**job.request, "model": run.model_path, "out": str(out),
                                               "run": _run_folder(ctx, run), "device": ctx.device})
    try:
        report = verbs.finetune(request, models=ctx.models, progress=progress, staging_prefix=_staging(run.id))
    finally:
        free_memory()  # the trained copy
    report.run_id, report.base_model = run.id, run.model
    return Outcome(result=report.to_dict(), undo=lambda: shutil.rmtree(out, ignore_errors=True))


def align_task(ctx: Context, job, progress: Reporter) -> Outcome:
    """`ssah align` as a job: the run's model aligned (budget mode: only the run's RU train), evaluated before and
    after on sets never trained on, saved as a model folder with its alignment.json."""
    evaluated = job.request.get("evaluate", True)
    progress.set_plan([("loading", 2), ("before", 10 if evaluated else 0), ("answering benign prompts", 15),
                       ("fine-tuning", 40), ("after", 10 if evaluated else 0), ("saving", 1)])
    run = _run(ctx, job.run_id)
    out = ctx.settings.finetunes_dir / job.id
    request = verbs.AlignRequest.from_dict({**job.request, "model": run.model_path, "out": str(out),
                                            "run": _run_folder(ctx, run), "device": ctx.device})
    try:
        report = verbs.align(request, models=ctx.models, progress=progress, staging_prefix=_staging(run.id))
    finally:
        free_memory()
    report.run_id, report.base_model = run.id, run.model
    return Outcome(result=report.to_dict(), undo=lambda: shutil.rmtree(out, ignore_errors=True))


def inspect_task(ctx: Context, job, progress: Reporter) -> Outcome:
    """One unit up close on the run's model: top tokens and peak contexts, cached in the run folder
    (inspect/{module}.{layer}.{unit}.json) and kept as the job's result."""
    progress.set_plan([("loading", 3), ("top tokens", 1), ("forward safety", 10), ("forward utility", 10),
                       ("saving", 1)])
    run = _run(ctx, job.run_id)
    request = verbs.InspectRequest.from_dict({**job.request, "model": run.model_path, "run": _run_folder(ctx, run),
                                              "device": ctx.device, "dtype": ctx.settings.dtype})
    result = verbs.inspect(request, models=ctx.models, progress=progress)
    return Outcome(result={"run_id": run.id, **result.to_dict()})


TASKS = {"attribution": attribution_task, "preview": preview_task, "sweep": sweep_task, "estimate": estimate_task,
         "finetune": finetune_task, "align": align_task, "inspect": inspect_task}
