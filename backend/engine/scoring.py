"""Per-unit safety and utility scores from one batched forward pass (SSAH, Li & Kim 2410.10862).

For each B-input channel c of each depth-2 module, over the counted tokens of a calibration set:
    m_c = var_c · ‖W_B[:, c]‖²            (attention channels: m_c²)
z-scored within each layer and module type; a head's z is the mean of its channels' z.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from backend.constants import Progress

from .chat import EncodedPair, count_mask, encode_pairs
from .data import Pair
from .models import LoadedModel
from .units import Block


@dataclass
class ChannelStats:
    """Float64 running sums of one block's B-input channels over the counted tokens."""

    n: int
    total: torch.Tensor
    total_sq: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.n, 1)

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance (divides by n - 1)."""
        if self.n < 2:
            return torch.zeros_like(self.total)
        return ((self.total_sq - self.total * self.total / self.n) / (self.n - 1)).clamp_min(0)


def batches(encoded: Sequence[EncodedPair], batch_size: int) -> list[list[int]]:
    """Sample indices grouped into batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]], pad_id: int, side: str,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, position_ids and counted-token mask for one padded batch."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    counted = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (row, mask) in enumerate(zip(rows, masks)):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[b, span] = torch.tensor(row, dtype=torch.long)
        attention[b, span] = 1
        counted[b, span] = torch.tensor(mask, dtype=torch.bool)
    positions = (attention.cumsum(1) - 1).clamp_min(0)
    return ids.to(device), attention.to(device), positions.to(device), counted.to(device)


class _StatsHooks:
    """Forward pre-hooks on every B module that add the counted tokens' inputs to float64 sums."""

    def __init__(self, model: nn.Module, blocks: Sequence[Block]):
        self.modules = dict(model.named_modules())
        self.blocks = blocks
        self.counted: torch.Tensor | None = None
        self.stats: dict[str, ChannelStats] = {}
        self.handles = []

    def __enter__(self) -> "_StatsHooks":
        for block in self.blocks:
            self.handles.append(self.modules[block.b_module].register_forward_pre_hook(self._hook(block.key)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, key: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            mask = self.counted.to(x.device)
            sel = x.reshape(-1, x.shape[-1])[mask.reshape(-1)].double()
            s = self.stats.get(key)
            if s is None:
                zeros = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
                s = self.stats[key] = ChannelStats(0, zeros, zeros.clone())
            s.n += sel.shape[0]
            s.total += sel.sum(0)
            s.total_sq += (sel * sel).sum(0)
        return hook


@torch.no_grad()
def channel_stats(loaded: LoadedModel, encoded: Sequence[EncodedPair], *, positions: str = "response",
                  batch_size: int = 8, padding_side: str = "right", progress: Progress | None = None,
                  phase: str = "forward") -> dict[str, ChannelStats]:
    """One forward pass over the encoded pairs; statistics of every B input over the counted tokens."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    model = loaded.model
    body = getattr(model, model.base_model_prefix, model)  # the decoder stack: no LM head, no logits
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    plan = batches(encoded, batch_size)
    masks = [count_mask(e, positions) for e in encoded]
    with _StatsHooks(model, loaded.units.blocks) as hooks:
        for step, idx in enumerate(plan):
            ids, attention, pos, counted = pad_batch(
                [encoded[i].input_ids for i in idx], [masks[i] for i in idx], pad_id, padding_side, loaded.device)
            hooks.counted = counted
            body(input_ids=ids, attention_mask=attention, position_ids=pos, use_cache=False)
            if progress:
                progress(phase, step + 1, len(plan))
        stats = hooks.stats
    for block in loaded.units.blocks:  # a set with no counted tokens still gets (empty) statistics
        if block.key not in stats:
            zeros = torch.zeros(block.channels, dtype=torch.float64, device=loaded.device)
            stats[block.key] = ChannelStats(0, zeros, zeros.clone())
    return stats


def b_column_norms(model: nn.Module, block: Block) -> torch.Tensor:
    """‖W_B[:, c]‖² for every input channel c of the block's B module, in float64."""
    weight = dict(model.named_modules())[block.b_module].weight
    return weight.detach().double().pow(2).sum(dim=1 - block.b_dim)


def channel_metric(stats: ChannelStats, norms: torch.Tensor, module: str) -> torch.Tensor:
    """m_c = var_c · ‖W_B[:, c]‖², squared again for attention channels (as in the research code)."""
    m = stats.var.to(norms.device) * norms
    return m * m if module == "attn" else m


def zscore(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / population std; all zeros when the layer has no spread."""
    std = x.std(unbiased=False)
    return torch.zeros_like(x) if std == 0 else (x - x.mean()) / std


@dataclass
class BlockScores:
    block: Block
    score: np.ndarray  # per unit: mean of its channels' metric
    z: np.ndarray  # per unit: mean of its channels' z-scores


def block_scores(loaded: LoadedModel, stats: dict[str, ChannelStats]) -> list[BlockScores]:
    """Metric, per-layer z-score and per-unit aggregation for every block."""
    out = []
    for block in loaded.units.blocks:
        m = channel_metric(stats[block.key], b_column_norms(loaded.model, block), block.module)
        z = zscore(m)
        shape = (block.n_units, block.unit_size)
        out.append(BlockScores(block, m.view(shape).mean(1).cpu().numpy(), z.view(shape).mean(1).cpu().numpy()))
    return out


def encode_sets(loaded: LoadedModel, sets: dict[str, Sequence[Pair]], max_length: int | None,
                sources: dict[str, str] | None = None) -> dict[str, list[EncodedPair]]:
    """Tokenise each calibration set; max_length defaults to the model's context size."""
    if max_length is None:
        max_length = getattr(loaded.model.config, "max_position_embeddings", None)
    sources = sources or {}
    return {name: encode_pairs(loaded.tokenizer, pairs, max_length=max_length, source=sources.get(name, name))
            for name, pairs in sets.items()}


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
