"""Low-rank adapters: train a rank-r change `B @ A` of every linear map in the decoder layers instead of the maps
themselves, then fold it into the weights.

The change of a whole model is then r * (rows + columns) numbers per matrix, which is what lets an aligned model
ship as a small delta (`delta.make_delta` stores such a change as its two factors). A change trained in full and
cut to rank r afterwards is not the same thing: on SmolLM2-135M that cut took the unseen HarmBench ASR from 10% to
23.5% (docs/results.md), so the rank is imposed during training.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.utils import parametrize

ADAPTER_NAMES = ("lowrank_a", "lowrank_b")


class LowRankChange(torch.nn.Module):
    """weight -> weight + B @ A. B starts at zero, so training starts from the model as it was."""

    def __init__(self, rows: int, cols: int, rank: int, generator: torch.Generator, dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        bound = 1 / math.sqrt(cols)
        a = (torch.rand(rank, cols, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        self.lowrank_a = torch.nn.Parameter(a.to(device=device, dtype=dtype))
        self.lowrank_b = torch.nn.Parameter(torch.zeros(rows, rank, device=device, dtype=dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.lowrank_b @ self.lowrank_a


def adapted_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The linear maps that get an adapter: every nn.Linear inside the decoder layers (attention projections and
    MLP), not the embedding or the output head (tied to the embedding in small models)."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"]
    if not found:
        raise ValueError("the model has no linear maps inside decoder layers to adapt")
    return found


@contextmanager
def low_rank_adapters(model: torch.nn.Module, rank: int, *, seed: int = 0) -> Iterator[list[str]]:
    """Attach a rank-`rank` adapter to every decoder linear map; yields the adapter parameter names (as
    `model.named_parameters()` now lists them). On exit the changes are folded into the weights, so the model has
    its usual parameters again; if the block fails, the adapters are dropped and those maps are as they were."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    linears = adapted_linears(model)
    too_big = next(((n, m) for n, m in linears if rank >= min(m.weight.shape)), None)
    if too_big:
        raise ValueError(f"rank {rank} is not below the size of {too_big[0]} {tuple(too_big[1].weight.shape)}; "
                         "a low-rank change must be smaller")
    generator = torch.Generator().manual_seed(seed)
    attached = []
    try:
        for name, module in linears:
            rows, cols = module.weight.shape
            parametrize.register_parametrization(module, "weight", LowRankChange(
                rows, cols, rank, generator, module.weight.dtype, module.weight.device))
            attached.append(module)
        names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in ADAPTER_NAMES]
        yield names
    except BaseException:
        for module in attached:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        raise
    for module in attached:
        with torch.no_grad():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
