"""Freeze masks: which parameter entries train when a unit group is frozen, or when only a group trains (the
alignment budget, DESIGN.md step 7). A plan is compact (owned indices per parameter axis) so that it fits any
model size; it is served as a file for users' own training code and made dense for `recipes.finetune`."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import atomic
from .errors import DataError
from .interventions import GroupSpec, InterventionError, check_same_model, choose, owned_indices
from .models import LoadedModel
from .units import UnitMap

MASKS_FORMAT = "ssah-masks/1"


@dataclass(frozen=True)
class MaskPlan:
    """Which parameter entries train, in a compact form that fits any model size.

    `owned` holds, per (parameter, axis), the indices the chosen units own. In mode "freeze" those entries are
    frozen and everything else trains; in mode "train_only" (the alignment budget) only they train. `shapes`
    names every parameter of the model, so a plan can be checked against the model it is applied to.
    """

    mode: str
    spec: str
    owned: dict[tuple[str, int], torch.Tensor]
    shapes: dict[str, tuple[int, ...]]

    def dense(self, devices: dict[str, torch.device] | None = None) -> dict[str, torch.Tensor]:
        """Per-parameter bool masks, True = trainable; a wholly trainable or frozen parameter gets a 0-dim mask."""
        freeze = self.mode == "freeze"
        owned: dict[str, torch.Tensor] = {}
        for (name, dim), idx in self.owned.items():
            mask = owned.setdefault(name, torch.zeros(self.shapes[name], dtype=torch.bool))
            mask.index_fill_(dim, idx, True)
        masks = {}
        for name in self.shapes:
            mask = owned.get(name)
            if mask is None:
                mask = torch.tensor(freeze)
            else:
                mask = ~mask if freeze else mask
                if mask.all() or not mask.any():
                    mask = torch.tensor(bool(mask.all()))
            masks[name] = mask.to(devices[name]) if devices else mask
        return masks

    def counts(self) -> tuple[int, int]:
        """(trainable, frozen) parameter entries."""
        trainable = total = 0
        for name, m in self.dense().items():
            n = math.prod(self.shapes[name])
            total += n
            trainable += int(m.sum()) if m.dim() else n * bool(m)
        return trainable, total - trainable

    def to_json(self) -> dict:
        """The plan as JSON: per parameter its shape and, where units own part of it, the owned indices per axis."""
        owned: dict[str, dict[str, list[int]]] = {}
        for (name, dim), idx in sorted(self.owned.items()):
            owned.setdefault(name, {})[str(dim)] = idx.tolist()
        return {"format": MASKS_FORMAT, "mode": self.mode, "groups": self.spec,
                "owned_entries_are": "frozen" if self.mode == "freeze" else "trainable",
                "shapes": {k: list(v) for k, v in self.shapes.items()}, "owned": owned}

    def to_bytes(self) -> bytes:
        """A safetensors file: one int64 index tensor per owned (parameter, axis), keyed `param@axis`, and the
        mode and every parameter's shape in the metadata. `load_masks` reads it back."""
        from safetensors.torch import save

        tensors = {f"{name}@{dim}": idx.to(torch.int64).contiguous() for (name, dim), idx in self.owned.items()}
        meta = {"format": MASKS_FORMAT, "mode": self.mode, "groups": self.spec,
                "shapes": json.dumps({k: list(v) for k, v in self.shapes.items()})}
        return save(tensors, metadata=meta)

    def save(self, path: str | Path) -> Path:
        """Write `to_bytes()` to `path` (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, self.to_bytes())
        return path


def mask_plan(unit_map: UnitMap, shapes: dict[str, tuple[int, ...]], run_units: pd.DataFrame, *,
              freeze: GroupSpec | None = None, train_only: GroupSpec | None = None, seed: int = 0) -> MaskPlan:
    """The plan for freezing a group (GQA keys/values frozen when any head of their group is picked) or for
    training only a group (keys/values only when every head of their group is picked). With `random` in the
    spec, a seeded random set of the same parameter mass per module replaces the groups."""
    if (freeze is None) == (train_only is None):
        raise InterventionError("give exactly one of freeze (units to keep) or train_only (the alignment budget)")
    check_same_model(run_units, unit_map)
    spec = freeze if freeze is not None else train_only
    chosen = choose(run_units, spec, seed)
    owned = owned_indices(unit_map, chosen, shared="any" if freeze is not None else "all")
    return MaskPlan("freeze" if freeze is not None else "train_only", spec.label(seed), owned, dict(shapes))


def trainable_masks(loaded: LoadedModel, run_units: pd.DataFrame, *, freeze: GroupSpec | None = None,
                    train_only: GroupSpec | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-parameter bool masks, True = trainable, for every parameter of the model (see mask_plan).

    freeze: the entries the selection owns are frozen, everything else trains. train_only (the alignment
    budget): only the entries the selection owns train; embeddings, norms, the LM head and all other units are
    frozen. A parameter that is wholly trainable or wholly frozen gets a 0-dim mask (it broadcasts).
    """
    params = dict(loaded.model.named_parameters())
    plan = mask_plan(loaded.units, {n: tuple(p.shape) for n, p in params.items()}, run_units, freeze=freeze,
                     train_only=train_only, seed=seed)
    return plan.dense({n: p.device for n, p in params.items()})


def load_masks(path: str | Path, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Dense trainable masks (True = trainable) from a file `MaskPlan.save` wrote (what the API's
    `GET /runs/{id}/masks` serves), checked against `model`'s parameters when one is given."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no masks file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            owned = {}
            for key in f.keys():
                name, _, dim = key.rpartition("@")
                owned[(name, int(dim))] = f.get_tensor(key)
        if meta.get("format") != MASKS_FORMAT or meta.get("mode") not in ("freeze", "train_only"):
            raise ValueError(f"not a {MASKS_FORMAT} file")
        shapes = {k: tuple(v) for k, v in json.loads(meta["shapes"]).items()}
    except (SafetensorError, ValueError, KeyError, OSError) as error:
        raise DataError(f"{path} is not a masks file made by ssah: {error}") from None
    plan = MaskPlan(meta["mode"], meta.get("groups", ""), owned, shapes)
    if model is None:
        return plan.dense()
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name in shapes and tuple(p.shape) != shapes[name]:
            raise DataError(f"{path} was made for another model: {name} is {shapes[name]} there, "
                            f"{tuple(p.shape)} here")
    masks = plan.dense({n: p.device for n, p in params.items() if n in shapes})
    check_masks(model, masks)
    return masks


def count_trainable(model: torch.nn.Module, masks: dict[str, torch.Tensor] | None) -> tuple[int, int]:
    """(trainable, frozen) parameter entries under `masks` (None: everything trains)."""
    trainable = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        m = masks[name] if masks is not None else None
        trainable += p.numel() if m is None else (int(m.sum()) if m.dim() else p.numel() * bool(m))
    return trainable, total - trainable


def check_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing, unknown = sorted(set(params) - set(masks)), sorted(set(masks) - set(params))
    if missing or unknown:
        first = f"missing {missing[0]}" if missing else f"unknown {unknown[0]}"
        more = " and others" if len(missing) + len(unknown) > 1 else ""
        raise ValueError(f"masks do not fit this model: {first}{more}; make them with trainable_masks")
    for name, m in masks.items():
        if m.dtype != torch.bool or (m.dim() and m.shape != params[name].shape):
            raise ValueError(f"mask of {name} must be a bool tensor of shape {tuple(params[name].shape)} or 0-dim, "
                             f"got {m.dtype} {tuple(m.shape)}")
