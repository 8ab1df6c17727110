"""Choose unit groups, prune them (reversible hooks or an exported model) and build freeze masks.

Pruning is mean-ablation at the input of B: a unit's B-input channels are replaced by a reference mean. The
reference decides the outcome (DESIGN.md, step 6), so it is explicit: the safety-set mean, the utility-set mean,
the pooled mean or zero; by default the mean of the *other* attribute (SCU -> utility, UCU -> safety, RU/CU ->
pooled).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from backend.constants import DEFAULT_REFERENCE, REFERENCES, ROLES

from .models import LoadedModel, save_folder
from .units import Block, UnitMap

GROUPS = ROLES  # a unit group is a role


class InterventionError(ValueError):
    """A unit selection, reference or export that cannot be done; the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# Choosing units


@dataclass(frozen=True)
class GroupSpec:
    """Parsed form of `SCU,UCU`, `SCU,CU:0.06` or `random`: whole role groups plus the top fraction of CU, plus
    `explicit` (layer, module, unit) triples, all kept to `layers` when given."""

    groups: tuple[str, ...] = ()
    cu_fraction: float = 0.0
    random: bool = False
    explicit: tuple[tuple[int, str, int], ...] = ()
    layers: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> "GroupSpec":
        groups, cu_fraction, random = [], 0.0, False
        for raw in (t.strip() for t in text.split(",")):
            if not raw:
                continue
            name, _, frac = raw.partition(":")
            name = name.upper() if name.lower() != "random" else "random"
            if name == "random":
                random = True
            elif name not in GROUPS:
                raise InterventionError(f"unknown unit group {raw!r}; use {', '.join(GROUPS)}, CU:FRACTION or random")
            elif frac:
                if name != "CU":
                    raise InterventionError(f"only CU takes a fraction (CU:0.06), got {raw!r}")
                cu_fraction = check_fraction(frac, "CU fraction")
            else:
                groups.append(name)
        if not groups and not cu_fraction and not random:
            raise InterventionError(f"no unit group in {text!r}; use e.g. SCU or SCU,CU:0.06")
        return cls(tuple(dict.fromkeys(groups)), cu_fraction, random)

    def label(self, seed: int = 0) -> str:
        """`SCU,CU:0.06`, `SCU,random (seed 0)`: the spec as the CLI writes it."""
        named = [f"{module}.{layer}.{unit}" for layer, module, unit in self.explicit[:3]]
        if len(self.explicit) > 3:
            named.append(f"{len(self.explicit) - 3} more units")
        parts = [*self.groups, *([f"CU:{self.cu_fraction:g}"] if self.cu_fraction else []), *named,
                 *(["random"] if self.random else [])]
        where = ""
        if self.layers is not None:
            where = f" in layer{'s' if len(self.layers) != 1 else ''} {','.join(map(str, self.layers))}"
        return ",".join(parts) + where + (f" (seed {seed})" if self.random else "")


def check_same_model(units: pd.DataFrame, unit_map: UnitMap) -> None:
    """Refuse a units table whose blocks, unit counts or per-unit parameters differ from the model's."""
    arch = unit_map.architecture
    expected = {(b.layer, b.module): b for b in unit_map.blocks}
    got = {(int(layer), str(module)): rows for (layer, module), rows in units.groupby(["layer", "module"])}
    extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
    if extra or missing:
        what = (f"{extra[0][1]} layer {extra[0][0]}, which the {arch} model lacks" if extra
                else f"no {missing[0][1]} layer {missing[0][0]}, which the {arch} model has")
        raise InterventionError(f"the run was made on another model: it has {what} "
                                f"({len(got)} blocks in the run, {len(expected)} in the model)")
    for key, block in expected.items():
        rows = got[key].sort_values("unit")
        n, params = len(rows), int(rows.params.sum())
        if n != block.n_units or not (rows.unit.to_numpy() == np.arange(block.n_units)).all() \
                or not (rows.params.to_numpy() == block.params).all():
            raise InterventionError(
                f"the run was made on another model: {key[1]} layer {key[0]} has {n} units of {params} parameters "
                f"in the run but {block.n_units} units of {int(block.params.sum())} in the {arch} model")


def choose(units: pd.DataFrame, spec: GroupSpec, seed: int = 0, reference: str | None = None) -> pd.DataFrame:
    """The units a group spec names; with `random`, a seeded random set of the same parameter mass per module
    as the named groups (or as SCU when `random` stands alone: the paper's control for pruning SCU), drawn from
    the spec's layers when it names some."""
    layers = list(spec.layers) if spec.layers is not None else None
    chosen = select(units, spec.groups, cu_fraction=spec.cu_fraction, explicit=spec.explicit or None,
                    layers=layers, reference=reference)
    if spec.random:
        named = spec.groups or spec.cu_fraction or spec.explicit
        like = chosen if named else select(units, ["SCU"], layers=layers)
        if like.empty:
            raise InterventionError("'random' needs groups to match in parameter mass, e.g. SCU,random")
        pool = units if layers is None else units[units.layer.isin(layers)]
        chosen = random_like(pool, like, seed=seed, reference=reference or matched_reference(like))
    return chosen


def matched_reference(like: pd.DataFrame) -> str:
    """The reference a random control of `like` uses: the one `like`'s units use (SCU's utility mean for the
    paper's control), so that the group and its control differ only in which units they take; pooled when
    `like` mixes references."""
    references = set(like.reference) if "reference" in like else set()
    return references.pop() if len(references) == 1 else "pooled"


def check_fraction(value, name: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InterventionError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0 <= f <= 1:
        raise InterventionError(f"{name} must be in [0, 1], got {f:g}")
    return f


def select(units: pd.DataFrame, groups: Sequence[str] = (), *, cu_fraction: float = 0.0,
           layers: Sequence[int] | None = None, explicit: Sequence[tuple[int, str, int]] | None = None,
           reference: str | None = None) -> pd.DataFrame:
    """Rows of a units table to intervene on, each with the `reference` its ablation will use.

    groups: whole roles; cu_fraction: the top fraction of CU's parameter mass ranked by z_safety - z_utility;
    layers: keep only these layers; explicit: (layer, module, unit) triples added as they are.
    """
    for g in groups:
        if g not in GROUPS:
            raise InterventionError(f"unknown unit group {g!r}; use {', '.join(GROUPS)}")
    cu_fraction = check_fraction(cu_fraction, "cu_fraction")
    if reference is not None and reference not in REFERENCES:
        raise InterventionError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    chosen = units.role.isin(groups).to_numpy().copy()
    if cu_fraction > 0:
        chosen |= top_of_cu(units, cu_fraction)
    if explicit:
        index = pd.MultiIndex.from_frame(units[["layer", "module", "unit"]])
        wanted = pd.MultiIndex.from_tuples([(int(l), str(m), int(u)) for l, m, u in explicit])
        missing = wanted.difference(index)
        if len(missing):
            raise InterventionError(f"no such units in this run: {list(missing)[:5]}")
        chosen |= np.asarray(index.isin(wanted))
    if layers is not None:
        bad = sorted(set(layers) - set(units.layer))
        if bad:
            raise InterventionError(f"no layer {bad[0]} in this run (layers 0..{units.layer.max()})")
        chosen &= units.layer.isin(list(layers)).to_numpy()
    out = units[chosen].copy()
    out["reference"] = reference or out.role.map(DEFAULT_REFERENCE).fillna("pooled")
    return out


def top_of_cu(units: pd.DataFrame, fraction: float) -> np.ndarray:
    """Mask of the CU units with the highest z_safety - z_utility, up to `fraction` of CU's parameter mass."""
    from .roles import top

    mask = np.zeros(len(units), dtype=bool)
    cu = np.flatnonzero(units.role.to_numpy() == "CU")
    if len(cu) and fraction > 0:
        diff = (units.z_safety - units.z_utility).to_numpy()[cu]
        mask[cu[top(diff, units.params.to_numpy()[cu], fraction)]] = True
    return mask


def random_like(units: pd.DataFrame, like: pd.DataFrame, *, seed: int = 0, reference: str = "pooled") -> pd.DataFrame:
    """A seeded random control: random units with the same parameter mass per module type as `like`."""
    if reference not in REFERENCES:
        raise InterventionError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(units), dtype=bool)
    for module in ("attn", "mlp"):
        target = like.params[like.module == module].sum()
        pool = np.flatnonzero(units.module.to_numpy() == module)
        if target == 0 or len(pool) == 0:
            continue
        order = rng.permutation(pool)
        mass = np.cumsum(units.params.to_numpy()[order])
        chosen[order[:int(np.searchsorted(mass, target)) + 1]] = True
    out = units[chosen].copy()
    out["reference"] = reference
    return out


# ----------------------------------------------------------------------------------------------------------------
# Pruning


@dataclass(frozen=True)
class Ablation:
    """One block's pruned B-input channels and the values they are held at."""

    block: Block
    channels: torch.Tensor  # long
    values: torch.Tensor  # float32, one per channel


def reference_means(means: dict[str, torch.Tensor], key: str, reference: str,
                    tokens: dict[str, int] | None = None) -> torch.Tensor:
    """The channel means a reference stands for, for one block key such as 'mlp.3'."""
    if reference == "zero":
        return torch.zeros_like(means[f"safety.{key}"])
    if reference in ("safety", "utility"):
        return means[f"{reference}.{key}"]
    n_s, n_u = (tokens or {}).get("safety", 1), (tokens or {}).get("utility", 1)
    return (n_s * means[f"safety.{key}"].double() + n_u * means[f"utility.{key}"].double()).div(n_s + n_u).float()


def ablation_plan(unit_map: UnitMap, selection: pd.DataFrame, means: dict[str, torch.Tensor],
                  tokens: dict[str, int] | None = None) -> list[Ablation]:
    """Per block: the channels of the selected units and each channel's reference value."""
    if "reference" not in selection:
        raise InterventionError("selection has no 'reference' column; make it with select() or random_like()")
    bad = set(selection.reference) - set(REFERENCES)
    if bad:
        raise InterventionError(f"unknown reference {sorted(bad)[0]!r}; use {', '.join(REFERENCES)}")
    blocks = {(b.layer, b.module): b for b in unit_map.blocks}
    plan = []
    for (layer, module), rows in selection.groupby(["layer", "module"], sort=True):
        block = blocks.get((int(layer), str(module)))
        if block is None:
            raise InterventionError(f"the model has no {module} block in layer {layer}")
        if rows.unit.max() >= block.n_units:
            raise InterventionError(f"{module} layer {layer} has {block.n_units} units, selection names unit "
                                    f"{rows.unit.max()}; was the run made on another model?")
        if f"safety.{block.key}" not in means:
            raise InterventionError(f"the run's means lack {block.key}; was the run made on another model?")
        channels, values = [], []
        for unit, ref in zip(rows.unit.to_numpy(), rows.reference.to_numpy()):
            idx = torch.arange(unit * block.unit_size, (unit + 1) * block.unit_size)
            channels.append(idx)
            values.append(reference_means(means, block.key, ref, tokens)[idx])
        channels_t = torch.cat(channels)
        if len(reference_means(means, block.key, "zero")) != block.channels:
            raise InterventionError(f"the run's means for {block.key} have the wrong size; "
                                    "was the run made on another model?")
        plan.append(Ablation(block, channels_t, torch.cat(values).float()))
    return plan


def _holder(block: Block, ablation: Ablation, device: torch.device, dtype: torch.dtype):
    """keep (1 on untouched channels) and fill (the reference on pruned ones): x -> x * keep + fill."""
    keep = torch.ones(block.channels, dtype=dtype, device=device)
    fill = torch.zeros(block.channels, dtype=dtype, device=device)
    keep[ablation.channels] = 0
    fill[ablation.channels] = ablation.values.to(device=device, dtype=dtype)
    return keep, fill


@contextmanager
def prune(loaded: LoadedModel, selection: pd.DataFrame, means: dict[str, torch.Tensor], *,
          tokens: dict[str, int] | None = None) -> Iterator[list[Ablation]]:
    """Within the block the selected units are mean-ablated by forward hooks; afterwards the model is as it was."""
    plan = ablation_plan(loaded.units, selection, means, tokens)
    modules = dict(loaded.model.named_modules())
    handles = []
    try:
        for ablation in plan:
            module = modules[ablation.block.b_module]
            weight = module.weight
            keep, fill = _holder(ablation.block, ablation, weight.device, weight.dtype)

            def hook(_m, args, keep=keep, fill=fill):
                return (torch.addcmul(fill, args[0], keep), *args[1:])

            handles.append(module.register_forward_pre_hook(hook))
        yield plan
    finally:
        for h in handles:
            h.remove()


# Architectures whose config can give B a bias; the others are rewritten as Llama where that is exact.
_BIAS_FLAGS = {"attn": "attention_bias", "mlp": "mlp_bias"}
_AS_LLAMA = ("mistral", "qwen2")


def _export_config(config, needs: set[str]):
    """The config of the exported model: B biases switched on where the architecture allows it."""
    config = copy.deepcopy(config)
    arch = config.model_type
    if arch in ("gpt2",) or (arch == "gpt_neox" and needs <= {"mlp"}):
        return config
    if arch in _AS_LLAMA:
        if getattr(config, "use_sliding_window", False) or (
                arch == "mistral" and getattr(config, "sliding_window", None)
                and config.sliding_window < config.max_position_embeddings):
            raise InterventionError(f"cannot export a mean-ablated {arch} model with a sliding window exactly; "
                                    "use the reversible hooks or --reference zero")
        from transformers import LlamaConfig

        fields = config.to_dict()
        for key in ("model_type", "architectures", "sliding_window", "use_sliding_window", "max_window_layers",
                    "layer_types", "transformers_version"):
            fields.pop(key, None)
        llama = LlamaConfig(**fields)
        llama.architectures = ["LlamaForCausalLM"]
        llama.attention_bias = arch == "qwen2" or "attn" in needs
        llama.mlp_bias = "mlp" in needs
        return llama
    for module in needs:
        flag = _BIAS_FLAGS[module]
        if arch == "gpt_neox" and module == "mlp":
            continue
        if not hasattr(config, flag):
            raise InterventionError(
                f"{arch} has no option for a bias on its {'o_proj' if module == 'attn' else 'down_proj'}, so a "
                f"mean-ablated {module} unit cannot be exported as a plain {arch} folder; use the reversible hooks "
                "or --reference zero")
        setattr(config, flag, True)
    return config


@torch.no_grad()
def pruned_copy(loaded: LoadedModel, selection: pd.DataFrame, means: dict[str, torch.Tensor], *,
                tokens: dict[str, int] | None = None) -> nn.Module:
    """A new model with the selection ablated in its weights: B's pruned columns zeroed, their reference
    contribution `W_B[:, idx] @ mean[idx]` moved into B's bias (created where the architecture has none)."""
    from transformers import AutoModelForCausalLM

    plan = ablation_plan(loaded.units, selection, means, tokens)
    needs = {a.block.module for a in plan if bool(a.values.ne(0).any())}
    config = _export_config(loaded.model.config, needs)
    dtype = next(loaded.model.parameters()).dtype
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    for key, param in skeleton.state_dict().items():  # biases the new config asks for start at zero
        if key not in state:
            if not key.endswith(".bias"):
                raise InterventionError(f"cannot export {config.model_type}: unexpected parameter {key}")
            state[key] = torch.zeros(param.shape, dtype=param.dtype)
    for a in plan:
        weight = state[f"{a.block.b_module}.weight"]
        bias_key = f"{a.block.b_module}.bias"
        cols = weight.index_select(a.block.b_dim, a.channels.to(weight.device)).double()
        contribution = cols @ a.values.double() if a.block.b_dim == 1 else a.values.double() @ cols
        if bias_key in state:
            state[bias_key] = (state[bias_key].double() + contribution.to(state[bias_key].device)).to(weight.dtype)
        weight.index_fill_(a.block.b_dim, a.channels.to(weight.device), 0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_pruned(loaded: LoadedModel, selection: pd.DataFrame, means: dict[str, torch.Tensor], out: str | Path,
                  *, tokens: dict[str, int] | None = None) -> Path:
    """Save the pruned model as a plain Hugging Face folder (written atomically)."""
    return save_folder(pruned_copy(loaded, selection, means, tokens=tokens), loaded.tokenizer, out)


# ----------------------------------------------------------------------------------------------------------------
# Freezing


def owned_indices(unit_map: UnitMap, selection: pd.DataFrame, *,
                  shared: str = "any") -> dict[tuple[str, int], torch.Tensor]:
    """The entries the selected units own, as sorted indices along one axis per parameter: {(param, axis): idx}.

    Units own whole rows or columns (A rows, B columns), so this is exact and small even for an 8B model. GQA
    keys/values are owned by a group of heads: shared="any" marks them when any head of the group is selected
    (for freezing: keep what a selected head reads), shared="all" only when every head is (for training only a
    group: touch nothing an unselected head reads).
    """
    if shared not in ("any", "all"):
        raise InterventionError(f"shared must be 'any' or 'all', got {shared!r}")
    by_block = {(b.layer, b.module): b for b in unit_map.blocks}
    found: dict[tuple[str, int], list[torch.Tensor]] = {}
    for (layer, module), rows in selection.groupby(["layer", "module"], sort=True):
        block = by_block[(int(layer), str(module))]
        picked = set(int(u) for u in rows.unit)
        for slab in block.slabs:
            owners = range(block.n_units) if slab.share > 1 else sorted(picked)
            for unit in owners:
                if slab.share > 1:
                    if unit % slab.share:
                        continue
                    group = set(range(unit, unit + slab.share))
                    hit = group & picked
                    if not hit or (shared == "all" and hit != group):
                        continue
                found.setdefault((slab.param, slab.dim), []).append(slab.indices(unit))
    return {key: torch.unique(torch.cat(parts)) for key, parts in found.items()}


def unit_masks(model: nn.Module, unit_map: UnitMap, selection: pd.DataFrame, *,
               shared: str = "any") -> dict[str, torch.Tensor]:
    """Boolean masks over parameters: True at the entries owned by the selected units (see owned_indices)."""
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for (name, dim), idx in owned_indices(unit_map, selection, shared=shared).items():
        p = params[name]
        mask = masks.setdefault(name, torch.zeros(p.shape, dtype=torch.bool, device=p.device))
        mask.index_fill_(dim, idx.to(p.device), True)
    return masks
