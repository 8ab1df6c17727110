"""A sweep: one role group pruned at growing parameter fractions, measured on the same prompts, with the unpruned
replies generated once for every point (and reused from the cache across sweeps and previews), and optionally
random controls of each point's mass at its reference, several seeds drawn as a band."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from backend.constants import ROLES

from .attribution import RunFolder
from .evaluation import DEFAULT_JUDGE, make_judge
from .interventions import InterventionError, check_same_model, matched_reference, prune, random_like, select
from .judge import Judge
from .models import LoadedModel
from .preview import Measures, control_band, describe_selection, measure_safety, paired_changes, reply_of
from .roles import Thresholds, reclassify
from .scoring import Progress

SWEEPABLE = ROLES  # SCU, UCU and RU by their threshold; CU by the top fraction of it (ranked by z_S - z_U)


@dataclass
class SweepPoint:
    fraction: float  # the group's threshold (its share of unit parameters), or CU's top fraction
    selection: dict
    measures: Measures
    changes: dict  # paired changes against the unpruned replies (exact McNemar)
    replies: list[dict]  # per prompt, in the order of `Sweep.prompts`: the pruned reply, its verdict and reason
    control: dict | None = None  # random sets of the same mass at the same reference: seeds, mean measures, band


@dataclass
class Sweep:
    group: str
    judge: dict
    settings: dict
    prompts: list[dict]  # set, kind, prompt
    baseline: Measures
    baseline_replies: list[dict]
    points: list[SweepPoint] = field(default_factory=list)
    run_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def group_at(units: pd.DataFrame, thresholds: Thresholds, group: str, fraction: float,
             reference: str | None = None) -> pd.DataFrame:
    """The units of `group` when its threshold is `fraction` (the other thresholds as given); CU: the top
    `fraction` of CU's parameters at the given thresholds."""
    if group not in SWEEPABLE:
        raise InterventionError(f"a sweep takes one role group ({', '.join(SWEEPABLE)}), got {group!r}")
    if not 0 < fraction <= 1:
        raise InterventionError(f"sweep fractions must be in (0, 1], got {fraction:g}")
    if group == "CU":
        return select(reclassify(units, thresholds), cu_fraction=fraction, reference=reference)
    at = Thresholds(**{**thresholds.as_dict(), f"h_{group.lower()}": fraction})
    return select(reclassify(units, at), [group], reference=reference)


def control_seeds(seed: int, point: int, controls: int) -> list[int]:
    """The seeds of point `point`'s (0-based, in fraction order) random controls: seed + 1 + point * controls
    onwards, so that no two controls of a sweep share a seed and the first point's are a preview's (seed + 1..)."""
    start = seed + 1 + point * controls
    return list(range(start, start + controls))


def sweep(loaded: LoadedModel, run: RunFolder, group: str, fractions: Sequence[float],
          harmful: Mapping[str, Sequence[str]], benign: Mapping[str, Sequence[str]], *,
          thresholds: Thresholds | None = None, reference: str | None = None, controls: int = 0,
          seed: int = 0, max_new_tokens: int = 64, batch_size: int = 8, judge: Judge | str = DEFAULT_JUDGE,
          baseline_cache: Path | None = None, progress: Progress | None = None) -> Sweep:
    """Measure the unpruned model once, then `group` pruned at each fraction, and with `controls` that many seeded
    random sets of each point's parameter mass at the same reference (seeds: `control_seeds`), as a band."""
    judge = make_judge(judge) if isinstance(judge, str) else judge
    if isinstance(controls, bool) or controls < 0:  # a bool was the one-control flag before bands
        raise InterventionError(f"controls is how many random sets each point gets (0 or more), got {controls!r}")
    controls = int(controls)
    check_same_model(run.units, loaded.units)
    thresholds = thresholds or Thresholds(**run.manifest.get("thresholds", {}))
    fractions = sorted(set(float(f) for f in fractions))
    if not fractions:
        raise InterventionError("a sweep needs at least one fraction")
    selections = [group_at(run.units, thresholds, group, f, reference) for f in fractions]
    for fraction, chosen in zip(fractions, selections):
        if chosen.empty:
            raise InterventionError(f"{group} at {fraction:g} selects no unit of this run")
    steps = len(fractions) * (1 + controls)

    def tagged(i: int, name: str):
        return (lambda p, d, t: progress(f"point {i + 1}/{steps}: {name}: {p}", d, t)) if progress else None

    def measured(selection: pd.DataFrame, step: int, name: str, phase: str):
        with prune(loaded, selection, run.means, tokens=run.tokens):
            report, _ = measure_safety(loaded, harmful, benign, (), max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, judge=judge, progress=tagged(step, name), phase=phase)
        return report

    base, _ = measure_safety(loaded, harmful, benign, (), max_new_tokens=max_new_tokens, batch_size=batch_size,
                       judge=judge, progress=progress, phase="baseline", cache=baseline_cache)
    rows = [(s.name, "harmful" if s.harmful else "benign", r) for s in [*base.harmful, *base.benign] for r in s.rows]
    result = Sweep(group=group, judge=judge.settings, settings={"max_new_tokens": max_new_tokens, "decoding": "greedy",
                                                                "thresholds": thresholds.as_dict(), "seed": seed,
                                                                "controls": controls},
                   prompts=[{"set": name, "kind": kind, "prompt": r.prompt} for name, kind, r in rows],
                   baseline=Measures.of(base, None), baseline_replies=[reply_of(r) for _, _, r in rows])
    step = 0
    for i, (fraction, chosen) in enumerate(zip(fractions, selections)):
        report = measured(chosen, step, f"{group} at {fraction:g}", "pruned")
        step += 1
        label = f"{group}:{fraction:g}" if group == "CU" else f"{group} at h_{group.lower()} {fraction:g}"
        point = SweepPoint(fraction=fraction, selection=asdict(describe_selection(run.units, chosen, label)),
                           measures=Measures.of(report, None), changes=paired_changes(base, report),
                           replies=[reply_of(r) for s in [*report.harmful, *report.benign] for r in s.rows])
        randoms = []
        for j, control_seed in enumerate(control_seeds(seed, i, controls)):
            control = random_like(run.units, chosen, seed=control_seed,
                                  reference=reference or matched_reference(chosen))
            report = measured(control, step, f"random control {j + 1}/{controls} of {fraction:g}", "control")
            step += 1
            randoms.append((control_seed, control, Measures.of(report, None)))
        if randoms:
            point.control = control_band(run.units, randoms, of=label)
        result.points.append(point)
    return result
