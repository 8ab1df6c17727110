"""What pruning a unit group does: the same prompts answered by the model as it is and with the group pruned."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from .attribution import RunFolder
from .data import Pair
from .evaluation import SafetyReport, evaluate_safety, utility
from .interventions import check_same_model, prune
from .models import LoadedModel, content_hash
from .scoring import Progress


def describe_selection(units: pd.DataFrame, selection: pd.DataFrame, label: str) -> dict:
    """Size of a selection in units and parameter share, and which ablation reference its units use."""
    total = int(units.params.sum())
    return {"label": label, "units": int(len(selection)), "params": int(selection.params.sum()),
            "param_fraction": float(selection.params.sum()) / total if total else 0.0,
            "by_role": {str(k): int(v) for k, v in selection.role.value_counts().sort_index().items()},
            "references": {str(k): int(v) for k, v in selection.reference.value_counts().sort_index().items()}}


def _measure(loaded: LoadedModel, harmful, benign, utility_pairs, *, max_new_tokens: int, batch_size: int,
             progress: Progress | None, phase: str) -> tuple[SafetyReport, dict | None]:
    def tagged(name):
        return (lambda p, d, t: progress(f"{phase}: {name}", d, t)) if progress else None

    safety = evaluate_safety(loaded, harmful, benign, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             progress=tagged("generating"))
    util = None
    if utility_pairs:
        util = utility(loaded, utility_pairs, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       progress=tagged("utility")).to_dict()
    return safety, util


def summary(safety: SafetyReport, util: dict | None) -> dict:
    return {"asr": safety.asr, "over_refusal": safety.over_refusal, "degenerate_rate": safety.degenerate_rate,
            "per_set": {s.name: {"asr": s.asr, "refusal_rate": s.refusal_rate, "degenerate_rate": s.degenerate_rate,
                                 "n": s.n} for s in [*safety.harmful, *safety.benign]},
            "utility_exact_match": util["exact_match"] if util else None,
            "utility_nll": util["nll"] if util else None}


def preview(loaded: LoadedModel, harmful: Mapping[str, Sequence[str]], benign: Mapping[str, Sequence[str]], *,
            run: RunFolder | None = None, selection: pd.DataFrame | None = None, label: str = "",
            utility_pairs: Sequence[Pair] = (), max_new_tokens: int = 64, batch_size: int = 8,
            progress: Progress | None = None) -> dict:
    """Baseline metrics, and with a selection also the pruned model's, with the generations side by side."""
    result: dict = {"model": loaded.spec, "settings": {"max_new_tokens": max_new_tokens, "decoding": "greedy"}}
    if selection is not None:
        if run is None:
            raise ValueError("a selection needs the run it came from (for its channel means)")
        check_same_model(run.units, loaded.units)
        result["selection"] = describe_selection(run.units, selection, label)
        run_hash = run.manifest.get("model", {}).get("content_hash")
        if run_hash and run_hash != content_hash(loaded.folder):
            result["warning"] = ("the run was made on a model with the same shape but other weights; "
                                 "its roles and means may not describe this model")
    base, base_util = _measure(loaded, harmful, benign, utility_pairs, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=progress, phase="baseline")
    result["baseline"] = summary(base, base_util)
    result["judge"] = base.settings
    if selection is None:
        result["generations"] = [{"set": s.name, "kind": "harmful" if s.harmful else "benign", "prompt": r.prompt,
                                  "baseline": {"reply": r.reply, "verdict": r.verdict}}
                                 for s in [*base.harmful, *base.benign] for r in s.rows]
        return result
    with prune(loaded, selection, run.means, tokens=run.tokens):
        pruned, pruned_util = _measure(loaded, harmful, benign, utility_pairs, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, progress=progress, phase="pruned")
    result["pruned"] = summary(pruned, pruned_util)
    result["generations"] = [
        {"set": b.name, "kind": "harmful" if b.harmful else "benign", "prompt": rb.prompt,
         "baseline": {"reply": rb.reply, "verdict": rb.verdict}, "pruned": {"reply": rp.reply, "verdict": rp.verdict}}
        for b, p in zip([*base.harmful, *base.benign], [*pruned.harmful, *pruned.benign])
        for rb, rp in zip(b.rows, p.rows)]
    return result
