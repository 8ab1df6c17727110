"""Weight deltas: a fine-tuned model stored as the rows or columns that changed from its base, small enough to ship
inside the package (the built-in smollm2-135m-safe is SmolLM2-135M-Instruct plus such a file).

A delta file is safetensors: per changed parameter one of
- `NAME@AXIS.index` (int32, the changed rows/columns along AXIS) with `NAME@AXIS.delta` (those slices of new - base);
- `NAME.lowrank_u` (rows x r) and `NAME.lowrank_v` (r x columns) whose product is the difference, for a matrix whose
  change has a low rank (a model trained through low-rank adapters);
- `NAME.delta` (the whole difference);
- `NAME.sign` (the signs of a matrix's change, packed 8 to a byte) with `NAME.scale` (one magnitude per row): a
  1-bit delta (`bits=1`, after BitDelta, Liu et al. 2024), lossy, for a change too big to ship otherwise, such as
  a full fine-tune. Each row is stored as its mean absolute change times the signs, the closest such form in L2;
- `NAME.dare` (a `keep` share of a matrix's change entries, chosen at random, each divided by `keep`: after DARE,
  Yu et al. 2024), lossy but unbiased: the expected change is the change itself, so its errors average out over a
  layer's many inputs. Which entries were kept is not stored: `dare_mask` regenerates them from the metadata's
  seed and the parameter's name with a counter-based hash (the same on every machine and torch version). With
  `bits=8` the kept values are `NAME.dare_q` (int8) times `NAME.dare_scale` (one float16 step per row): half the
  bytes a value, so twice the share fits in the same file, and DARE's error, sqrt((1 - keep) / keep), falls far
  more than the rounding adds (about 1% of the change); with `bits=4` they are codes in [-7, 7] packed two to a
  byte (`NAME.dare_q` as uint8), times the same step: four times the share, the rounding (about 12% of each kept
  value on a full fine-tune) lifting the error only a little above DARE's own (1.35 against 1.33 at keep 0.36);
  with `bits=2` they are `NAME.dare_q2`, codes c in 0..3 packed four to a byte standing for (c - 1.5) steps,
  each row's step set so that the row keeps its length along its change (unbiased, see `_quantize_rows_2bit`):
  eight times the share of 16-bit values, and on a full fine-tune a smaller error in the same bytes (at keep
  0.72, DARE's own 0.62 and a rounding of about 37% of each kept value, against 1.35 at 4 bits and keep 0.36);
Each parameter gets the smallest of these that holds its change as exactly as the storage type does (with `bits=1`,
the sign form wherever it is smaller). The metadata holds the format, the base's name, a checksum of the base
tensors it changes (so a delta is never applied to other weights) and, for a 1-bit or DARE delta, which parameters
are approximate and how far (relative Frobenius error of their change).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch

from . import atomic

DELTA_FORMAT = "ssah-delta/7"
# /1 had no low-rank entries, /2 no sign ones, /3 no DARE ones, /4 no 8-bit DARE ones, /5 no 4-bit DARE ones,
# /6 no 2-bit DARE ones
READABLE_FORMATS = ("ssah-delta/1", "ssah-delta/2", "ssah-delta/3", "ssah-delta/4", "ssah-delta/5",
                    "ssah-delta/6", DELTA_FORMAT)
DELTA_BITS = (16, 8, 4, 2, 1)
# The widths that store a DARE delta's kept values as codes times a step per row
DARE_BITS = (8, 4, 2)
# The largest magnitude of a quantized DARE value, by bits: int8 in [-127, 127], a 4-bit code in [-7, 7]
QUANT_LEVELS = {8: 127, 4: 7}
# A 2-bit row's step is searched among these multiples of its kept values' root mean square
TWO_BIT_STEPS = torch.linspace(0.5, 1.6, 23)
# A low-rank form is used only when it is this close to the change (relative Frobenius error): about float16's own
# rounding, so choosing it loses nothing the storage type would have kept.
LOWRANK_TOLERANCE = 1e-3
WEIGHTS = "model.safetensors"


class DeltaError(ValueError):
    """A delta that cannot be made or applied; the message says why."""


def _checksum(state: dict[str, torch.Tensor], names) -> str:
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode() + b"\0" + state[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def make_delta(base: dict[str, torch.Tensor], new: dict[str, torch.Tensor], *, dtype: torch.dtype = torch.float16,
               base_name: str = "", bits: int = 16, keep: float | None = None,
               seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of what changed from `base` to `new`, slice by slice along the cheaper axis; with
    `bits=1` a matrix whose change is cheaper as signs and row magnitudes is stored so (lossy); with `keep` one
    whose change is cheaper as a random `keep` share of its entries (seeded by `seed`) is stored so (lossy), as
    float16 values or, with `bits=8`, `4` or `2` too, as 8-, 4- or 2-bit codes with a step per row."""
    if bits not in DELTA_BITS:
        raise DeltaError(f"a delta stores its values in {' or '.join(map(str, DELTA_BITS))} bits, not {bits}")
    if keep is not None and not (isinstance(keep, (int, float)) and 0 < keep < 1):
        raise DeltaError(f"keep is the share of a change's entries kept, above 0 and below 1; got {keep!r}")
    if keep is not None and bits == 1:
        raise DeltaError("a delta is either 1-bit or DARE (keep), not both")
    if bits in DARE_BITS and keep is None:
        raise DeltaError(f"{bits}-bit values are for a DARE delta: give keep (the share of entries kept) too")
    if set(base) != set(new):
        raise DeltaError(f"the models have different parameters: {sorted(set(base) ^ set(new))[:3]}")
    tensors: dict[str, torch.Tensor] = {}
    changed, approximate, lost, total = [], [], 0.0, 0.0
    itemsize = torch.tensor([], dtype=dtype).element_size()
    for name in sorted(base):
        a, b = base[name].to(torch.float32), new[name].to(torch.float32)
        if a.shape != b.shape:
            raise DeltaError(f"{name} is {tuple(a.shape)} in the base and {tuple(b.shape)} in the new model")
        diff = b - a
        nonzero = diff != 0
        if not nonzero.any():
            continue
        changed.append(name)
        best = None
        for axis in range(diff.dim()):
            others = [d for d in range(diff.dim()) if d != axis]
            hit = nonzero.any(dim=others) if others else nonzero
            idx = hit.nonzero().flatten()
            cost = len(idx) * (diff.numel() // diff.shape[axis])
            if best is None or cost < best[0]:
                best = (cost, axis, idx)
        cost, axis, idx = best
        factors = _low_rank(diff, max_rank=cost // sum(diff.shape)) if diff.dim() == 2 else None
        exact = itemsize * (factors[0].shape[1] * sum(diff.shape) if factors is not None else min(cost, diff.numel()))
        mask = dare_mask(name, diff.shape, keep, seed) if keep is not None and diff.dim() >= 2 else None
        stored = None  # the change as a lossy form stores it, to measure its error
        if mask is not None and bits in QUANT_LEVELS and \
                (int(mask.sum()) * bits + 7) // 8 + diff.shape[0] * itemsize < exact:
            q, step = _quantize_rows(torch.where(mask, diff / keep, 0.0), dtype, QUANT_LEVELS[bits])
            values = q[mask].contiguous()
            tensors[f"{name}.dare_q"] = values if bits == 8 else _pack_nibbles(values)
            tensors[f"{name}.dare_scale"] = step
            stored = q.to(torch.float32) * _row_steps(step, diff.dim())  # q is 0 off the mask already
        elif mask is not None and bits == 2 and \
                (int(mask.sum()) + 3) // 4 + diff.shape[0] * itemsize < exact:
            codes, step = _quantize_rows_2bit(diff / keep, mask, dtype)
            tensors[f"{name}.dare_q2"] = _pack_crumbs(codes[mask])
            tensors[f"{name}.dare_scale"] = step
            stored = torch.where(mask, (codes.to(torch.float32) - 1.5) * _row_steps(step, diff.dim()), 0.0)
        elif mask is not None and bits == 16 and int(mask.sum()) * itemsize < exact:
            tensors[f"{name}.dare"] = kept = (diff[mask] / keep).to(dtype).contiguous()
            stored = _undare(kept, mask)
        elif bits == 1 and diff.dim() == 2 and _sign_bytes(diff.shape, itemsize) < exact:
            signs, scale = _signs(diff)
            tensors[f"{name}.sign"] = signs
            tensors[f"{name}.scale"] = scale = scale.to(dtype)  # the error is of what is stored
            stored = _unsign(signs, scale, diff.shape[1])
        elif factors is not None:
            tensors[f"{name}.lowrank_u"], tensors[f"{name}.lowrank_v"] = (f.to(dtype).contiguous() for f in factors)
        elif cost >= diff.numel():
            tensors[f"{name}.delta"] = diff.to(dtype).contiguous()
        else:
            tensors[f"{name}@{axis}.index"] = idx.to(torch.int32).contiguous()
            tensors[f"{name}@{axis}.delta"] = diff.index_select(axis, idx).to(dtype).contiguous()
        if stored is not None:
            approximate.append(name)
            lost += float((stored - diff).square().sum())
            total += float(diff.square().sum())
    meta = {"format": DELTA_FORMAT, "base": base_name, "base_checksum": _checksum(base, changed),
            "changed": json.dumps(changed)}
    if keep is not None:
        meta["dare_keep"], meta["dare_seed"] = repr(float(keep)), str(int(seed))
    if approximate:
        meta["approximate"] = json.dumps(approximate)
        meta["approximation_error"] = f"{(lost / total) ** 0.5:.4f}"
    return tensors, meta


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2**32 for 0 <= x < 2**32, in int64 without overflow (c split into 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def dare_mask(name: str, shape, keep: float, seed: int) -> torch.Tensor:
    """Which entries of parameter `name` a DARE delta keeps: entry i is kept when a 32-bit hash (Wellons'
    lowbias32, a bijection) of (i + an offset from the seed and the name) falls below keep * 2**32. Pure integer
    arithmetic, so every machine regenerates the same mask."""
    offset = int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:4], "little")
    x = (torch.arange(math.prod(shape), dtype=torch.int64) + offset) & _M32
    x ^= x >> 16
    x = _mul32(x, 0x7FEB352D)
    x ^= x >> 15
    x = _mul32(x, 0x846CA68B)
    x ^= x >> 16
    return (x < int(keep * 2 ** 32)).view(*shape)


def _quantize_rows(x: torch.Tensor, dtype: torch.dtype, levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values in [-levels, levels], one step per row in `dtype`) with values * step closest to `x`; the step
    is rounded to `dtype` before the values are, so the pair is what is stored."""
    rows = x.reshape(x.shape[0], -1)
    step = (rows.abs().amax(dim=1) / levels).to(dtype)
    divisor = torch.where(step > 0, step.to(torch.float32), 1.0).unsqueeze(1)
    q = torch.round(rows / divisor).clamp_(-levels, levels).to(torch.int8)
    return q.view(x.shape), step


def _quantize_rows_2bit(x: torch.Tensor, mask: torch.Tensor,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in 0..3 standing for (code - 1.5) steps, one step per row in `dtype`) for the kept values of `x`
    (those under `mask`). Rounding to four levels at the step that errs least shrinks a row: the levels are their
    cells' means, so the rounded row's length along the row itself is short by the rounding's share of its
    energy (about 12%), the same as storing 0.88 times the change, which weakens what the change taught. So each
    row's codes are rounded at TWO_BIT_STEPS times the root mean square of its kept values, the step then set so
    that the stored row has the row's own length along it (unbiased, as DARE itself is), and of these the one that
    errs least is kept; the step is rounded to `dtype` before the error is measured, so it is what is stored."""
    rows, kept = x.reshape(x.shape[0], -1), mask.reshape(x.shape[0], -1)
    rows = rows * kept
    rms = (rows.square().sum(1) / kept.sum(1).clamp(min=1)).sqrt()
    energy = rows.square().sum(1)
    best = None
    for factor in TWO_BIT_STEPS:
        trial = rms * factor
        levels = torch.round(rows / torch.where(trial > 0, trial, 1.0).unsqueeze(1) + 1.5).clamp_(0, 3) - 1.5
        along = (levels * rows).sum(1)
        step = torch.where(along > 0, energy / torch.where(along > 0, along, 1.0), 0.0).to(dtype)
        error = ((levels * step.to(torch.float32).unsqueeze(1) - rows).square() * kept).sum(1)
        if best is None:
            best = error, step, levels
        else:
            better = error < best[0]
            best = (torch.where(better, error, best[0]), torch.where(better, step, best[1]),
                    torch.where(better.unsqueeze(1), levels, best[2]))
    return (best[2] + 1.5).to(torch.uint8).view(x.shape), best[1]


def _pack_crumbs(codes: torch.Tensor) -> torch.Tensor:
    """Codes in 0..3 four to a byte (the first in the lowest two bits); a count not divisible by four ends in
    zero codes, which the mask's count leaves unread."""
    codes = codes.to(torch.uint8)
    padded = torch.zeros((codes.numel() + 3) // 4 * 4, dtype=torch.uint8)
    padded[:codes.numel()] = codes
    return (padded[0::4] | (padded[1::4] << 2) | (padded[2::4] << 4) | (padded[3::4] << 6)).contiguous()


def _unpack_crumbs(packed: torch.Tensor, count: int) -> torch.Tensor:
    return torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1).flatten()[:count]


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Values in [-7, 7] two to a byte (value + 8 in each half, the first in the low half); an odd count ends in
    a half byte of 8 (a zero)."""
    codes = (q.to(torch.int16) + 8).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, torch.tensor([8], dtype=torch.uint8)])
    return (codes[0::2] | (codes[1::2] << 4)).contiguous()


def _unpack_nibbles(packed: torch.Tensor, count: int) -> torch.Tensor:
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:count]
    return codes.to(torch.int16) - 8


def _row_steps(step: torch.Tensor, dims: int) -> torch.Tensor:
    """A per-row step shaped to multiply a tensor of `dims` dimensions."""
    return step.to(torch.float32).view(-1, *[1] * (dims - 1))


def _undare(kept: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    change = torch.zeros(mask.shape, dtype=torch.float32)
    change[mask] = kept.to(torch.float32)
    return change


def _sign_bytes(shape: tuple[int, int], itemsize: int) -> int:
    return shape[0] * ((shape[1] + 7) // 8) + shape[0] * itemsize


_BIT_VALUES = 2 ** torch.arange(8, dtype=torch.uint8)


def _signs(diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed sign bits, rows x ceil(columns/8) uint8; each row's mean absolute change)."""
    rows, cols = diff.shape
    positive = torch.zeros(rows, (cols + 7) // 8 * 8, dtype=torch.uint8)
    positive[:, :cols] = diff > 0
    packed = (positive.view(rows, -1, 8) * _BIT_VALUES).sum(dim=2, dtype=torch.uint8)
    return packed.contiguous(), diff.abs().mean(dim=1)


def _unsign(packed: torch.Tensor, scale: torch.Tensor, cols: int) -> torch.Tensor:
    """The change a sign entry stands for: +-scale of its row, by the packed bits."""
    bits = (packed.unsqueeze(-1) & _BIT_VALUES).ne(0).flatten(1)[:, :cols]
    return torch.where(bits, 1.0, -1.0) * scale.to(torch.float32).unsqueeze(1)


def _low_rank(diff: torch.Tensor, max_rank: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(u, v) with u @ v within LOWRANK_TOLERANCE of `diff` and rank below `max_rank`, or None if there is none."""
    if max_rank < 1:
        return None
    u, s, vh = torch.linalg.svd(diff.to(torch.float64), full_matrices=False)
    energy = s.square()
    # tail[r] = energy left out by keeping the first r singular values
    tail = energy.flip(0).cumsum(0).flip(0).tolist() + [0.0]
    allowed = (LOWRANK_TOLERANCE ** 2) * float(energy.sum())
    rank = next(r for r, left in enumerate(tail) if left <= allowed)
    if rank >= max_rank:
        return None
    return (u[:, :rank] * s[:rank]).to(torch.float32), vh[:rank].to(torch.float32)


def describe_form(bits: int = 16, keep: float | None = None) -> str:
    """How a delta stores the change, in words ("" for the change as it is): one phrasing for every report."""
    if keep is not None:
        return f"a DARE delta keeping {100 * keep:g}% of entries" + (f" as {bits}-bit values" if bits != 16 else "")
    return "a 1-bit delta (signs and one magnitude per row)" if bits == 1 else ""


def save_delta(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, save(tensors, metadata=meta))
    return path


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DeltaError(f"no delta file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise DeltaError(f"{path} is not a readable delta file: {error}") from None
    if meta.get("format") not in READABLE_FORMATS:
        raise DeltaError(f"{path} is not an ssah delta file (format {meta.get('format')!r}; this version reads "
                         f"{', '.join(READABLE_FORMATS)})")
    return tensors, meta


def apply_delta(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Add the delta to `state` in place, after checking that the base is the one it was made from."""
    changed = json.loads(meta.get("changed", "[]"))
    missing = [n for n in changed if n not in state]
    if missing:
        raise DeltaError(f"the base model has no parameter {missing[0]}; this delta is for {meta.get('base')!r}")
    if _checksum(state, changed) != meta.get("base_checksum"):
        raise DeltaError(f"the base weights differ from the ones this delta was made from ({meta.get('base')!r}); "
                         "it would give a different model")
    for key, value in tensors.items():
        if key.endswith((".index", ".lowrank_v", ".scale", ".dare_scale")):
            continue
        if key.endswith((".dare", ".dare_q", ".dare_q2")):
            name = key[:key.rindex(".")]
            # values a byte: 4-bit codes two to a byte, 2-bit codes four
            per_byte = 4 if key.endswith(".dare_q2") else \
                2 if key.endswith(".dare_q") and value.dtype == torch.uint8 else 1
            mask = _dare_mask_of(name, state[name].shape, meta, value.numel(), per_byte)
            kept = int(mask.sum())
            if per_byte == 4:
                change = _undare(_unpack_crumbs(value, kept).to(torch.float32) - 1.5, mask)
            else:
                change = _undare(_unpack_nibbles(value, kept) if per_byte == 2 else value, mask)
            if key.endswith((".dare_q", ".dare_q2")):
                step = tensors.get(f"{name}.dare_scale")
                if step is None or tuple(step.shape) != (change.shape[0],):
                    raise DeltaError(f"{name} is stored as {8 // per_byte}-bit values without one step per "
                                     f"row ({change.shape[0]}); the file is damaged")
                change *= _row_steps(step, change.dim())
            state[name].add_(change.to(state[name].dtype))
            continue
        if key.endswith(".sign"):
            name = key[:-len(".sign")]
            change = _unsign(value, tensors[f"{name}.scale"], state[name].shape[1])
            state[name].add_(change.to(state[name].dtype))
            continue
        if key.endswith(".lowrank_u"):
            name = key[:-len(".lowrank_u")]
            change = value.to(torch.float32) @ tensors[f"{name}.lowrank_v"].to(torch.float32)
            state[name].add_(change.to(state[name].dtype))
            continue
        stem = key[:-len(".delta")]
        if "@" in stem:
            name, axis = stem.rsplit("@", 1)
            idx = tensors[f"{stem}.index"].to(torch.int64)
            target = state[name]
            target.index_add_(int(axis), idx, value.to(target.dtype))
        else:
            state[stem].add_(value.to(state[stem].dtype))


def _dare_mask_of(name: str, shape, meta: dict[str, str], stored: int, per_byte: int = 1) -> torch.Tensor:
    """The mask of a DARE entry holding `stored` values (bytes of `per_byte` packed codes each), regenerated
    from the metadata (checked against it)."""
    if "dare_keep" not in meta or "dare_seed" not in meta:
        raise DeltaError(f"{name} is stored as kept entries but the delta's metadata has no dare_keep and "
                         "dare_seed to regenerate them from; the file is damaged")
    mask = dare_mask(name, shape, float(meta["dare_keep"]), int(meta["dare_seed"]))
    kept = int(mask.sum())
    if (kept + per_byte - 1) // per_byte != stored:
        held = f"{stored} bytes of {8 // per_byte}-bit values" if per_byte > 1 else f"{stored} values"
        raise DeltaError(f"{name}: the delta holds {held} where its mask keeps {kept}; the file is damaged")
    return mask


def derive_folder(base: Path, delta: Path, out: Path) -> Path:
    """A model folder = the base folder (config, tokenizer) with the delta added to its weights; written to a
    temporary folder beside `out` and renamed into place, so a half-written folder is never seen."""
    from safetensors.torch import load_file, save_file

    if out.exists():
        return out
    tensors, meta = read_delta(delta)
    weights = sorted(base.glob("*.safetensors"))
    if [w.name for w in weights] != [WEIGHTS]:
        raise DeltaError(f"{base} must hold one {WEIGHTS} to derive a model from it")
    state = load_file(str(weights[0]))
    apply_delta(state, tensors, meta)
    with atomic.staged_folder(out) as staging:  # a folder another process made meanwhile is kept
        for item in base.iterdir():
            if item.is_file() and item.name != WEIGHTS:
                shutil.copy2(item, staging / item.name)
        save_file(state, str(staging / WEIGHTS), metadata={"format": "pt"})
    return out
