"""A brute-force reference implementation of SSAH unit scoring, written from the formula (DESIGN.md, "The method").

It is the yardstick the engine is tested against, so it shares no code with `backend/engine/scoring.py`,
`roles.py` or `models.py`: one sample at a time (no batching, no padding), hooks that keep the whole input of each
B module, statistics in float64 over the concatenated counted tokens, and parameter counts taken by slicing the
weight tensors themselves. Only the token ids and the counted-token mask come from `backend.engine.data`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from backend.engine.chat import count_mask, encode_pairs
from backend.engine.data import Pair

# Llama-style layouts: self_attn.{q,k,v,o}_proj (or Phi-3's fused qkv_proj), mlp.{gate,up,down}_proj (or gate_up_proj).
# Qwen3, Gemma-3 and OLMo-2 add q_norm / k_norm (per head, or over all heads in OLMo-2): no unit owns them, like the
# layer norms; `parameter_accounting` checks that nothing else inside a block is left out.
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "smollm3", "olmo2"}
# Parameters inside an attention / MLP module that belong to no unit: norms, and the biases of B (added after the
# scored input, so no channel owns them).
_NON_UNIT_LEAVES = ("o_proj.bias", "down_proj.bias", "c_proj.bias", "dense.bias", "dense_4h_to_h.bias")
THRESHOLDS = dict(h_ru=0.10, h_scu=0.01, h_ucu=0.05)


@dataclass
class Block:
    """One scored depth-2 module `B · act(A · x)` of one layer: where to hook, what reads each channel, who owns what."""
    layer: int
    module: str  # "attn" | "mlp"
    b: torch.nn.Module  # the module whose input is scored
    b_sq_norms: np.ndarray  # float64, ||W_B[:, c]||^2 per B input channel c
    width: int  # B input channels per unit: 1 for an MLP channel, d_h for a head
    unit_params: list[int]  # parameters owned by each unit
    partitioned: list[str] = field(default_factory=list)  # full names of the tensors split among the units
    remainder: int = 0  # entries of the partitioned tensors owned by no unit (k/v shares that do not divide)


def _numel(*tensors: torch.Tensor | None) -> int:
    return sum(int(t.numel()) for t in tensors if t is not None)


def _sq_norms_of_columns(w: torch.Tensor) -> np.ndarray:
    """Squared L2 norm of each column of a Linear weight (out x in): the weights that read input channel c."""
    return (w.detach().double() ** 2).sum(dim=0).cpu().numpy()


def _bias(linear: torch.nn.Module) -> torch.Tensor | None:
    return getattr(linear, "bias", None)


def _layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    kind = model.config.model_type
    if kind == "gpt2":
        return "transformer.h", model.transformer.h
    if kind == "gpt_neox":
        return "gpt_neox.layers", model.gpt_neox.layers
    if kind in LLAMA_LIKE:
        return "model.layers", model.model.layers
    raise NotImplementedError(f"reference has no unit map for model_type {kind!r}")


def _head_counts(config) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv


def blocks(model: torch.nn.Module) -> list[Block]:
    """The scored blocks of `model` in canonical order: by layer, attention before MLP."""
    kind = model.config.model_type
    heads, kv_heads = _head_counts(model.config)
    group = heads // kv_heads
    path, layers = _layers(model)
    out = []
    for i, layer in enumerate(layers):
        prefix = f"{path}.{i}"
        # ---- attention
        if kind == "gpt2":
            c_attn, c_proj = layer.attn.c_attn, layer.attn.c_proj  # Conv1D: weight is in x out
            d = c_proj.weight.shape[0] // heads
            e = c_attn.weight.shape[1] // 3
            params = []
            for h in range(heads):
                cols = [slice(part * e + h * d, part * e + (h + 1) * d) for part in range(3)]
                params.append(sum(_numel(c_attn.weight[:, c], c_attn.bias[c]) for c in cols)
                              + _numel(c_proj.weight[h * d:(h + 1) * d, :]))
            b_norms = (c_proj.weight.detach().double() ** 2).sum(dim=1).numpy()  # rows read channel c
            out.append(Block(i, "attn", c_proj, b_norms, d, params,
                             [f"{prefix}.attn.c_attn.weight", f"{prefix}.attn.c_attn.bias",
                              f"{prefix}.attn.c_proj.weight"]))
        elif kind == "gpt_neox":
            qkv, dense = layer.attention.query_key_value, layer.attention.dense
            d = dense.in_features // heads
            # transformers' GPTNeoXAttention views the output as (heads, 3 * d) and chunks it into q, k, v:
            # head h owns rows [3dh, 3d(h+1)) = [q_h, k_h, v_h].
            params = [_numel(qkv.weight[3 * d * h:3 * d * (h + 1)],
                             None if qkv.bias is None else qkv.bias[3 * d * h:3 * d * (h + 1)],
                             dense.weight[:, h * d:(h + 1) * d]) for h in range(heads)]
            names = [f"{prefix}.attention.query_key_value.weight", f"{prefix}.attention.dense.weight"]
            if qkv.bias is not None:
                names.append(f"{prefix}.attention.query_key_value.bias")
            out.append(Block(i, "attn", dense, _sq_norms_of_columns(dense.weight), d, params, names))
        else:
            attn = layer.self_attn
            o = attn.o_proj
            d = o.in_features // heads
            a = f"{prefix}.self_attn"
            names = [f"{a}.o_proj.weight"]
            if hasattr(attn, "qkv_proj"):  # phi3: rows [q (heads*d) | k (kv*d) | v (kv*d)]
                w, bias = attn.qkv_proj.weight, _bias(attn.qkv_proj)
                dkv = (w.shape[0] - heads * d) // (2 * kv_heads)
                q_rows = [slice(h * d, (h + 1) * d) for h in range(heads)]
                k_rows = [slice(heads * d + g * dkv, heads * d + (g + 1) * dkv) for g in range(kv_heads)]
                v_rows = [slice(heads * d + kv_heads * dkv + g * dkv, heads * d + kv_heads * dkv + (g + 1) * dkv)
                          for g in range(kv_heads)]
                qw = kw = vw = w
                qb = kb = vb = bias
                names.append(f"{a}.qkv_proj.weight")
                if bias is not None:
                    names.append(f"{a}.qkv_proj.bias")
            else:
                qw, kw, vw = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
                qb, kb, vb = _bias(attn.q_proj), _bias(attn.k_proj), _bias(attn.v_proj)
                dkv = kw.shape[0] // kv_heads
                q_rows = [slice(h * d, (h + 1) * d) for h in range(heads)]
                k_rows = v_rows = [slice(g * dkv, (g + 1) * dkv) for g in range(kv_heads)]
                for proj, bias in (("q_proj", qb), ("k_proj", kb), ("v_proj", vb)):
                    names.append(f"{a}.{proj}.weight")
                    if bias is not None:
                        names.append(f"{a}.{proj}.bias")

            def rows(w, b, s):
                return _numel(w[s], None if b is None else b[s])

            kv_share = [rows(kw, kb, k_rows[g]) + rows(vw, vb, v_rows[g]) for g in range(kv_heads)]
            params = [rows(qw, qb, q_rows[h]) + _numel(o.weight[:, h * d:(h + 1) * d])
                      + kv_share[h // group] // group for h in range(heads)]
            remainder = sum(s - (s // group) * group for s in kv_share)
            out.append(Block(i, "attn", o, _sq_norms_of_columns(o.weight), d, params, names, remainder))
        # ---- MLP
        if kind == "gpt2":
            c_fc, c_proj = layer.mlp.c_fc, layer.mlp.c_proj
            inner = c_proj.weight.shape[0]
            params = [_numel(c_fc.weight[:, j], c_fc.bias[j], c_proj.weight[j, :]) for j in range(inner)]
            b_norms = (c_proj.weight.detach().double() ** 2).sum(dim=1).numpy()
            out.append(Block(i, "mlp", c_proj, b_norms, 1, params,
                             [f"{prefix}.mlp.c_fc.weight", f"{prefix}.mlp.c_fc.bias", f"{prefix}.mlp.c_proj.weight"]))
        elif kind == "gpt_neox":
            up, down = layer.mlp.dense_h_to_4h, layer.mlp.dense_4h_to_h
            params = [_numel(up.weight[j], up.bias[j], down.weight[:, j]) for j in range(down.in_features)]
            out.append(Block(i, "mlp", down, _sq_norms_of_columns(down.weight), 1, params,
                             [f"{prefix}.mlp.dense_h_to_4h.weight", f"{prefix}.mlp.dense_h_to_4h.bias",
                              f"{prefix}.mlp.dense_4h_to_h.weight"]))
        else:
            mlp = layer.mlp
            down = mlp.down_proj
            inner = down.in_features
            m = f"{prefix}.mlp"
            names = [f"{m}.down_proj.weight"]
            if hasattr(mlp, "gate_up_proj"):  # phi3: gate = rows [0, I), up = rows [I, 2I)
                gu, gub = mlp.gate_up_proj.weight, _bias(mlp.gate_up_proj)
                params = [_numel(gu[j], gu[j + inner], down.weight[:, j],
                                 *(() if gub is None else (gub[j], gub[j + inner]))) for j in range(inner)]
                names.append(f"{m}.gate_up_proj.weight")
                if gub is not None:
                    names.append(f"{m}.gate_up_proj.bias")
            else:
                gate, up = mlp.gate_proj, mlp.up_proj
                params = [_numel(gate.weight[j], up.weight[j], down.weight[:, j],
                                 None if gate.bias is None else gate.bias[j],
                                 None if up.bias is None else up.bias[j]) for j in range(inner)]
                for proj in ("gate_proj", "up_proj"):
                    names.append(f"{m}.{proj}.weight")
                    if _bias(getattr(mlp, proj)) is not None:
                        names.append(f"{m}.{proj}.bias")
            out.append(Block(i, "mlp", down, _sq_norms_of_columns(down.weight), 1, params, names))
    return out


def parameter_accounting(model: torch.nn.Module) -> dict[str, int]:
    """Unit parameters, the parameters no unit owns (counted name by name), and the model's own total."""
    bl = blocks(model)
    unit = sum(sum(b.unit_params) for b in bl)
    partitioned = {n for b in bl for n in b.partitioned}
    names = dict(model.named_parameters())  # tied weights appear once
    missing = partitioned - set(names)
    assert not missing, f"unit map names tensors the model lacks: {sorted(missing)}"
    others = sum(p.numel() for n, p in names.items() if n not in partitioned)  # embeddings, norms, B biases...
    block_modules = {n.rsplit(".", 2)[0] for n in partitioned}  # e.g. model.layers.0.self_attn
    for n in names:
        inside = any(n.startswith(m + ".") for m in block_modules)
        if inside and n not in partitioned:
            owner, leaf = n.rsplit(".", 2)[-2:]
            assert "norm" in owner or f"{owner}.{leaf}" in _NON_UNIT_LEAVES, (
                f"{n} lies inside a scored block but the reference neither splits it among units nor knows it "
                "as a norm or a B bias")
    remainder = sum(b.remainder for b in bl)
    return dict(unit=unit, non_unit=others + remainder, remainder=remainder, total=model.num_parameters())


# ---------------------------------------------------------------- statistics

@torch.no_grad()
def channel_rows(model: torch.nn.Module, bl: list[Block], encoded, positions: str) -> list[torch.Tensor]:
    """For each block, the float64 matrix (counted tokens x B input channels) of every sample, one sample at a time."""
    captured: dict[int, torch.Tensor] = {}
    handles = [b.b.register_forward_pre_hook(lambda mod, args, k=k: captured.__setitem__(k, args[0]))
               for k, b in enumerate(bl)]
    rows: list[list[torch.Tensor]] = [[] for _ in bl]
    device = next(model.parameters()).device
    try:
        model.eval()
        for enc in encoded:
            mask = torch.tensor(count_mask(enc, positions), dtype=torch.bool)
            ids = torch.tensor([list(enc.input_ids)], dtype=torch.long, device=device)
            assert mask.shape[0] == ids.shape[1], "count_mask length differs from input_ids"
            captured.clear()
            model(input_ids=ids, use_cache=False)
            for k in range(len(bl)):
                rows[k].append(captured[k][0].detach().double().cpu()[mask])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(r, dim=0) for r in rows]


def _zscore(m: np.ndarray) -> np.ndarray:
    std = m.std(ddof=0)
    return np.zeros_like(m) if std == 0 else (m - m.mean()) / std


def _as_pairs(pairs) -> list:
    return [p if isinstance(p, Pair) else Pair(*p) for p in pairs]


# ---------------------------------------------------------------- roles

def select(params: np.ndarray, key: np.ndarray, h: float, *, top: bool = False) -> np.ndarray:
    """Boolean mask of the 'bottom (or top) h by key' units: stable sort, shortest prefix whose mass reaches h*P."""
    chosen = np.zeros(len(params), dtype=bool)
    if h <= 0:
        return chosen
    params = np.asarray(params, dtype=np.int64)
    order = np.argsort(-np.asarray(key) if top else np.asarray(key), kind="stable")
    target = h * int(params.sum())
    cum = np.cumsum(params[order])
    reached = np.nonzero(cum >= target)[0]
    n = len(order) if len(reached) == 0 else int(reached[0]) + 1
    chosen[order[:n]] = True
    return chosen


def classify(units: pd.DataFrame, h_ru: float = 0.10, h_scu: float = 0.01, h_ucu: float = 0.05) -> np.ndarray:
    """Roles from z-scores, later assignments overriding earlier: CU, then RU, SCU, UCU. `units` in canonical order."""
    zs, zu = units.z_safety.to_numpy(np.float64), units.z_utility.to_numpy(np.float64)
    params = units.params.to_numpy(np.int64)
    role = np.full(len(units), "CU", dtype=object)
    role[select(params, zs + zu, h_ru)] = "RU"
    role[select(params, zs - zu, h_scu, top=True)] = "SCU"
    role[select(params, zs - zu, h_ucu)] = "UCU"
    return role


# ---------------------------------------------------------------- the whole run

def reference_attribution(model: torch.nn.Module, tokenizer, safety_pairs, utility_pairs, *,
                          positions: str = "response", max_length: int | None = None,
                          h_ru: float = 0.10, h_scu: float = 0.01, h_ucu: float = 0.05,
                          ) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """Units table (canonical order) and B-input channel means, computed one sample at a time in float64."""
    bl = blocks(model)
    columns: dict[str, list] = {"layer": [], "module": [], "unit": [], "params": []}
    for b in bl:
        n = len(b.unit_params)
        columns["layer"] += [b.layer] * n
        columns["module"] += [b.module] * n
        columns["unit"] += list(range(n))
        columns["params"] += b.unit_params
    units = pd.DataFrame(columns).astype({"layer": "int64", "unit": "int64", "params": "int64"})
    means: dict[str, torch.Tensor] = {}
    for split, pairs in (("safety", safety_pairs), ("utility", utility_pairs)):
        encoded = encode_pairs(tokenizer, _as_pairs(pairs), max_length=max_length)
        scores, zs = [], []
        for b, x in zip(bl, channel_rows(model, bl, encoded, positions)):
            assert x.shape[0] >= 2, f"{split}: fewer than two counted tokens"
            means[f"{split}.{b.module}.{b.layer}"] = x.mean(dim=0)
            var = x.var(dim=0, correction=1).numpy()
            m = var * b.b_sq_norms
            if b.module == "attn":
                m = m ** 2
            z = _zscore(m)
            scores.append(m.reshape(-1, b.width).mean(axis=1))
            zs.append(z.reshape(-1, b.width).mean(axis=1))
        units[f"score_{split}"] = np.concatenate(scores)
        units[f"z_{split}"] = np.concatenate(zs)
    units["role"] = classify(units, h_ru, h_scu, h_ucu)
    return units, means
