"""What pruning a unit group does: the same prompts answered by the model as it is and with the group pruned."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import atomic
from .attribution import RunFolder
from .data import Pair
from .evaluation import DEFAULT_JUDGE, SafetyReport, evaluate_safety, make_judge, utility
from .interventions import check_same_model, prune
from .judge import VERDICTS, Judge
from .models import LoadedModel, content_hash
from .scoring import Progress
from .stats import paired_change


@dataclass
class Selection:
    """A pruned selection: its size in units and parameter share, its roles, and which ablation reference its
    units use."""

    label: str
    units: int
    params: int
    param_fraction: float
    by_role: dict[str, int]
    references: dict[str, int]


def describe_selection(units: pd.DataFrame, selection: pd.DataFrame, label: str) -> Selection:
    total = int(units.params.sum())
    return Selection(label=label, units=int(len(selection)), params=int(selection.params.sum()),
                     param_fraction=float(selection.params.sum()) / total if total else 0.0,
                     by_role={str(k): int(v) for k, v in selection.role.value_counts().sort_index().items()},
                     references={str(k): int(v) for k, v in selection.reference.value_counts().sort_index().items()})


@dataclass
class Measures:
    """One column of a preview (the model as it is, or pruned): rates over all harmful / benign prompts, per set,
    and utility when a utility set was given."""

    asr: float | None
    over_refusal: float | None
    degenerate_rate: float | None
    off_topic_rate: float | None
    counts: dict[str, dict]  # asr, over_refusal, off_topic, degenerate: k, n, rate, ci_low, ci_high
    per_set: dict[str, dict]
    utility_exact_match: float | None = None
    utility_nll: float | None = None

    @classmethod
    def of(cls, safety: SafetyReport, util: dict | None) -> Measures:
        return cls(asr=safety.asr, over_refusal=safety.over_refusal, degenerate_rate=safety.degenerate_rate,
                   off_topic_rate=safety.off_topic_rate,
                   counts={k: r.to_dict() for k, r in safety.counts().items()},
                   per_set={s.name: {"asr": s.asr, "refusal_rate": s.refusal_rate,
                                     "degenerate_rate": s.degenerate_rate, "off_topic_rate": s.off_topic_rate,
                                     "n": s.n, "counts": {v: s.count(v).to_dict() for v in VERDICTS}}
                            for s in [*safety.harmful, *safety.benign]},
                   utility_exact_match=util["exact_match"] if util else None,
                   utility_nll=util["nll"] if util else None)

    to_dict = asdict


@dataclass
class Preview:
    """The same prompts answered by the model as it is (`baseline`) and, with a selection, pruned; `generations`
    holds each prompt's replies and verdicts side by side."""

    model: str
    settings: dict
    judge: dict
    baseline: Measures
    generations: list[dict]
    selection: Selection | None = None
    pruned: Measures | None = None
    changes: dict | None = None  # per headline rate, the paired change on the same prompts (exact McNemar)
    controls: dict | None = None  # random units of the selection's mass, several seeds: their rates as a band
    warning: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict:
        """As JSON (what a preview job stores); the parts a preview without pruning lacks are left out."""
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None or k in ("model", "settings", "judge")}


def measure_safety(loaded: LoadedModel, harmful, benign, utility_pairs, *, max_new_tokens: int, batch_size: int,
             judge, progress: Progress | None, phase: str, cache: Path | None = None
             ) -> tuple[SafetyReport, dict | None]:
    def tagged(name):
        return (lambda p, d, t: progress(f"{phase}: {name}", d, t)) if progress else None

    safety = evaluate_safety(loaded, harmful, benign, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             judge=judge, cache=cache, progress=tagged("generating"))
    util = None
    if utility_pairs:
        util = utility(loaded, utility_pairs, batch_size=batch_size, max_new_tokens=max_new_tokens,
                       progress=tagged("utility")).to_dict()
    return safety, util


def preview(loaded: LoadedModel, harmful: Mapping[str, Sequence[str]], benign: Mapping[str, Sequence[str]], *,
            run: RunFolder | None = None, selection: pd.DataFrame | None = None, label: str = "",
            utility_pairs: Sequence[Pair] = (), max_new_tokens: int = 64, batch_size: int = 8,
            judge: Judge | str = DEFAULT_JUDGE, controls: Sequence[tuple[int, pd.DataFrame]] = (),
            baseline_cache: Path | None = None, progress: Progress | None = None) -> Preview:
    """Baseline metrics, and with a selection also the pruned model's, with the generations side by side;
    `controls` ((seed, random selection) pairs) are measured too and reported as a band beside the selection.
    `baseline_cache` (a folder) keeps and reuses the unpruned model's replies (see evaluation.cached_generate)."""
    judge = make_judge(judge) if isinstance(judge, str) else judge
    described, warning = None, None
    if selection is not None:
        if run is None:
            raise ValueError("a selection needs the run it came from (for its channel means)")
        check_same_model(run.units, loaded.units)
        described = describe_selection(run.units, selection, label)
        run_hash = run.manifest.get("model", {}).get("content_hash")
        if run_hash and run_hash != content_hash(loaded.folder):
            warning = ("the run was made on a model with the same shape but other weights; "
                       "its roles and means may not describe this model")
    base, base_util = measure_safety(loaded, harmful, benign, utility_pairs, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, judge=judge, progress=progress, phase="baseline",
                               cache=baseline_cache)
    result = Preview(model=loaded.spec, settings={"max_new_tokens": max_new_tokens, "decoding": "greedy"},
                     judge=base.settings, baseline=Measures.of(base, base_util), generations=[],
                     selection=described, warning=warning)
    if selection is None:
        result.generations = [{"set": s.name, "kind": "harmful" if s.harmful else "benign", "prompt": r.prompt,
                               "baseline": reply_of(r)}
                              for s in [*base.harmful, *base.benign] for r in s.rows]
        return result
    with prune(loaded, selection, run.means, tokens=run.tokens):
        pruned, pruned_util = measure_safety(loaded, harmful, benign, utility_pairs, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, judge=judge, progress=progress, phase="pruned")
    result.pruned = Measures.of(pruned, pruned_util)
    result.changes = paired_changes(base, pruned)
    measured = []
    for i, (seed, control) in enumerate(controls):
        with prune(loaded, control, run.means, tokens=run.tokens):
            report, report_util = measure_safety(loaded, harmful, benign, utility_pairs, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, judge=judge, progress=progress,
                                           phase=f"control {i + 1}/{len(controls)}")
        measured.append((seed, control, Measures.of(report, report_util)))
    if measured:
        result.controls = control_band(run.units, measured)
    result.generations = [
        {"set": b.name, "kind": "harmful" if b.harmful else "benign", "prompt": rb.prompt,
         "baseline": reply_of(rb), "pruned": reply_of(rp)}
        for b, p in zip([*base.harmful, *base.benign], [*pruned.harmful, *pruned.benign])
        for rb, rp in zip(b.rows, p.rows)]
    return result


def reply_of(row) -> dict:
    return {"reply": row.reply, "verdict": row.verdict, "reason": row.reason}


def paired_changes(before: SafetyReport, after: SafetyReport) -> dict:
    """How each headline rate changed on the same prompts: the prompts that moved each way, and the exact
    McNemar p-value of the change (small: unlikely to be chance)."""
    def outcomes(report: SafetyReport, sets: str, verdict: str) -> list[bool]:
        return [r.verdict == verdict for s in getattr(report, sets) for r in s.rows]

    headline = {"asr": ("harmful", "complied"), "over_refusal": ("benign", "refused")}
    out = {name: paired_change(outcomes(before, sets, v), outcomes(after, sets, v))
           for name, (sets, v) in headline.items()}
    for name, verdict in (("off_topic", "off-topic"), ("degenerate", "degenerate")):
        out[name] = paired_change(outcomes(before, "harmful", verdict) + outcomes(before, "benign", verdict),
                                  outcomes(after, "harmful", verdict) + outcomes(after, "benign", verdict))
    return out


def control_band(units: pd.DataFrame, measured: Sequence[tuple[int, pd.DataFrame, Measures]], of: str = "") -> dict:
    """Random controls as a band: each headline rate's mean, lowest and highest over the seeds (and utility's, when
    measured), the mean of every rate (`measures`), and each seed's own counts and parameter share. `of` names what
    the controls match, for the selection's label."""
    def spread(values: list) -> dict:
        values = [v for v in values if v is not None]
        return ({"mean": sum(values) / len(values), "min": min(values), "max": max(values)} if values
                else {"mean": None, "min": None, "max": None})

    band = {key: spread([m.counts[key]["rate"] for _, _, m in measured])
            for key in ("asr", "over_refusal", "off_topic", "degenerate")}
    if any(m.utility_exact_match is not None for _, _, m in measured):
        band["utility_exact_match"] = spread([m.utility_exact_match for _, _, m in measured])
    means = {key: spread([getattr(m, key) for _, _, m in measured])["mean"]
             for key in ("asr", "over_refusal", "degenerate_rate", "off_topic_rate", "utility_exact_match",
                         "utility_nll")}
    first = measured[0][1]
    label = f"random ({of + ', ' if of else ''}{len(measured)} seeds)"
    return {"seeds": [seed for seed, _, _ in measured], "selection": asdict(describe_selection(units, first, label)),
            "measures": means, "band": band,
            "per_seed": [{"seed": seed, "counts": m.counts, "units": len(chosen),
                          "param_fraction": describe_selection(units, chosen, "").param_fraction}
                         for seed, chosen, m in measured]}


def refusal_estimate(loaded: LoadedModel, harmful: Sequence[str], benign: Sequence[str], *,
                     run: RunFolder | None = None, selection: pd.DataFrame | None = None,
                     batch_size: int = 8, cache: Path | None = None) -> dict:
    """An instant estimate while replies are generated: the mean probability that the first reply token opens a
    refusal (evaluation.first_token_refusal, one forward pass), on harmful and benign prompts, as the model is and
    with the selection pruned. An estimate: a refusal's first token also opens some answers. With `cache`, the
    unpruned model's probabilities are kept there (by model, device, dtype and prompts), so the next estimate of
    the same prompts only runs the pruned model. The probe keeps no replies and only the last position's logits,
    so it runs twice `batch_size` prompts a forward (2.85 -> 2.5 s for 32 SmolLM2 prompts on 2 CPU cores)."""
    from .evaluation import REFUSAL_STARTS, first_token_refusal, keep_json, model_cache_path

    def probabilities(prompts: list[str], kept_in: Path | None) -> list[float]:
        kept = atomic.read_json(kept_in) if kept_in is not None else None
        if isinstance(kept, list) and len(kept) == len(prompts):
            return kept
        found = first_token_refusal(loaded, prompts, batch_size=2 * batch_size).tolist() if prompts else []
        if kept_in is not None:
            keep_json(kept_in, found)
        return found

    def probe(pruned: bool) -> dict:
        out = {}
        for kind, prompts in (("harmful", list(harmful)), ("benign", list(benign))):
            kept_in = None if pruned or cache is None else model_cache_path(
                cache, loaded, [prompts, list(REFUSAL_STARTS), "first-token v1"], prefix="probe-")
            p = probabilities(prompts, kept_in)
            out[kind] = {"n": len(p), "mean": float(sum(p) / len(p)) if len(p) else None}
        return out

    result = {"baseline": probe(False), "starts": list(REFUSAL_STARTS)}
    if selection is not None:
        if run is None:
            raise ValueError("a selection needs the run it came from (for its channel means)")
        with prune(loaded, selection, run.means, tokens=run.tokens):
            result["pruned"] = probe(True)
    return result
