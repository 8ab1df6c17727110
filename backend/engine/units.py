"""Unit maps: which depth-2 modules `B · act(A · x)` a causal LM has, and which slices of which parameters each
unit owns (its A rows, its B columns, its share of GQA keys and values).

A *unit* is an MLP intermediate channel or an attention head; its score is read at the input of B (DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import ModelError

# model_type values whose layout the unit map is tested on (tests/tiny.py builds each of them).
SUPPORTED_ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox",
    "smollm3", "olmo2",
)




@dataclass(frozen=True)
class Slab:
    """Entries of one parameter that belong to units: unit u owns indices
    `offset + (u // share) * stride + [0, size)` along axis `dim`. `share > 1` marks GQA keys/values,
    owned jointly by `share` heads."""

    param: str
    dim: int
    offset: int
    size: int
    stride: int
    share: int = 1

    def indices(self, unit: int) -> torch.Tensor:
        start = self.offset + (unit // self.share) * self.stride
        return torch.arange(start, start + self.size)


@dataclass(frozen=True)
class Block:
    """One depth-2 module of one layer: `n_units` units of `unit_size` B-input channels each."""

    layer: int
    module: str  # "mlp" | "attn"
    b_module: str  # dotted name of B inside the model
    b_dim: int  # axis of B's weight that runs over B's input channels (1 for Linear, 0 for Conv1D)
    n_units: int
    unit_size: int
    slabs: tuple[Slab, ...]  # B slab first, then A slabs
    params: np.ndarray = field(compare=False, repr=False)  # parameters owned by each unit

    @property
    def channels(self) -> int:
        return self.n_units * self.unit_size

    @property
    def key(self) -> str:
        return f"{self.module}.{self.layer}"


@dataclass(frozen=True)
class UnitMap:
    architecture: str
    blocks: tuple[Block, ...]
    total_params: int

    @property
    def unit_params(self) -> int:
        return int(sum(int(b.params.sum()) for b in self.blocks))

    @property
    def n_units(self) -> int:
        return sum(b.n_units for b in self.blocks)


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, model) if base_name else model
    for attr in ("layers", "h"):
        layers = getattr(base, attr, None)
        if isinstance(layers, nn.ModuleList):
            return f"{base_name}.{attr}" if base_name else attr, layers
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}")


def _slab_params(model_params: dict[str, nn.Parameter], slab: Slab) -> int:
    shape = model_params[slab.param].shape
    return slab.size * int(np.prod([n for d, n in enumerate(shape) if d != slab.dim], dtype=np.int64))


def _block(layer: int, module: str, b_module: str, b_dim: int, n_units: int, unit_size: int,
           slabs: list[Slab], named: dict[str, nn.Parameter]) -> Block:
    present = [s for s in slabs if s.param in named]
    own = sum(_slab_params(named, s) for s in present if s.share == 1)
    shared = sum(_slab_params(named, s) for s in present if s.share > 1)
    share = max((s.share for s in present), default=1)
    params = np.full(n_units, own + shared // share, dtype=np.int64)
    return Block(layer, module, b_module, b_dim, n_units, unit_size, tuple(present), params)


def _linear_rows(param: str, offset: int, size: int, stride: int | None = None, share: int = 1,
                 bias: bool = True) -> list[Slab]:
    """Row slabs of a Linear weight (and its bias, which `_block` drops when the layer has none)."""
    stride = size if stride is None else stride
    out = [Slab(f"{param}.weight", 0, offset, size, stride, share)]
    if bias:
        out.append(Slab(f"{param}.bias", 0, offset, size, stride, share))
    return out


def unit_map(model: nn.Module) -> UnitMap:
    """Find every MLP and attention block of a supported causal LM and the parameters its units own."""
    config = model.config
    arch = getattr(config, "model_type", type(model).__name__)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    prefix, layers = _decoder_layers(model)
    named = dict(model.named_parameters())
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    blocks: list[Block] = []
    for i, layer in enumerate(layers):
        p = f"{prefix}.{i}"
        if hasattr(layer, "self_attn"):  # Llama family (Mistral, Qwen, Gemma, Phi3, ...)
            attn, mlp = layer.self_attn, layer.mlp
            d = attn.o_proj.in_features // n_heads
            a = f"{p}.self_attn"
            if hasattr(attn, "qkv_proj"):
                q, k, v = (f"{a}.qkv_proj",) * 3
                k_off, v_off = n_heads * d, (n_heads + n_kv) * d
            else:
                q, k, v = f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"
                k_off = v_off = 0
            slabs = [Slab(f"{a}.o_proj.weight", 1, 0, d, d), *_linear_rows(q, 0, d),
                     *_linear_rows(k, k_off, d, share=group), *_linear_rows(v, v_off, d, share=group)]
            blocks.append(_block(i, "attn", f"{a}.o_proj", 1, n_heads, d, slabs, named))
            m = f"{p}.mlp"
            if hasattr(mlp, "gate_up_proj"):
                inter = mlp.down_proj.in_features
                a_slabs = [*_linear_rows(f"{m}.gate_up_proj", 0, 1), *_linear_rows(f"{m}.gate_up_proj", inter, 1)]
            else:
                a_slabs = [*_linear_rows(f"{m}.gate_proj", 0, 1), *_linear_rows(f"{m}.up_proj", 0, 1)]
            slabs = [Slab(f"{m}.down_proj.weight", 1, 0, 1, 1), *a_slabs]
            blocks.append(_block(i, "mlp", f"{m}.down_proj", 1, mlp.down_proj.in_features, 1, slabs, named))
        elif hasattr(layer, "attn") and hasattr(layer.attn, "c_attn"):  # GPT-2: Conv1D weights are in x out
            hidden = config.hidden_size
            d = hidden // n_heads
            a, m = f"{p}.attn", f"{p}.mlp"
            slabs = [Slab(f"{a}.c_proj.weight", 0, 0, d, d)]
            for off in (0, hidden, 2 * hidden):
                slabs += [Slab(f"{a}.c_attn.weight", 1, off, d, d), Slab(f"{a}.c_attn.bias", 0, off, d, d)]
            blocks.append(_block(i, "attn", f"{a}.c_proj", 0, n_heads, d, slabs, named))
            inter = layer.mlp.c_fc.weight.shape[1]
            slabs = [Slab(f"{m}.c_proj.weight", 0, 0, 1, 1), Slab(f"{m}.c_fc.weight", 1, 0, 1, 1),
                     Slab(f"{m}.c_fc.bias", 0, 0, 1, 1)]
            blocks.append(_block(i, "mlp", f"{m}.c_proj", 0, inter, 1, slabs, named))
        elif hasattr(layer, "attention") and hasattr(layer.attention, "query_key_value"):  # GPT-NeoX
            d = config.hidden_size // n_heads
            a, m = f"{p}.attention", f"{p}.mlp"
            slabs = [Slab(f"{a}.dense.weight", 1, 0, d, d)]
            for off in (0, d, 2 * d):  # rows are [q_h, k_h, v_h] per head
                slabs += _linear_rows(f"{a}.query_key_value", off, d, stride=3 * d)
            blocks.append(_block(i, "attn", f"{a}.dense", 1, n_heads, d, slabs, named))
            inter = layer.mlp.dense_4h_to_h.in_features
            slabs = [Slab(f"{m}.dense_4h_to_h.weight", 1, 0, 1, 1), *_linear_rows(f"{m}.dense_h_to_4h", 0, 1)]
            blocks.append(_block(i, "mlp", f"{m}.dense_4h_to_h", 1, inter, 1, slabs, named))
        else:
            raise ModelError(f"layer {i} of {arch!r} has no attention/MLP layout this tool knows")
    total = sum(p.numel() for p in model.parameters())
    return UnitMap(arch, tuple(blocks), total)
