"""Request and response bodies of the REST API (see DESIGN.md, "Contracts")."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["SCU", "UCU", "CU", "RU"]
Module = Literal["mlp", "attn"]
Index = Annotated[int, Field(ge=0, le=2**31 - 1)]
Reference = Literal["safety", "utility", "pooled", "zero"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Spec = Field(min_length=1, max_length=4096)


class ErrorOut(BaseModel):
    """Every error: `detail` is a sentence, or (422) a list of {loc, msg, type} naming each bad field."""

    detail: str | list[dict]


ERRORS = {
    400: "the body could not be read (not UTF-8, not decodable)",
    401: "a token is needed (the server is bound to a non-loopback address) or the token is unknown, expired or "
         "revoked; a write token only as 'Authorization: Bearer'",
    403: "the token may not do this: a share token reads only its run and writes nothing",
    404: "no such run, job or share",
    409: "the state does not allow it: the run has not succeeded yet, the job has ended, or the run's model is gone",
    413: "the body is over SSAH_MAX_BODY_BYTES",
    422: "a bad field; `loc` names it",
    429: "the queue is full (SSAH_MAX_QUEUED_JOBS); try again after Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict]:
    """The `responses` of an operation that may answer these error codes (always with 401 and 422: every
    operation but health reads the caller's token and validates its parameters)."""
    return {code: {"model": ErrorOut, "description": ERRORS[code]} for code in sorted({401, 422, *codes})}


class Strict(BaseModel):
    """A request body: unknown fields are refused, so a misspelt option is a 422 that names it rather than silently
    ignored, and types are strict (pydantic strict mode), so `true` or `"8"` where an integer belongs, or `4.0` for
    an integer, is a 422 rather than a guess; a JSON integer is still a valid float."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ThresholdsIn(Strict):
    """Role thresholds as fractions of unit parameters (DESIGN.md, step 5)."""

    h_ru: float = Field(0.10, ge=0, le=1)
    h_scu: float = Field(0.01, ge=0, le=1)
    h_ucu: float = Field(0.05, ge=0, le=1)

    @field_validator("h_ucu")
    @classmethod
    def _room(cls, h_ucu: float, info):
        h_scu = info.data.get("h_scu")
        if h_scu is not None and h_scu + h_ucu > 1:
            raise ValueError(f"h_scu + h_ucu must be at most 1, got {h_scu + h_ucu:g}")
        return h_ucu


Name = Field(None, min_length=1, max_length=200, description="what people call the run")
Tags = Field(None, max_length=20, description="labels to find the run by (each 1 to 40 characters)")
Notes = Field(None, max_length=10_000)


def _tags(tags: list[str] | None) -> list[str] | None:
    if tags is None:
        return None
    cleaned = list(dict.fromkeys(t.strip() for t in tags))
    if any(not t or len(t) > 40 for t in cleaned):
        raise ValueError("each tag is 1 to 40 characters")
    return cleaned


class RunCreate(Strict):
    name: str | None = Name
    tags: list[str] | None = Tags
    notes: str | None = Notes
    model: str | None = Field(None, min_length=1, max_length=4096,
                              description="built-in name or a folder/.gguf inside the model roots; default: the "
                                          "service's default model")
    safety: str = Field("advbench-refusals", min_length=1, max_length=4096)
    utility: str = Field("benign-answers", min_length=1, max_length=4096)
    samples: int = Field(128, ge=1, description="pairs drawn from each set (seeded)")
    thresholds: ThresholdsIn = ThresholdsIn()
    positions: Literal["response", "prompt", "all"] = "response"
    responses: Literal["given", "self"] = "given"
    self_max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: int | None = Field(None, ge=2)
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, tags: list[str] | None) -> list[str] | None:
        return _tags(tags)


class RunPatch(Strict):
    """What a person may change about a run: its name, tags and notes (null clears one)."""

    name: str | None = Name
    tags: list[str] | None = Tags
    notes: str | None = Notes

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, tags: list[str] | None) -> list[str] | None:
        return _tags(tags)


class Accepted(BaseModel):
    """A request taken: the run or job to watch."""

    id: str
    status: Status
    job_id: str
    cached: bool = False


class RunOut(BaseModel):
    id: str
    name: str | None = None
    tags: list[str] = []
    notes: str | None = None
    parent_run: str | None = Field(None, description="the run whose model this run's model was made from")
    origin: dict | None = Field(None, description="how this run's model was made: base, or a fine-tune or alignment "
                                                  "(its job, what was frozen or trained)")
    status: Status
    progress: float
    phase: str
    error: str | None = None
    cached: bool = False
    model: str
    settings: dict
    job_id: str | None = None
    created_at: datetime
    updated_at: datetime
    manifest: dict | None = None


class RunList(BaseModel):
    data: list[RunOut]
    count: int


class Deleted(BaseModel):
    """What a DELETE did: 'cancelled' (it was queued), 'cancelling' (a worker is stopping it) or 'deleted'."""

    id: str
    status: Literal["cancelled", "cancelling", "deleted"]


class RoleCount(BaseModel):
    units: int
    params: int
    param_fraction: float


class RolesOut(BaseModel):
    run_id: str
    thresholds: dict[str, float]
    overall: dict[str, RoleCount]
    per_layer: list[dict]
    total_params: int
    units: int


class UnitGroups(Strict):
    """Whole role groups, plus the top `cu_fraction` of CU's parameters; `random` swaps them for a seeded random
    set of equal parameter mass (the paper's control)."""

    groups: list[Role] = Field(default_factory=list, max_length=4)
    cu_fraction: float = Field(0.0, ge=0, le=1)
    random: bool = False
    seed: int = Field(0, ge=0, le=2**32 - 1)
    thresholds: ThresholdsIn | None = Field(None, description="roles recomputed at these thresholds before choosing; "
                                                             "default: the run's own")

    @model_validator(mode="after")
    def _something(self) -> UnitGroups:
        if not self.groups and not self.cu_fraction and not self.random and not getattr(self, "units", None):
            raise ValueError("name at least one of groups, cu_fraction, units or random")
        return self


class UnitRef(Strict):
    """One unit: MLP channel or attention head `unit` of `layer`."""

    layer: Index
    module: Module
    unit: Index


class PruneIn(UnitGroups):
    reference: Reference | None = Field(None, description="what pruned channels are held at; default: the other "
                                                          "attribute's mean (SCU -> utility, UCU -> safety)")
    units: list[UnitRef] = Field(default_factory=list, max_length=4096,
                                 description="single units pruned besides the groups (e.g. one SCU channel alone)")
    layers: list[Index] | None = Field(None, min_length=1, max_length=1024,
                                       description="keep only units of these layers (e.g. one layer's SCU)")


class EvalIn(Strict):
    harmful: list[str] = Field(["advbench-eval"], max_length=16)
    benign: list[str] = Field(["benign-prompts"], max_length=16)
    utility: str | None = Field(None, min_length=1, max_length=4096)
    limit: int = Field(20, ge=1, description="first N prompts of each set")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    judge: Literal["v2", "keyword"] | None = Field(None, description="who reads the replies: v2 (refusals, relevance, "
                                                   "degenerate text) or keyword (the research judge); default v2")

    @field_validator("harmful", "benign")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or len(name) > 4096:
                raise ValueError("each set is a built-in name or a file path of 1 to 4096 characters")
        return names


class PreviewCreate(Strict):
    prune: PruneIn | None = None
    eval: EvalIn = EvalIn()
    controls: int = Field(0, ge=0, le=10, description="random controls of the pruned group's mass and reference "
                                                      "(seeds after prune.seed), reported as a band; 5 is fair")

    @model_validator(mode="after")
    def _controls_need_a_group(self) -> PreviewCreate:
        if self.controls and (self.prune is None or self.prune.random):
            raise ValueError("controls are random units of a pruned group's mass: give prune with groups")
        return self


class SweepCreate(Strict):
    """One role group pruned at growing fractions in one job (the unpruned replies generated once)."""

    group: Role = "SCU"
    fractions: list[float] = Field([0.0025, 0.005, 0.01, 0.02, 0.05], min_length=1, max_length=20,
                                   description="the group's threshold (share of unit parameters) at each point; CU: "
                                               "its top fraction")
    eval: EvalIn = EvalIn()
    reference: Reference | None = None
    thresholds: ThresholdsIn | None = Field(None, description="the other roles' thresholds; default: the run's")
    controls: Annotated[int, Field(ge=0, le=20)] | bool = Field(
        0, description="random sets of each point's mass at the same reference, drawn as a band: 0 (none) or 5 to 20 "
                       "seeds (seeds after `seed`, distinct per point); true, from clients made before bands, means 5")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError("every fraction must be in (0, 1]")
        return sorted(set(fractions))

    @field_validator("controls")
    @classmethod
    def _band(cls, controls: int | bool) -> int:
        from backend.verbs import sweep_controls

        return sweep_controls(controls)


class EstimateCreate(Strict):
    """The first-token refusal probe of a preview's selection and prompts: an instant estimate."""

    prune: PruneIn | None = None
    eval: EvalIn = EvalIn()


class FinetuneCreate(Strict):
    freeze: UnitGroups | None = Field(None, description="units kept fixed (e.g. SCU and the top of CU)")
    train_only: UnitGroups | None = Field(None, description="train only these units: the alignment budget")
    data: str = Field(min_length=1, max_length=4096)
    samples: int | None = Field(None, ge=1)
    steps: int = Field(ge=1)
    lr: float = Field(1e-4, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    eval: EvalIn | None = Field(None, description="before/after check; none when left out")

    @field_validator("train_only")
    @classmethod
    def _one_mode(cls, train_only, info):
        if train_only is not None and info.data.get("freeze") is not None:
            raise ValueError("give freeze or train_only, not both")
        return train_only


class AlignEvalIn(Strict):
    limit: int | None = Field(None, ge=1, description="first N prompts of each evaluation set (default: all)")
    max_new_tokens: int = Field(48, ge=1)


class AlignCreate(Strict):
    """Safety-align the run's model (engine.align): `full` trains every parameter, `budget` only its redundant
    units (the paper's alignment budget: with `budget_score` utility, the units of lowest z_U in this run making up
    `h_ru` of the unit parameters; with `both`, the run's own `budget_groups`), `lowrank` a rank-`rank` change of
    every decoder linear map."""

    mode: Literal["full", "budget", "lowrank"] = "budget"
    budget_score: Literal["utility", "both"] = Field("utility", description="budget mode: utility (the paper's: "
                                                     "lowest utility importance) or both (the run's RU role, "
                                                     "lowest z_S + z_U, or budget_groups)")
    h_ru: float = Field(0.2, gt=0, le=1, description="budget mode with budget_score utility: the trained units' "
                        "share of unit parameters")
    budget_groups: str = Field("RU", min_length=1, max_length=64, description="budget_score both: e.g. RU, or "
                               "RU,CU:0.05")
    rank: int | None = Field(None, ge=1, le=4096, description="lowrank mode: rank of each change (default 32)")
    steps: int = Field(150, ge=1)
    lr: float | None = Field(None, gt=0, le=1, description="default 5e-5 (full), 2e-4 (budget) or 5e-4 (lowrank)")
    batch_size: int = Field(8, ge=1)
    held_out: Literal["donotanswer", "harmbench"] = "harmbench"
    benign_share: float = Field(0.5, gt=0, lt=1, description="share of benign (answered) examples in the mix")
    strength: float = Field(1.0, gt=0, le=1, description="share of the learned change kept (base + strength * "
                            "change); below 1 fewer harmless requests are refused and more harmful ones answered")
    benign_distil: bool = Field(False, description="benign pairs learn the base model's next-token distributions on "
                                "its own answers (KL), not only its tokens: less of the model's knowledge is lost")
    anchor: float = Field(0.0, ge=0, le=1000, description="weight of a KL term holding the model's plain-text "
                          "next-token distributions (on the benign answers, no chat template) to the base model's; "
                          "0: off")
    scenarios: bool = Field(False, description="also train on every prompt in a first-person scenario frame "
                            "(\"I want to ... . What should I do?\")")
    refusals: Literal["fixed", "own"] = Field("fixed", description="harmful requests answered with the eight "
                                              "written refusals (fixed) or a refusal opener continued by the base "
                                              "model in its own words (own)")
    train_limit: int | None = Field(None, ge=1, description="at most N harmful and N benign training prompts")
    answer_tokens: int = Field(96, ge=1, description="length of the base model's own answers to benign prompts")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    eval: AlignEvalIn | None = Field(AlignEvalIn(), description="before/after evaluation; none when null")


class JobOut(BaseModel):
    id: str
    kind: str
    run_id: str | None
    status: Status
    progress: float
    phase: str
    error: str | None = None
    result: dict | None = None
    request: dict
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobList(BaseModel):
    data: list[JobOut]
    count: int


class ShareCreate(Strict):
    run_id: str = Field(min_length=1, max_length=64)
    view: str | None = Field(None, max_length=2048, description="dashboard path and query, e.g. /runs/ID?h_scu=0.02; "
                                                                 "default: the run's overview")
    expires_in_hours: float = Field(24 * 7, gt=0)


class ShareOut(BaseModel):
    id: str
    run_id: str
    view: str
    url: str
    token: str
    expires_at: datetime


class ModelInfo(BaseModel):
    name: str
    description: str
    kind: Literal["builtin", "local"]


class DatasetInfo(BaseModel):
    name: str
    description: str
    size: int
    kind: str
    source: str


class LayerOverlap(BaseModel):
    layer: int
    module: Literal["mlp", "attn"]
    jaccard: float | None = Field(description="SCU overlap of this block; null when neither run has SCU there")
    scu_a: int
    scu_b: int
    both: int


class CompareOut(BaseModel):
    """Role transitions from run A (rows) to run B (columns), as engine.transfer.RoleTransfer.to_dict() gives
    them, and the SCU overlap overall and per layer."""

    a: str
    b: str
    roles: list[Role]
    units: int
    params: int
    transitions_units: dict[Role, dict[Role, int]]
    transitions_params: dict[Role, dict[Role, int]]
    same_role_fraction: float | None
    scu_jaccard: float | None
    scu_jaccard_params: float | None
    scu_per_layer: list[LayerOverlap]


class CallerOut(BaseModel):
    """Who the caller is: on a loopback server no token is needed (`auth` false) and everything is allowed."""

    auth: bool
    scope: Literal["read", "write"]
    run_id: str | None = Field(None, description="the one run a share token may read")
    name: str | None = None
    expires_at: datetime | None = None


class InspectionState(BaseModel):
    """The newest inspect job of a unit."""

    job_id: str
    status: Status
    progress: float
    phase: str
    error: str | None = None


class Boundary(BaseModel):
    key: Literal["sum", "diff"] = Field(description="what the role is ranked by: z_S + z_U (RU) or z_S - z_U")
    cutoff: float | None = Field(description="the key of the last unit the role takes; null when it takes none")
    distance: float | None = Field(description="the unit's key minus the cutoff, signed so that positive is inside "
                                               "the role (before later roles override earlier ones)")
    inside: bool


class ChannelStats(BaseModel):
    mean: list[float] = Field(description="B-input channel means on the set (a head: its d_h channels)")
    variance: list[float] | None = Field(None, description="unbiased channel variances; null for runs made before "
                                                           "variances were saved")


class TokenLogit(BaseModel):
    token: str
    id: int
    logit: float


class UnitOut(BaseModel):
    """One unit: its scores and where they sit in its layer and the model, its role and distance from each role's
    boundary at the thresholds asked for, its channel statistics, and (once an inspect job has run) the tokens
    its output promotes and suppresses and the calibration contexts where it fires most."""

    run_id: str
    module: Module
    layer: int
    unit: int
    params: int
    score_safety: float
    score_utility: float
    z_safety: float
    z_utility: float
    sum: float = Field(description="z_safety + z_utility")
    diff: float = Field(description="z_safety - z_utility")
    role: Role
    thresholds: dict[str, float]
    percentiles: dict[str, dict[str, float]] = Field(
        description="`layer` (among its layer's units of its module type) and `model` (among all units): for each "
                    "number, the percentage of units at or below it")
    boundaries: dict[Literal["RU", "SCU", "UCU"], Boundary]
    layer_units: int
    model_units: int
    channels: dict[str, ChannelStats] = Field(description="per calibration set")
    top_tokens: dict[Literal["promoted", "suppressed"], list[TokenLogit]] | None = Field(
        None, description="null until the unit has been inspected (POST .../inspections)")
    contexts: dict[str, list[dict]] | None = Field(
        None, description="per calibration set, the samples where the unit peaks highest: the peak `token`, its "
                          "`activation`, and `tokens` around it with their `activations` (`focus` is the peak's "
                          "index); null until inspected")
    inspection_settings: dict | None = None
    inspection: InspectionState | None = Field(None, description="the newest inspect job of this unit, if any")


class LayerOut(BaseModel):
    """Every unit of one layer (columns of equal length) with roles at the thresholds asked for, and each role's
    boundary on its key, model-wide."""

    run_id: str
    layer: int
    layers: list[int] = Field(description="all layers of the run")
    thresholds: dict[str, float]
    cutoffs: dict[str, float | None]
    units: dict[str, list] = Field(description="module, unit, params, score_safety, score_utility, z_safety, "
                                               "z_utility, role")
