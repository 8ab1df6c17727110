"""One request and one function per verb. The CLI parses its arguments into a request and prints the result; the
API validates the same request (its schemas build it); a job stores the request and the worker runs the same
function with it. So every flow (load, choose units, measure, train, save) is written here once.

Requests and results are plain dataclasses; `to_dict` / `from_dict` give the JSON a job stores. Importing this
module is light (no torch): the engine is imported when a verb runs.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.constants import CONTROL_SEEDS, Progress
from backend.engine.roles import Thresholds

if TYPE_CHECKING:
    import pandas as pd

    from backend.engine.attribution import Attribution
    from backend.engine.inspect import UnitInspection
    from backend.engine.models import LoadedModel
    from backend.engine.preview import Preview

# ----------------------------------------------------------------------------------------------------------------
# What verbs share: how models are loaded, which units, which prompts


class Models:
    """How a verb gets its models. `get` may hand out a shared, cached model (the worker keeps a few loaded);
    `fresh` always loads a private float32 copy, for training in place (AdamW steps vanish in bfloat16)."""

    def get(self, spec: str, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
        from backend.engine.models import load_model

        return load_model(spec, device=device, dtype=dtype)

    def fresh(self, spec: str, *, device: str = "auto") -> LoadedModel:
        from backend.engine.models import load_model

        return load_model(spec, device=device, dtype="float32")


def _record(cls, data: Mapping[str, Any] | None):
    """A request dataclass from its stored dict (nested requests and Thresholds rebuilt, unknown keys refused)."""
    if data is None or isinstance(data, cls):
        return data
    kinds = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(kinds)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    values = {}
    for name, value in data.items():
        nested = NESTED.get((cls.__name__, name))
        if nested is Thresholds:
            value = Thresholds(**value) if isinstance(value, Mapping) else value
        elif nested is not None:
            value = _record(nested, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


@dataclass(frozen=True)
class UnitGroups:
    """Which units an intervention takes: whole role groups, plus the top `cu_fraction` of CU's parameters (ranked
    by z_safety - z_utility), plus `explicit` single units, kept to `layers` when given; `random` swaps them for a
    seeded random set of the same parameter mass per module (the paper's control; alone it matches SCU).
    `thresholds` recompute the roles first (default: the run's own); `reference` is what pruned channels are held
    at (default: the other attribute's mean)."""

    groups: tuple[str, ...] = ()
    cu_fraction: float = 0.0
    random: bool = False
    seed: int = 0
    thresholds: Thresholds | None = None
    reference: str | None = None
    explicit: tuple[tuple[int, str, int], ...] = ()  # (layer, module, unit) of single units, added to the groups
    layers: tuple[int, ...] | None = None  # keep only units of these layers

    def __post_init__(self):
        object.__setattr__(self, "explicit", tuple((int(l), str(m), int(u)) for l, m, u in self.explicit))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))

    @classmethod
    def parse(cls, text: str, **fields) -> UnitGroups:
        """`SCU`, `SCU,CU:0.06`, `random`: the groups as the CLI and the masks route take them."""
        from backend.engine.interventions import GroupSpec

        spec = GroupSpec.parse(text)
        cu = max(spec.cu_fraction, fields.pop("cu_fraction", 0.0) or 0.0)
        return cls(groups=spec.groups, cu_fraction=cu, random=spec.random, **fields)

    @property
    def spec(self):
        from backend.engine.interventions import GroupSpec

        return GroupSpec(tuple(self.groups), float(self.cu_fraction), bool(self.random), self.explicit, self.layers)

    @property
    def label(self) -> str:
        """`SCU,CU:0.06`, `random (seed 0)`: the groups as the CLI writes them."""
        return self.spec.label(self.seed)

    def units_at(self, units: pd.DataFrame) -> pd.DataFrame:
        """The run's units, with roles recomputed when these groups name their own thresholds."""
        from backend.engine.roles import reclassify

        return reclassify(units, self.thresholds) if self.thresholds is not None else units

    def choose(self, units: pd.DataFrame) -> pd.DataFrame:
        """The units these groups name in a run's units table, each with the reference its ablation uses."""
        from backend.engine.interventions import choose

        return choose(self.units_at(units), self.spec, seed=self.seed, reference=self.reference)


@dataclass(frozen=True)
class EvalSets:
    """Prompts to measure refusal on: the first `limit` of each harmful and benign set (and of a utility set with
    reference answers), answered greedily in at most `max_new_tokens` tokens. `paths` maps a set's name to the file
    it is read from (the service resolves names inside its data roots); a name not in it is read as it is."""

    harmful: tuple[str, ...] = ("advbench-eval",)
    benign: tuple[str, ...] = ("benign-prompts",)
    utility: str | None = None
    limit: int = 20
    max_new_tokens: int = 64
    batch_size: int = 8
    judge: str | None = None  # v2, keyword or hf:PATH; None: the default (engine.evaluation.DEFAULT_JUDGE)
    paths: Mapping[str, str] = field(default_factory=dict)

    @property
    def judge_spec(self) -> str:
        from backend.engine.evaluation import DEFAULT_JUDGE

        return self.judge or DEFAULT_JUDGE

    def prompts(self) -> tuple[dict[str, list[str]], dict[str, list[str]], list]:
        """(harmful sets, benign sets, utility pairs) as the engine takes them."""
        from backend.engine.data import load_pairs, prompt_sets

        harmful = prompt_sets(self.harmful, self.limit, self.paths)
        benign = prompt_sets(self.benign, self.limit, self.paths)
        utility = []
        if self.utility:
            utility = list(load_pairs(self.paths.get(self.utility, self.utility)).pairs[:self.limit])
        return harmful, benign, utility


# ----------------------------------------------------------------------------------------------------------------
# attribute


@dataclass(frozen=True)
class AttributeRequest:
    """Score and classify every unit of `model` on a safety and a utility calibration set (`ssah attribute`)."""

    model: str
    safety: str = "advbench-refusals"
    utility: str = "benign-answers"
    samples: int | None = 128
    max_length: int | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    positions: str = "response"
    responses: str = "given"
    self_max_new_tokens: int = 64
    thresholds: Thresholds = Thresholds()

    to_dict = asdict

    @classmethod
    def from_dict(cls, data: Mapping) -> AttributeRequest:
        return _record(cls, data)


def attribute(request: AttributeRequest, out: str | Path | None = None, *, models: Models | None = None,
              progress: Progress | None = None) -> Attribution:
    """Load the sets and the model, score, classify and (with `out`) write the run folder.

    responses="self" replaces each set's responses by the model's own greedy replies (the paper's setting: the
    aligned model's varied refusals rather than one fixed text)."""
    from backend.constants import RESPONSES
    from backend.engine.attribution import attribute as score
    from backend.engine.attribution import self_answered
    from backend.engine.data import DataError, load_pairs

    r = request
    if r.samples is not None and r.samples < 1:
        raise DataError(f"samples must be at least 1, got {r.samples}")
    if r.responses not in RESPONSES:
        raise DataError(f"responses must be one of {', '.join(RESPONSES)}, got {r.responses!r}")
    if progress:
        progress("loading data", 0, 1)
    safety, utility = (load_pairs(name, samples=r.samples, seed=r.seed) for name in (r.safety, r.utility))
    if progress:
        progress("loading model", 0, 1)
    loaded = (models or Models()).get(r.model, device=r.device, dtype=r.dtype)
    if progress:
        progress("loading model", 1, 1)
    if r.responses == "self":
        safety, utility = (self_answered(loaded, part, r.self_max_new_tokens, r.batch_size, progress)
                           for part in (safety, utility))
    result = score(loaded, safety, utility, batch_size=r.batch_size, max_length=r.max_length,
                   positions=r.positions, thresholds=r.thresholds, seed=r.seed, progress=progress)
    result.manifest["responses"] = r.responses
    if r.responses == "self":
        result.manifest["self_max_new_tokens"] = r.self_max_new_tokens
        result.self_responses = [{"split": split, "prompt": p.prompt, "response": p.response}
                                 for split, part in (("safety", safety), ("utility", utility)) for p in part.pairs]
    if out is not None:
        if progress:
            progress("saving", 0, 1)
        result.save(out)
    return result


# ----------------------------------------------------------------------------------------------------------------
# evaluate (a preview of pruning)


@dataclass(frozen=True)
class EvaluateRequest:
    """Refusal, over-refusal and utility of `model`, and with `prune` also of the model with those units pruned,
    on the same prompts side by side (`ssah evaluate`; a preview in the API). `run` is the run folder of this
    model, needed to choose units and for their channel means."""

    model: str
    run: str | None = None
    prune: UnitGroups | None = None
    sets: EvalSets = EvalSets()
    controls: int = 0  # random controls of the pruned group's mass and reference (seeds after prune.seed)
    device: str = "auto"
    dtype: str = "auto"

    to_dict = asdict

    @classmethod
    def from_dict(cls, data: Mapping) -> EvaluateRequest:
        return _record(cls, data)


def evaluate(request: EvaluateRequest, *, models: Models | None = None, progress: Progress | None = None) -> Preview:
    from backend.engine.attribution import load_run
    from backend.engine.preview import preview

    r = request
    if r.prune is not None and r.run is None:
        raise ValueError("pruning needs the run folder of this model (for its roles and channel means)")
    if r.controls and (r.prune is None or r.prune.random):
        raise ValueError("random controls are for pruning a group (they take random units of its mass)")
    run = load_run(r.run) if r.run else None
    harmful, benign, utility_pairs = r.sets.prompts()
    selection = r.prune.choose(run.units) if r.prune is not None else None
    controls = [(seed, dataclasses.replace(r.prune, random=True, seed=seed).choose(run.units))
                for seed in range(r.prune.seed + 1, r.prune.seed + 1 + r.controls)] if r.controls else []
    if progress:
        progress("loading model", 0, 1)
    loaded = (models or Models()).get(r.model, device=r.device, dtype=r.dtype)
    return preview(loaded, harmful, benign, run=run, selection=selection, label=r.prune.label if r.prune else "",
                   utility_pairs=utility_pairs, max_new_tokens=r.sets.max_new_tokens, batch_size=r.sets.batch_size,
                   judge=r.sets.judge_spec, controls=controls, baseline_cache=baseline_cache(), progress=progress)


def baseline_cache():
    """Where the unpruned replies of every preview and sweep are kept (SSAH_HOME/generations)."""
    from backend.engine.models import ssah_home

    return ssah_home() / "generations"


# ----------------------------------------------------------------------------------------------------------------
# sweep and estimate


def sweep_controls(value: int | bool) -> int:
    """How many random controls each sweep point gets: 0 (none) or 5 to 20 seeds, drawn as a band. `True`, the
    one-control flag of requests made before bands, means 5 and `False` 0; anything else is a ValueError."""
    low, high = CONTROL_SEEDS
    if isinstance(value, bool):
        return low if value else 0
    if not isinstance(value, int) or not (value == 0 or low <= value <= high):
        raise ValueError(f"controls must be 0 (none) or {low} to {high} seeds: at least {low} random sets make a "
                         f"band of the control, got {value!r}")
    return value


@dataclass(frozen=True)
class SweepRequest:
    """One role group pruned at growing parameter fractions (its threshold; CU: its top fraction), all in one
    job that loads the model once and generates the unpruned replies once; `controls` adds that many random sets
    of each point's mass at the same reference (0 or 5 to 20 seeds: `sweep_controls`), shown as a band."""

    model: str
    run: str
    group: str = "SCU"
    fractions: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.05)
    sets: EvalSets = EvalSets()
    thresholds: Thresholds | None = None  # the other roles' thresholds (default: the run's)
    reference: str | None = None
    controls: int = 0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "controls", sweep_controls(self.controls))

    to_dict = asdict

    @classmethod
    def from_dict(cls, data: Mapping) -> SweepRequest:
        return _record(cls, data)


def sweep(request: SweepRequest, *, models: Models | None = None, progress: Progress | None = None):
    from backend.engine.attribution import load_run
    from backend.engine.sweep import sweep as run_sweep

    r = request
    run = load_run(r.run)
    harmful, benign, _ = r.sets.prompts()
    if progress:
        progress("loading model", 0, 1)
    loaded = (models or Models()).get(r.model, device=r.device, dtype=r.dtype)
    return run_sweep(loaded, run, r.group, r.fractions, harmful, benign, thresholds=r.thresholds,
                     reference=r.reference, controls=r.controls, seed=r.seed, max_new_tokens=r.sets.max_new_tokens,
                     batch_size=r.sets.batch_size, judge=r.sets.judge_spec, baseline_cache=baseline_cache(),
                     progress=progress)


@dataclass(frozen=True)
class EstimateRequest:
    """The first-token refusal probe of the same selection and prompts as a preview (one forward pass each way):
    an estimate to show while the preview's replies are generated."""

    model: str
    run: str | None = None
    prune: UnitGroups | None = None
    sets: EvalSets = EvalSets()
    device: str = "auto"
    dtype: str = "auto"

    to_dict = asdict

    @classmethod
    def from_dict(cls, data: Mapping) -> EstimateRequest:
        return _record(cls, data)


def estimate(request: EstimateRequest, *, models: Models | None = None, progress: Progress | None = None) -> dict:
    from backend.engine.attribution import load_run
    from backend.engine.preview import refusal_estimate

    r = request
    if r.prune is not None and r.run is None:
        raise ValueError("pruning needs the run folder of this model (for its roles and channel means)")
    run = load_run(r.run) if r.run else None
    harmful, benign, _ = r.sets.prompts()
    selection = r.prune.choose(run.units) if r.prune is not None else None
    loaded = (models or Models()).get(r.model, device=r.device, dtype=r.dtype)
    if progress:
        progress("probing first tokens", 0, 1)
    every = [[p for ps in sets.values() for p in ps] for sets in (harmful, benign)]
    return refusal_estimate(loaded, *every, run=run, selection=selection, batch_size=r.sets.batch_size,
                            cache=baseline_cache())


# ----------------------------------------------------------------------------------------------------------------
# inspect (one unit up close)


@dataclass(frozen=True)
class InspectRequest:
    """One unit of a run up close (`engine.inspect`): the `top_k` tokens its output promotes and suppresses, and
    the `contexts` calibration samples per set where it fires most, with `left` and `right` tokens around the
    peak. `run` is the run folder of `model`; its calibration pairs are read again as its manifest records them.
    With `save` the result is cached in the run folder (inspect/{module}.{layer}.{unit}.json)."""

    model: str
    run: str
    module: str
    layer: int
    unit: int
    top_k: int = 20
    contexts: int = 12
    left: int = 10
    right: int = 4
    batch_size: int = 8
    save: bool = True
    device: str = "auto"
    dtype: str = "auto"

    to_dict = asdict

    @classmethod
    def from_dict(cls, data: Mapping) -> InspectRequest:
        return _record(cls, data)


def inspect(request: InspectRequest, *, models: Models | None = None,
            progress: Progress | None = None) -> UnitInspection:
    """Check the unit exists, rebuild the run's calibration sets, load the model (refused when the run was made
    on another one), inspect the unit and (with `save`) write the result atomically into the run folder."""
    import json

    from backend.engine import atomic
    from backend.engine.attribution import calibration_sets, load_run
    from backend.engine.inspect import inspect_unit, inspection_path, unit_row
    from backend.engine.interventions import check_same_model

    r = request
    for name in ("top_k", "contexts", "batch_size"):
        if getattr(r, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(r, name)}")
    if r.left < 0 or r.right < 0:
        raise ValueError(f"left and right must be at least 0, got {r.left} and {r.right}")
    if progress:
        progress("loading run", 0, 1)
    run = load_run(r.run)
    unit_row(run.units, r.module, r.layer, r.unit)  # a unit the run lacks is named before any model is loaded
    sets = calibration_sets(run)
    if progress:
        progress("loading model", 0, 1)
    loaded = (models or Models()).get(r.model, device=r.device, dtype=r.dtype)
    check_same_model(run.units, loaded.units)
    result = inspect_unit(loaded, sets, r.module, r.layer, r.unit, means=run.means, tokens=run.tokens,
                          positions=run.manifest.get("positions", "response"),
                          max_length=run.manifest.get("max_length"), top_k=r.top_k, contexts=r.contexts,
                          left=r.left, right=r.right, batch_size=r.batch_size, progress=progress)
    if r.save:
        if progress:
            progress("saving", 0, 1)
        path = inspection_path(run.folder, r.module, r.layer, r.unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------------------
# finetune


@dataclass(frozen=True)
class FinetuneRequest:
    """Fine-tune `model` on `data` with `freeze` units kept fixed, or with only `train_only` units trained (the
    alignment budget), or fully; `check` measures refusal before and after; the model is written to `out`."""

    model: str
    data: str
    steps: int
    out: str
    run: str | None = None
    freeze: UnitGroups | None = None
    train_only: UnitGroups | None = None
    lr: float = 1e-4
    batch_size: int = 8
    weight_decay: float = 0.0
    samples: int | None = None
    seed: int = 0
    check: EvalSets | None = None
    device: str = "auto"
    data_path: str | None = None  # where `data` is read from, when the service resolved it

    to_dict = asdict

    @classmethod
    def from_dict(cls, data: Mapping) -> FinetuneRequest:
        return _record(cls, data)

    @property
    def mode(self) -> str:
        if self.freeze is not None:
            return f"freeze {self.freeze.label}"
        if self.train_only is not None:
            return f"train only {self.train_only.label}"
        return "full"


@dataclass
class FinetuneReport:
    base_model: str  # the model fine-tuned
    model: str  # the fine-tuned model's folder
    data: str
    mode: str
    training: dict  # config, loss and lr per step, trainable parameters
    before: dict | None = None  # the refusal check before and after (a preview's baseline column)
    after: dict | None = None
    run_id: str | None = None

    to_dict = asdict


def finetune(request: FinetuneRequest, *, models: Models | None = None, progress: Progress | None = None,
             staging_prefix: str | None = None) -> FinetuneReport:
    """Train a fresh float32 copy of the model and publish it whole (with finetune.json) at `request.out`."""
    from backend.engine.attribution import load_run
    from backend.engine.data import load_pairs
    from backend.engine.masks import trainable_masks
    from backend.recipes.finetune import FinetuneConfig
    from backend.recipes.finetune import finetune as train

    r = request
    if r.freeze is not None and r.train_only is not None:
        raise ValueError("give freeze or train_only, not both")
    if (r.freeze or r.train_only) and not r.run:
        raise ValueError("freezing or training only a group needs the run folder of this model")
    _check_out(r.out)
    config = FinetuneConfig(steps=r.steps, lr=r.lr, batch_size=r.batch_size, weight_decay=r.weight_decay,
                            seed=r.seed)
    data = load_pairs(r.data_path or r.data, samples=r.samples, seed=r.seed)
    run = load_run(r.run) if r.run else None
    check = r.check.prompts() if r.check else None
    if progress:
        progress("loading model", 0, 1)
    loaded = (models or Models()).fresh(r.model, device=r.device)
    masks = None
    groups = r.freeze or r.train_only
    if groups is not None:
        masks = trainable_masks(loaded, groups.units_at(run.units), seed=groups.seed,
                                **{"freeze" if r.freeze else "train_only": groups.spec})
    before = _refusal_check(loaded, r.check, check, "before", progress)
    log = train(loaded, data.pairs, masks, config, progress=progress)
    after = _refusal_check(loaded, r.check, check, "after", progress)
    report = FinetuneReport(base_model=r.model, model=r.out, data=r.data, mode=r.mode, training=log, before=before,
                            after=after)
    if progress:
        progress("saving", 0, 1)
    save_trained(loaded, Path(r.out), "finetune.json", report.to_dict(), staging_prefix)
    return report


def _refusal_check(loaded, sets: EvalSets | None, prompts, tag: str, progress: Progress | None) -> dict | None:
    """Refusal and over-refusal of the model as it is now (the before/after of a fine-tune)."""
    from backend.engine.preview import preview

    if sets is None:
        return None
    harmful, benign, _ = prompts
    tagged = (lambda p, d, t: progress(f"{tag}: {p}", d, t)) if progress else None
    return preview(loaded, harmful, benign, max_new_tokens=sets.max_new_tokens, batch_size=sets.batch_size,
                   judge=sets.judge_spec, progress=tagged).baseline.to_dict()


def _check_out(out: str) -> None:
    path = Path(out)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "config.json").exists())):
        raise ValueError(f"{out} exists and is not a model folder; give a new folder")


def save_trained(loaded, out: Path, report_name: str, report: dict, staging_prefix: str | None = None) -> None:
    """The trained model and its report, written beside `out` and renamed into place together."""
    import json

    from backend.engine import atomic

    with atomic.staged_folder(out, prefix=staging_prefix, replace=True) as staging:
        loaded.model.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        (staging / report_name).write_text(json.dumps(report, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# align


@dataclass(frozen=True)
class DeltaForm:
    """Also write the change from the base model as a delta file (`path`), in a form (`bits`, DARE `keep`); the
    aligned model is then rebuilt from base + delta, so the figures reported are the shipped model's."""

    path: str
    bits: int = 16
    keep: float | None = None

    def __post_init__(self):
        from backend.engine.delta import DARE_BITS

        if self.bits == 1 and self.keep is not None:
            raise ValueError("give 1-bit values or a DARE share (keep), not both")
        if self.bits in DARE_BITS and self.keep is None:
            raise ValueError(f"{self.bits}-bit values are for a DARE delta: give the share kept (keep) too")
        if self.keep is not None and not 0 < self.keep < 1:
            raise ValueError(f"keep must be above 0 and below 1, got {self.keep:g}")


@dataclass(frozen=True)
class AlignRequest:
    """Safety-align `model` (`recipes.align`): full, budget (only the run's redundant units train) or low-rank;
    evaluate it before and after on sets never trained on (`eval_limit` prompts of each, None: all; no evaluation
    when `evaluate` is false); write it to `out`."""

    model: str
    out: str
    config: Any = None  # recipes.align.AlignConfig; None: its defaults
    run: str | None = None  # budget mode: a run of this model names the units to train
    evaluate: bool = True
    eval_limit: int | None = None
    max_new_tokens: int = 48
    judge: str | None = None  # None: the default judge
    delta: DeltaForm | None = None
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> AlignRequest:
        from backend.recipes.align import AlignConfig

        data = dict(data)
        config = data.pop("config", None)
        request = _record(cls, data)
        return dataclasses.replace(request, config=AlignConfig(**config) if isinstance(config, Mapping) else config)


@dataclass
class AlignReport:
    base_model: str  # the model aligned
    model: str  # the aligned model's folder
    config: dict
    data: dict
    training: dict
    seconds: float
    budget_roles: dict | None = None
    delta: dict | None = None
    timings: dict = field(default_factory=dict)
    base: dict | None = None  # evaluation before and after, per set, and the targets met
    aligned: dict | None = None
    targets: dict | None = None
    run_id: str | None = None

    to_dict = asdict


def align(request: AlignRequest, *, models: Models | None = None, progress: Progress | None = None,
          staging_prefix: str | None = None) -> AlignReport:
    """Align a fresh float32 copy of the model, evaluate it before and after, and publish it whole (with
    alignment.json, and rebuilt from base + delta when a delta form is asked for) at `request.out`."""
    import json
    import time

    from backend.engine import atomic
    from backend.engine.attribution import load_run
    from backend.engine.models import resolve
    from backend.recipes.align import AlignConfig, report_path
    from backend.recipes.align import align as train
    from backend.recipes.align_eval import evaluate_alignment, targets

    r = request
    config = r.config or AlignConfig()
    _check_out(r.out)
    if config.teacher:
        resolve(config.teacher)  # a wrong teacher is named before any evaluation or training
    units = load_run(r.run).units if config.mode == "budget" and r.run else None
    models = models or Models()
    timings = {}
    t0 = time.perf_counter()
    if progress:
        progress("loading model", 0, 1)
    loaded = models.fresh(r.model, device=r.device)
    base_folder = loaded.folder

    def evaluated(model, tag: str) -> dict | None:
        if not r.evaluate:
            return None
        return evaluate_alignment(model, config.held_out, limit=r.eval_limit, max_new_tokens=r.max_new_tokens,
                                  progress=(lambda p, d, t: progress(f"{tag}: {p}", d, t)) if progress else None,
                                  cache=tag == "before",  # the untouched model: its sets are cached
                                  **({"judge": r.judge} if r.judge else {}))

    base = evaluated(loaded, "before")
    timings["base evaluation"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    log = train(loaded, config, progress, units=units)
    timings["alignment (data, attribution, training)"] = round(time.perf_counter() - t0, 1)
    report = AlignReport(base_model=r.model, model=r.out, **log, timings=timings)
    if progress:
        progress("saving", 0, 1)
    with atomic.staged_folder(Path(r.out), prefix=staging_prefix, replace=True) as staging:
        loaded.model.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        if r.delta is not None:
            report.delta = _rebuild_from_delta(base_folder, staging, r.delta, config.seed)
            loaded = models.fresh(str(staging), device=r.device)  # the figures below are of base + delta
        t0 = time.perf_counter()
        aligned = evaluated(loaded, "after")
        if aligned is not None:
            timings["aligned evaluation"] = round(time.perf_counter() - t0, 1)
            report.base, report.aligned = base, aligned
            report.targets = targets(aligned, base, config.held_out)
        report_path(staging).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _rebuild_from_delta(base: Path, folder: Path, form: DeltaForm, seed: int) -> dict:
    """Write the delta of the model in `folder` against `base` and replace the folder's weights by base + delta;
    returns what the delta is (path, form, bytes, the approximation's error)."""
    import os
    import tempfile

    from safetensors.torch import load_file

    from backend.engine.delta import derive_folder, make_delta, save_delta

    weights = "model.safetensors"
    tensors, meta = make_delta(load_file(str(base / weights)), load_file(str(folder / weights)),
                               base_name=base.name, bits=form.bits, keep=form.keep, seed=seed)
    save_delta(form.path, tensors, meta)
    with tempfile.TemporaryDirectory(prefix=".rebuilt-", dir=folder.parent) as scratch:
        rebuilt = derive_folder(base, Path(form.path), Path(scratch) / "model")
        os.replace(rebuilt / weights, folder / weights)
    return {"path": form.path, "bits": form.bits, "keep": form.keep, "bytes": Path(form.path).stat().st_size,
            "approximation_error": float(meta.get("approximation_error", 0))}


# ----------------------------------------------------------------------------------------------------------------
# judge


@dataclass(frozen=True)
class JudgeRequest:
    """Judge your own generations (`ssah judge`): `input` is a .jsonl file of rows with `prompt` and `reply` (and
    optionally `kind`: harmful or benign); `output` gets every row, in the same order, with `verdict` and `reason`
    added."""

    input: str
    output: str
    judge: str | None = None  # v2, keyword or hf:PATH; None: the default

    to_dict = asdict


@dataclass
class JudgeReport:
    output: str
    judge: dict  # the judge's settings
    rows: int
    verdicts: dict[str, dict[str, int]]  # kind (harmful, benign, unknown) -> verdict -> count
    rates: dict[str, dict]  # asr (complied of harmful), over_refusal (refused of benign), as counts

    to_dict = asdict


def judge(request: JudgeRequest, *, progress: Progress | None = None) -> JudgeReport:
    import json

    from backend.engine import atomic
    from backend.engine.datafiles import read_judge_rows
    from backend.engine.evaluation import DEFAULT_JUDGE, make_judge
    from backend.engine.judge import VERDICTS
    from backend.engine.stats import Rate

    source, target = Path(request.input), Path(request.output)
    if target.resolve() == source.resolve():
        raise ValueError(f"--out {target} is the input file; give another file, so the input is kept")
    rows = read_judge_rows(source)
    judge = make_judge(request.judge or DEFAULT_JUDGE)
    if progress:
        progress("judging", 0, 1)
    verdicts = judge.judge([r["prompt"] for r in rows], [r["reply"] for r in rows], [r.get("kind") for r in rows])
    if progress:
        progress("judging", 1, 1)
    out = [{**row, "verdict": v.verdict, "reason": v.reason} for row, v in zip(rows, verdicts)]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in out))
    table: dict[str, dict[str, int]] = {}
    for row in out:
        kind = row.get("kind") or "unknown"
        table.setdefault(kind, dict.fromkeys(VERDICTS, 0))[row["verdict"]] += 1
    rates = {}
    for name, kind, verdict in (("asr", "harmful", "complied"), ("over_refusal", "benign", "refused")):
        if kind in table:
            rates[name] = Rate(table[kind][verdict], sum(table[kind].values())).to_dict()
    return JudgeReport(output=str(target), judge=judge.settings, rows=len(out), verdicts=table, rates=rates)


# ----------------------------------------------------------------------------------------------------------------
# masks (freeze masks for users' own training code)


def masks(model_folder: str | Path, units: pd.DataFrame, groups: UnitGroups, mode: str = "freeze"):
    """The freeze plan (`engine.masks.MaskPlan`) of `groups` in a run's `units`: mode "freeze" keeps the entries
    the groups own fixed, "train_only" (the alignment budget) trains only them. The model is built from its config
    on the meta device (no weights read), so this is quick for an 8B model too."""
    from backend.engine.masks import mask_plan

    if mode not in ("freeze", "train_only"):
        raise ValueError(f"mode must be freeze or train_only, got {mode!r}")
    config = Path(model_folder) / "config.json"
    unit_map, shapes = _skeleton(str(model_folder), config.stat().st_mtime if config.is_file() else 0.0)
    return mask_plan(unit_map, shapes, groups.units_at(units), seed=groups.seed, **{mode: groups.spec})


@functools.lru_cache(maxsize=8)
def _skeleton(folder: str, stamp: float):
    from backend.engine.models import skeleton

    return skeleton(folder)


# ----------------------------------------------------------------------------------------------------------------
# compare


def compare(run_a: str | Path, run_b: str | Path):
    """Role transfer between two runs of one architecture (a RoleTransfer)."""
    from backend.engine.attribution import load_run
    from backend.recipes.transfer import compare as transfer

    return transfer(load_run(run_a).units, load_run(run_b).units)


NESTED = {("EvaluateRequest", "prune"): UnitGroups, ("EvaluateRequest", "sets"): EvalSets,
          ("SweepRequest", "sets"): EvalSets, ("SweepRequest", "thresholds"): Thresholds,
          ("EstimateRequest", "prune"): UnitGroups, ("EstimateRequest", "sets"): EvalSets,
          ("FinetuneRequest", "freeze"): UnitGroups, ("FinetuneRequest", "train_only"): UnitGroups,
          ("FinetuneRequest", "check"): EvalSets, ("AlignRequest", "delta"): DeltaForm,
          ("UnitGroups", "thresholds"): Thresholds, ("AttributeRequest", "thresholds"): Thresholds}
