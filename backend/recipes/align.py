"""Safety alignment on a CPU: teach an unaligned chat model to refuse harmful requests and keep answering harmless
ones, by full fine-tuning or by the paper's alignment budget (train only the base model's redundant units).

The data is built so that the model learns the request, not the wording:
- harmful prompts from AdvBench #101-520 and HarmBench (or Do-Not-Answer), each also rewritten in another style
  (a question, a casual aside, a role-play frame, a "start with Sure" push), answered with varied refusals;
- benign prompts of the same styles, many with alarming words used harmlessly ("kill a process", "shoot a photo"),
  answered with the base model's own greedy answers, so that what it already does well is kept.
Evaluation uses sets never trained on: AdvBench #1-100, a harmful source left out entirely, everyday and
benign-but-edgy prompts, the hand-written alarming-benign set, and knowledge (true vs false statements).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from backend.constants import Progress
from backend.engine.models import LoadedModel, load_model

from .align_data import (  # noqa: F401  (re-exported: the training data's parts)
    IMPERATIVE_STYLES,
    QUESTION_STYLES,
    REFUSAL_KINDS,
    REFUSAL_OPENERS,
    SCENARIO_QUESTION_STYLES,
    SCENARIO_STYLES,
    AlignmentData,
    alignment_data,
    benign_prompts,
    harmful_prompts,
    own_answers,
    own_refusals,
    restyle,
)
from .align_eval import EVALUATION_CACHE_VERSION, evaluate_alignment, evaluation_sets, targets  # noqa: F401

HELD_OUT_SOURCES = ("donotanswer", "harmbench")
BUDGET_SCORES = ("utility", "both")  # which units the alignment budget trains: AlignConfig.budget_score
DEFAULT_LR = {"full": 5e-5, "budget": 2e-4, "lowrank": 5e-4}  # by mode: what worked on SmolLM2-135M (docs/results.md)
DEFAULT_RANK = 32  # lowrank mode: 19.7 MB of delta on SmolLM2-135M
ALIGN_MODES = tuple(DEFAULT_LR)


@dataclass(frozen=True)
class AlignConfig:
    """How to align. `mode` full trains every parameter; budget trains only the base model's redundant units:
    with `budget_score` "utility" (the paper's), the units of least utility importance (lowest z_U) that make up
    `h_ru` of the unit parameters; with "both" (an alternative), the units of `budget_groups` (RU by default) of
    the roles at `h_ru` (RU then is the bottom of z_S + z_U); lowrank trains a rank-`rank` change of every decoder
    linear map (and the norms), so the whole change ships as a small delta. `held_out` names the harmful source
    left out of training entirely (evaluated as an unseen source). `lr` None is the mode's DEFAULT_LR, `rank` None
    DEFAULT_RANK in lowrank mode (the other modes have no rank). `strength` scales the learned change before the
    model is kept (weights = base + strength * change): 1 keeps it as trained; below 1 moves the model part of the
    way back to the base, which answers more harmless requests and more harmful ones, a trade to check on the
    evaluation sets. `teacher` (a model spec, e.g. a full alignment's folder) makes training distil that model:
    the loss is the KL divergence from its next-token distributions on the same replies. `benign_distil` holds
    the model to the base where it should answer: each benign pair learns the base model's next-token
    distributions on its own answer (KL divergence) rather than only the tokens it chose, while the harmful pairs
    learn their refusals' tokens. `anchor` > 0 adds that weight x the KL divergence from the base model's
    next-token distributions on the benign answers read as plain text (no chat template) to every step's loss,
    so that the model's language modelling outside the chat format (where knowledge is read) stays the base's
    while the chat replies are learnt; 0 adds nothing. `scenarios` adds every training prompt once more in a
    first-person scenario frame ("I want to ... . What should I do?", align_data.SCENARIO_STYLES). `refusals`
    "fixed" answers harmful requests with the eight written refusals (data.REFUSALS); "own" with the base model's
    own words after a refusal opener (align_data.own_refusals), so that alignment has the decision to learn and
    hardly any new text."""

    mode: str = "full"
    steps: int = 150
    lr: float | None = None
    batch_size: int = 8
    weight_decay: float = 0.0
    seed: int = 0
    held_out: str = "harmbench"
    budget_groups: str = "RU"
    budget_score: str = "utility"
    h_ru: float = 0.2
    rank: int | None = None
    attribution_samples: int = 128
    answer_tokens: int = 96
    benign_share: float = 0.5
    strength: float = 1.0
    teacher: str | None = None
    benign_distil: bool = False
    anchor: float = 0.0
    scenarios: bool = False
    refusals: str = "fixed"
    limit: int | None = None  # at most this many harmful and benign prompts (seeded): quick trials and tests

    def __post_init__(self):
        if self.mode not in ALIGN_MODES:
            raise ValueError(f"mode must be one of {', '.join(ALIGN_MODES)}, got {self.mode!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.mode])
        if self.mode == "lowrank" and self.rank is None:
            object.__setattr__(self, "rank", DEFAULT_RANK)
        elif self.mode != "lowrank" and self.rank is not None:
            raise ValueError(f"rank is for mode lowrank; mode {self.mode} has no rank")
        if self.held_out not in HELD_OUT_SOURCES:
            raise ValueError(f"held_out must be one of {', '.join(HELD_OUT_SOURCES)}, got {self.held_out!r}")
        if self.budget_score not in BUDGET_SCORES:
            raise ValueError(f"budget_score must be one of {', '.join(BUDGET_SCORES)}, got {self.budget_score!r}")
        if not 0 < self.benign_share < 1:
            raise ValueError(f"benign_share must be between 0 and 1, got {self.benign_share}")
        if not isinstance(self.strength, (int, float)) or not 0 < self.strength <= 1:
            raise ValueError(f"strength must be above 0 and at most 1 (the share of the learned change kept), "
                             f"got {self.strength}")
        if self.benign_distil and self.teacher is not None:
            raise ValueError("benign_distil distils the base model on the benign pairs; a teacher distils another "
                             "model on every pair: give one or the other")
        if not isinstance(self.anchor, (int, float)) or not 0 <= self.anchor < float("inf"):
            raise ValueError(f"anchor must be a number of at least 0 (0: no anchor), got {self.anchor!r}")
        if self.refusals not in REFUSAL_KINDS:
            raise ValueError(f"refusals must be one of {', '.join(REFUSAL_KINDS)}, got {self.refusals!r}")
        if not 0 < self.h_ru < 1:
            raise ValueError(f"h_ru must be between 0 and 1, got {self.h_ru}")
        for name in ("steps", "batch_size", "rank", "attribution_samples", "answer_tokens"):
            if name == "rank" and self.rank is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {self.limit!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a positive number, got {self.lr}")


def utility_only_budget(units, fraction: float):
    """The paper's alignment budget: a copy of a units table whose `role` is RU for the units of lowest utility
    importance (z_U, ties in canonical order) that first reach `fraction` of the unit parameters, CU for the rest."""
    from backend.engine.roles import bottom

    out = units.copy()
    chosen = bottom(units.z_utility.to_numpy(), units.params.to_numpy(), fraction)
    out["role"] = ["RU" if c else "CU" for c in chosen]
    return out


def budget_masks(loaded: LoadedModel, config: AlignConfig, progress: Progress | None = None, units=None):
    """Train-only masks of the base model's redundant units (AlignConfig.budget_score says which): from `units` (a
    run of this model) when given, else from an attribution on advbench-refusals / benign-answers. Returns (masks,
    units per role as trained)."""
    from backend.engine.attribution import attribute_builtin
    from backend.engine.interventions import GroupSpec
    from backend.engine.masks import trainable_masks
    from backend.engine.roles import Thresholds, reclassify

    given = units is not None
    if not given:
        samples = min(config.attribution_samples, config.limit or config.attribution_samples)
        units = attribute_builtin(loaded, samples=samples, seed=config.seed, progress=progress).units
    if config.budget_score == "utility":
        units, groups = utility_only_budget(units, config.h_ru), "RU"
    else:  # a given run keeps its own roles; an attribution made here takes its RU at h_ru
        units = units if given else reclassify(units, Thresholds(h_ru=config.h_ru))
        groups = config.budget_groups
    masks = trainable_masks(loaded, units, train_only=GroupSpec.parse(groups))
    return masks, {str(k): int(v) for k, v in units.role.value_counts().sort_index().items()}


def align(loaded: LoadedModel, config: AlignConfig, progress: Progress | None = None, *, units=None) -> dict:
    """Align `loaded` in place (float32 weights); returns the training log and what the data was. In budget mode
    `units` (a run of this very model) names the units to train; without it the model is attributed first."""
    import torch

    from backend.recipes.adapters import low_rank_adapters
    from backend.recipes.finetune import FinetuneConfig, finetune

    t0 = time.perf_counter()
    teacher = None  # loaded first: a wrong path fails before any work
    if config.teacher is not None:
        teacher = load_model(config.teacher, device=str(loaded.device), dtype="float32")
        if teacher.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
            raise ValueError(f"the teacher {config.teacher} has another tokenizer than the model; distillation "
                             "needs the same one")
        teacher = teacher.model
    base_copy = None  # a frozen copy of the base model, in the same precision as the one trained
    if config.benign_distil or config.anchor:
        base_copy = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    if config.benign_distil:
        teacher = base_copy
    data = alignment_data(loaded, config, progress)
    masks, roles = (None, None)
    if config.mode == "budget":
        masks, roles = budget_masks(loaded, config, progress, units)
    pairs = data.mixed(config.benign_share, config.seed)
    distil = None
    if config.benign_distil:
        benign = set(data.benign)
        distil = [pair in benign for pair in pairs]
    settings = FinetuneConfig(steps=config.steps, lr=config.lr, batch_size=config.batch_size,
                              weight_decay=config.weight_decay, seed=config.seed)
    anchor = (base_copy, [p.response for p in data.benign], config.anchor) if config.anchor else None
    before = None
    if config.strength != 1:
        before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    if config.mode == "lowrank":
        with low_rank_adapters(loaded.model, config.rank, seed=config.seed) as adapters:
            chosen = set(adapters)
            masks = {n: torch.tensor(n in chosen or p.dim() == 1) for n, p in loaded.model.named_parameters()}
            log = finetune(loaded, pairs, masks, settings, progress=progress, teacher=teacher, distil=distil,
                           anchor=anchor)
    else:
        log = finetune(loaded, pairs, masks, settings, progress=progress, teacher=teacher, distil=distil,
                       anchor=anchor)
    if before is not None:
        with torch.no_grad():
            for name, param in loaded.model.named_parameters():
                param.copy_(torch.lerp(before[name], param, config.strength))
    return {"config": asdict(config), "data": {**data.sources, "harmful_pairs": len(data.harmful),
                                               "benign_pairs": len(data.benign), "mixed": len(pairs)},
            "budget_roles": roles,
            "training": log, "seconds": round(time.perf_counter() - t0, 1)}


def report_path(out: str | Path) -> Path:
    return Path(out) / "alignment.json"
