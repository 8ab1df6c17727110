"""One unit up close, as a feature page shows it: its numbers in the run, the tokens its output promotes and
suppresses, and the calibration tokens where it fires most.

- numbers: scores and z-scores with their percentiles within the unit's layer and module and within the model,
  its role at given thresholds and its signed distance from each role's boundary (positive: inside);
- top tokens: what the unit writes into the residual stream, read through the final norm's elementwise weight
  and the unembedding (a direct logit effect, as a logit lens reads it). An MLP channel writes its B column per
  unit of activation; a head writes its o_proj slice applied to its pooled mean input (its average output);
- contexts: one forward over the run's calibration pairs, stopped at the unit's B module, recording the unit's
  B-input value at every token (a head: the L2 norm of its d_h channels, since their signs are arbitrary); the
  samples where it peaks highest on a counted token, with the tokens around the peak.

Importing this module is light (numpy and pandas): torch is imported by the parts that take a model.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from backend.constants import MODULES, ROLES, SPLITS, Progress

from .errors import DataError
from .roles import BOUNDARY_KEYS, RoleIndex, Thresholds, boundary_distance

if TYPE_CHECKING:
    import torch

    from .chat import EncodedPair
    from .data import CalibrationSet
    from .models import LoadedModel
    from .units import Block

NUMBERS = ("score_safety", "score_utility", "z_safety", "z_utility", "sum", "diff")  # sum/diff: of the z-scores
INSPECT_DIR = "inspect"  # a run folder's cache of inspections, one JSON file per unit
HEAD_ACTIVATION = "L2 norm of the head's d_h B-input channels"
MLP_ACTIVATION = "the channel's B-input value"


class NoSuchUnit(DataError, LookupError):
    """A unit the run does not have; the message says what the run has."""


# ----------------------------------------------------------------------------------------------------------------
# Numbers (no model needed)


def block_rows(units: pd.DataFrame, module: str, layer: int) -> np.ndarray:
    """Row positions of one layer's units of one module type in a units table (NoSuchUnit when there are none)."""
    if module not in MODULES:
        raise NoSuchUnit(f"module must be one of {', '.join(MODULES)}, got {module!r}")
    layers = units.layer.to_numpy()
    in_layer = np.flatnonzero(layers == layer)
    if not len(in_layer):
        raise NoSuchUnit(f"the run has no layer {layer} (layers {int(layers.min())}..{int(layers.max())})")
    rows = in_layer[(units.module.iloc[in_layer] == module).to_numpy()]  # strings of one layer only: fast
    if not len(rows):
        raise NoSuchUnit(f"layer {layer} of the run has no {module} units")
    return rows


def unit_row(units: pd.DataFrame, module: str, layer: int, unit: int) -> tuple[int, np.ndarray]:
    """(row position of the unit, row positions of its layer's units of its module type)."""
    rows = block_rows(units, module, layer)
    hit = rows[units.unit.to_numpy()[rows] == unit]
    if not len(hit):
        kind = "channels" if module == "mlp" else "heads"
        raise NoSuchUnit(f"layer {layer} has {len(rows)} {module} {kind} (0..{len(rows) - 1}); no unit {unit}")
    return int(hit[0]), rows


def percentile(values: np.ndarray, value: float) -> float:
    """Percentage of `values` at or below `value` (100 for the highest)."""
    return 100.0 * np.count_nonzero(values <= value) / len(values)


@dataclass
class UnitNumbers:
    """A unit's place in its run at some thresholds."""

    module: str
    layer: int
    unit: int
    params: int
    values: dict[str, float]  # NUMBERS
    percentiles: dict[str, dict[str, float]]  # "layer" (its layer and module type) and "model" -> NUMBERS
    role: str
    thresholds: dict[str, float]
    boundaries: dict[str, dict]  # role -> key (sum|diff), cutoff, distance (positive: inside), inside
    layer_units: int
    model_units: int

    to_dict = asdict


def unit_numbers(units: pd.DataFrame, module: str, layer: int, unit: int, thresholds: Thresholds,
                 index: RoleIndex | None = None) -> UnitNumbers:
    """The numbers of one unit of a units table; `index` (the table's RoleIndex, built when not given) gives
    its role and the role boundaries at `thresholds`."""
    row, rows = unit_row(units, module, layer, unit)
    index = index if index is not None else RoleIndex.from_units(units)
    z_safety, z_utility = units.z_safety.to_numpy(), units.z_utility.to_numpy()
    columns = {"score_safety": units.score_safety.to_numpy(), "score_utility": units.score_utility.to_numpy(),
               "z_safety": z_safety, "z_utility": z_utility}
    values = {name: float(column[row]) for name, column in columns.items()}
    values["sum"], values["diff"] = values["z_safety"] + values["z_utility"], values["z_safety"] - values["z_utility"]
    block = {name: column[rows] for name, column in columns.items()}
    block["sum"], block["diff"] = block["z_safety"] + block["z_utility"], block["z_safety"] - block["z_utility"]
    model = {**columns, "sum": z_safety + z_utility, "diff": z_safety - z_utility}
    percentiles = {scope: {name: percentile(arrays[name], values[name]) for name in NUMBERS}
                   for scope, arrays in (("layer", block), ("model", model))}
    boundaries = {}
    for role, cutoff in index.cutoffs(thresholds).items():
        distance = boundary_distance(role, values["z_safety"], values["z_utility"], cutoff)
        boundaries[role] = {"key": BOUNDARY_KEYS[role], "cutoff": cutoff, "distance": distance,
                            "inside": distance is not None and distance >= 0}
    role = ROLES[int(index.codes(thresholds)[row])]
    return UnitNumbers(module, int(layer), int(unit), int(units.params.to_numpy()[row]), values, percentiles, role,
                       thresholds.as_dict(), boundaries, len(rows), len(units))


LAYER_COLUMNS = ("module", "unit", "params", "score_safety", "score_utility", "z_safety", "z_utility")


def layer_units(units: pd.DataFrame, layer: int, thresholds: Thresholds,
                index: RoleIndex | None = None) -> dict[str, list]:
    """Every unit of one layer as columns (LAYER_COLUMNS and `role` at `thresholds`), in table order."""
    layers = units.layer.to_numpy()
    rows = np.flatnonzero(layers == layer)
    if not len(rows):
        raise NoSuchUnit(f"the run has no layer {layer} (layers {int(layers.min())}..{int(layers.max())})")
    index = index if index is not None else RoleIndex.from_units(units)
    out = {name: units[name].iloc[rows].tolist() for name in LAYER_COLUMNS}
    out["role"] = [ROLES[c] for c in index.codes(thresholds)[rows]]
    return out


def unit_channels(folder: str | Path, module: str, layer: int, unit: int, n_units: int) -> dict[str, dict]:
    """The unit's B-input channel means and variances on each calibration set, read from a run folder
    (variances None for runs made before they were saved): {split: {"mean": [...], "variance": [...] | None}}."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    out = {split: {"mean": None, "variance": None} for split in SPLITS}
    for stat, name in (("mean", "means.safetensors"), ("variance", "variances.safetensors")):
        path = folder / name
        if not path.is_file():
            if stat == "mean":
                raise DataError(f"{folder} is not a run folder: {name} is missing")
            continue
        try:
            with safe_open(str(path), framework="numpy") as f:
                for split in SPLITS:
                    key = f"{split}.{module}.{layer}"
                    if key not in f.keys():
                        raise DataError(f"{path} has no {key}")
                    values = f.get_slice(key)
                    size = values.get_shape()[0] // n_units
                    out[split][stat] = [float(v) for v in values[unit * size:(unit + 1) * size]]
        except (SafetensorError, OSError) as error:
            raise DataError(f"{path} is not readable safetensors: {error}") from None
    return out


# ----------------------------------------------------------------------------------------------------------------
# Top tokens: the unit's write direction through the final norm and the unembedding


def final_norm(model) -> torch.nn.Module:
    """The norm before the LM head (Llama family `norm`, GPT-2 `ln_f`, GPT-NeoX `final_layer_norm`)."""
    body = getattr(model, model.base_model_prefix, model)
    for name in ("norm", "ln_f", "final_layer_norm"):
        norm = getattr(body, name, None)
        if norm is not None:
            return norm
    raise DataError(f"cannot find the final norm of {type(model).__name__}")


def through_final_norm(norm, direction: torch.Tensor) -> torch.Tensor:
    """A residual direction as the unembedding reads it: LayerNorm centres it, then every norm scales it by its
    elementwise weight (Gemma's RMSNorm by 1 + weight). The norm's division by the residual's size scales all
    logits alike, so it is left out."""
    import torch

    weight = getattr(norm, "weight", None)
    if isinstance(norm, torch.nn.LayerNorm):
        direction = direction - direction.mean()
        return direction if weight is None else direction * weight.detach().float()
    if weight is None:
        return direction
    if type(norm).__name__.startswith("Gemma"):
        return direction * (1.0 + weight.detach().float())
    return direction * weight.detach().float()


def unit_block(loaded: LoadedModel, module: str, layer: int) -> Block:
    for block in loaded.units.blocks:
        if block.module == module and block.layer == layer:
            return block
    raise NoSuchUnit(f"the model has no {module} block in layer {layer}")


def write_direction(loaded: LoadedModel, block: Block, unit: int, means: Mapping[str, torch.Tensor] | None = None,
                    tokens: Mapping[str, int] | None = None) -> torch.Tensor:
    """What the unit adds to the residual stream, in float32: an MLP channel's B column (per unit of its
    activation); a head's o_proj columns applied to its pooled mean input channels (its average output)."""
    import torch

    from .interventions import reference_means

    if not 0 <= unit < block.n_units:
        raise NoSuchUnit(f"{block.module} layer {block.layer} has {block.n_units} units; no unit {unit}")
    weight = dict(loaded.model.named_modules())[block.b_module].weight.detach()
    channels = slice(unit * block.unit_size, (unit + 1) * block.unit_size)
    columns = (weight[:, channels] if block.b_dim == 1 else weight[channels, :].T).float()  # (d_model, unit_size)
    if block.module == "mlp":
        return columns[:, 0]
    if means is None:
        raise DataError("a head's direction needs the run's channel means (its average input)")
    mean = reference_means(dict(means), block.key, "pooled", dict(tokens or {}))[channels]
    with torch.no_grad():
        return columns @ mean.to(device=columns.device, dtype=torch.float32)


def top_tokens(loaded: LoadedModel, direction: torch.Tensor, k: int = 20) -> dict[str, list[dict]]:
    """The `k` tokens whose logits the direction raises most ("promoted") and lowers most ("suppressed")."""
    import torch

    model = loaded.model
    scaled = through_final_norm(final_norm(model), direction.float())
    unembedding = model.get_output_embeddings().weight.detach()
    with torch.no_grad():
        logits = (unembedding @ scaled.to(device=unembedding.device, dtype=unembedding.dtype)).float()
    k = min(k, logits.numel())
    out = {}
    for name, values, ids in (("promoted", *torch.topk(logits, k)), ("suppressed", *torch.topk(-logits, k))):
        values = values if name == "promoted" else -values
        out[name] = [{"token": loaded.tokenizer.decode([int(i)]), "id": int(i), "logit": float(v)}
                     for v, i in zip(values.cpu(), ids.cpu())]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Contexts: where the unit fires on the calibration pairs


class _Stop(Exception):
    """Raised by the hook once the unit's input is read: the rest of the forward is not needed."""


def unit_activations(loaded: LoadedModel, encoded: Sequence[EncodedPair], block: Block, unit: int, *,
                     batch_size: int = 8, progress: Progress | None = None,
                     phase: str = "forward") -> list[np.ndarray]:
    """The unit's B-input value at every token of every encoded pair (a head: the L2 norm of its d_h channels),
    from a batched forward that stops at the unit's B module: the layers after it are never run."""
    import torch

    from .scoring import batches, pad_batch

    model = loaded.model
    body = getattr(model, model.base_model_prefix, model)
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    channels = slice(unit * block.unit_size, (unit + 1) * block.unit_size)
    seen: list[torch.Tensor] = []

    def hook(_module, args):
        x = args[0][..., channels].float()
        seen.append(x[..., 0] if block.module == "mlp" else x.norm(dim=-1))
        raise _Stop

    out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(encoded)
    plan = batches(encoded, batch_size)
    handle = dict(model.named_modules())[block.b_module].register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for step, idx in enumerate(plan):
                rows = [encoded[i].input_ids for i in idx]
                ids, attention, positions, _ = pad_batch(rows, [[True] * len(r) for r in rows], pad_id, "right",
                                                         loaded.device)
                try:
                    body(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False)
                except _Stop:
                    pass
                if not seen:
                    raise DataError(f"the forward never reached {block.b_module}")
                values = seen.pop().cpu().numpy()
                for b, i in enumerate(idx):
                    out[i] = values[b, :len(encoded[i].input_ids)]
                if progress:
                    progress(phase, step + 1, len(plan))
    finally:
        handle.remove()
    return out


def peak_contexts(tokenizer, encoded: Sequence[EncodedPair], activations: Sequence[np.ndarray],
                  counted: Sequence[Sequence[bool]], *, k: int = 12, left: int = 10, right: int = 4,
                  split: str = "") -> list[dict]:
    """The `k` pairs whose counted tokens hold the unit's highest activations, each at its peak token with
    `left` and `right` tokens around it (decoded one by one) and their activations, for highlighting;
    `response_start` is the index of the first response token among them."""
    peaks = []
    for i, (values, mask) in enumerate(zip(activations, counted)):
        where = np.flatnonzero(np.asarray(mask, dtype=bool)[:len(values)])
        if len(where):
            position = int(where[np.argmax(values[where])])
            peaks.append((float(values[position]), i, position))
    peaks.sort(key=lambda p: (-p[0], p[1]))
    contexts = []
    for value, i, position in peaks[:k]:
        ids = encoded[i].input_ids
        lo, hi = max(0, position - left), min(len(ids), position + right + 1)
        contexts.append({"split": split, "sample": i, "position": position, "activation": value,
                         "token": tokenizer.decode([ids[position]]),
                         "tokens": [tokenizer.decode([t]) for t in ids[lo:hi]],
                         "activations": [float(v) for v in activations[i][lo:hi]], "focus": position - lo,
                         "response_start": min(max(encoded[i].prompt_len - lo, 0), hi - lo),
                         "in_prompt": position < encoded[i].prompt_len})
    return contexts


# ----------------------------------------------------------------------------------------------------------------
# All of it for one unit


@dataclass
class UnitInspection:
    """What `inspect_unit` finds; saved as the run folder's inspect/{module}.{layer}.{unit}.json."""

    module: str
    layer: int
    unit: int
    top_tokens: dict[str, list[dict]]
    contexts: dict[str, list[dict]]  # split -> peak contexts, highest first
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    to_dict = asdict


def inspect_unit(loaded: LoadedModel, sets: Mapping[str, CalibrationSet], module: str, layer: int, unit: int, *,
                 means: Mapping[str, torch.Tensor] | None = None, tokens: Mapping[str, int] | None = None,
                 positions: str = "response", max_length: int | None = None, top_k: int = 20, contexts: int = 12,
                 left: int = 10, right: int = 4, batch_size: int = 8,
                 progress: Progress | None = None) -> UnitInspection:
    """Top tokens and peak contexts of one unit: `sets` are the run's calibration sets (by split), `means` and
    `tokens` its channel means and counted tokens (a head's direction is its average output), `positions` which
    tokens may be a peak (the run's own: the tokens its scores were read on)."""
    from .chat import count_mask
    from .scoring import encode_sets

    block = unit_block(loaded, module, layer)
    t0 = time.perf_counter()
    if progress:
        progress("top tokens", 0, 1)
    found = top_tokens(loaded, write_direction(loaded, block, unit, means, tokens), top_k)
    t_tokens = time.perf_counter()
    encoded = encode_sets(loaded, {split: list(s.pairs) for split, s in sets.items()}, max_length,
                          {split: s.name for split, s in sets.items()})
    peaks = {}
    for split, rows in encoded.items():
        values = unit_activations(loaded, rows, block, unit, batch_size=batch_size, progress=progress,
                                  phase=f"forward {split}")
        peaks[split] = peak_contexts(loaded.tokenizer, rows, values, [count_mask(e, positions) for e in rows],
                                     k=contexts, left=left, right=right, split=split)
    t_end = time.perf_counter()
    settings = {"activation": MLP_ACTIVATION if module == "mlp" else HEAD_ACTIVATION, "positions": positions,
                "top_k": top_k, "contexts": contexts, "left": left, "right": right,
                "direction": "B column" if module == "mlp" else "o_proj slice @ pooled mean input",
                "sets": {split: {"name": s.name, "samples": len(s.pairs)} for split, s in sets.items()}}
    return UnitInspection(module, int(layer), int(unit), found, peaks, settings,
                          {"top_tokens": round(t_tokens - t0, 3), "contexts": round(t_end - t_tokens, 3)})


def inspection_path(folder: str | Path, module: str, layer: int, unit: int) -> Path:
    """Where a run folder caches one unit's inspection."""
    return Path(folder) / INSPECT_DIR / f"{module}.{int(layer)}.{int(unit)}.json"
