"""Fine-tuning with frozen units, and the alignment budget (SSAH, Li & Kim 2410.10862, DESIGN.md step 7).

Freezing keeps the entries a unit owns (its A rows and B columns, and GQA keys/values it reads) bit-identical
while everything else trains; the alignment budget is the inverse: only the entries of one group (e.g. RU) train
and every other parameter, embeddings and norms included, stays as it was. The loss is next-token cross-entropy
on response tokens only.
"""
from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.engine.chat import EncodedPair, count_mask, encode_pairs, plain_text_rows
from backend.engine.data import DataError, Pair
from backend.engine.interventions import InterventionError
from backend.engine.masks import check_masks, count_trainable
from backend.engine.models import LoadedModel, save_folder
from backend.engine.scoring import Progress, pad_batch

IGNORE = -100  # label of tokens that do not count (prompt and padding)


@dataclass(frozen=True)
class FinetuneConfig:
    """Plain AdamW on response tokens. `warmup_steps`: linear warm-up, then constant lr. Weight decay is
    decoupled and applied only to trainable entries of matrices (not biases or norms, as the HF Trainer does)."""

    steps: int
    lr: float = 1e-4
    batch_size: int = 8
    weight_decay: float = 0.0
    max_length: int | None = None  # default: the model's context size; longer pairs are refused, not cut
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    seed: int = 0
    stop_at_loss: float | None = None  # stop early once the mean loss of the last `loss_window` steps is this low
    loss_window: int = 10

    def __post_init__(self):
        def bad(name: str, rule: str):
            raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if not isinstance(self.steps, int) or self.steps < 1:
            bad("steps", "an integer of at least 1")
        if not _finite(self.lr) or self.lr <= 0:
            bad("lr", "a positive number")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad("batch_size", "an integer of at least 1")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            bad("weight_decay", "a number of at least 0")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 2):
            bad("max_length", "an integer of at least 2")
        if self.max_grad_norm is not None and (not _finite(self.max_grad_norm) or self.max_grad_norm <= 0):
            bad("max_grad_norm", "a positive number or None")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            bad("warmup_steps", "an integer of at least 0")
        if self.stop_at_loss is not None and not _finite(self.stop_at_loss):
            bad("stop_at_loss", "a number or None")
        if not isinstance(self.loss_window, int) or self.loss_window < 1:
            bad("loss_window", "an integer of at least 1")

    def as_dict(self) -> dict:
        return asdict(self)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------------------------
# Training


def _encode(loaded: LoadedModel, pairs: Sequence[Pair], max_length: int | None) -> tuple[list[EncodedPair], list[int]]:
    """Encoded pairs with at least one response token, and the positions in `pairs` of those kept."""
    if not pairs:
        raise DataError("the fine-tuning set is empty; it needs prompt/response pairs")
    if max_length is None:
        max_length = getattr(loaded.model.config, "max_position_embeddings", None)
    encoded = encode_pairs(loaded.tokenizer, pairs, max_length=max_length, source="fine-tuning set")
    rows = [i for i, e in enumerate(encoded) if e.response_len > 0]
    if not rows:
        raise DataError("no pair of the fine-tuning set has a response token to learn; check the responses")
    return [encoded[i] for i in rows], rows


def _batch(loaded: LoadedModel, rows: Sequence[EncodedPair]):
    pad_id = loaded.tokenizer.pad_token_id
    ids, attention, positions, counted = pad_batch(
        [e.input_ids for e in rows], [count_mask(e, "response") for e in rows], 0 if pad_id is None else pad_id,
        "right", loaded.device)
    return ids, attention, positions, ids.masked_fill(~counted, IGNORE)


def _token_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL divergence from the target's next-token distributions to the model's, one value per row of logits."""
    student = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(student, F.log_softmax(target.float(), dim=-1), log_target=True, reduction="none").sum(-1)


def _response_loss(model, ids, attention, positions, labels, reduction: str = "mean",
                   teacher: torch.nn.Module | None = None, distilled: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (response) tokens: logits at t predict the token at t + 1. With a
    `teacher`, the KL divergence from the teacher's next-token distribution on those same positions instead
    (distillation: the student learns how sure the teacher is of each token, not only which one it chose); with
    `distilled` too (one bool per row), only those rows are distilled and the others keep the cross-entropy."""
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False).logits
    if teacher is None:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                               reduction=reduction)
    rows = torch.ones(len(ids), dtype=torch.bool) if distilled is None else distilled.to(torch.bool).cpu()
    scored = labels[:, 1:] != IGNORE
    per_token = torch.zeros(scored.shape, dtype=torch.float32, device=logits.device)
    if not rows.all():  # the rows not distilled learn their tokens
        plain = (~rows).to(ids.device)
        per_token[plain] = F.cross_entropy(logits[plain, :-1].transpose(1, 2).float(), labels[plain, 1:],
                                           ignore_index=IGNORE, reduction="none")
    if rows.any():
        taught = rows.to(ids.device)
        with torch.no_grad():
            target = teacher(input_ids=ids[taught], attention_mask=attention[taught], position_ids=positions[taught],
                             use_cache=False).logits
        where = scored & taught.unsqueeze(1)  # only the response tokens of the distilled rows
        per_token[where] = _token_kl(logits[:, :-1][where], target[:, :-1][scored[taught]])
    total = per_token[scored].sum()
    return total if reduction == "sum" else total / scored.sum()


@torch.no_grad()
def response_loss(loaded: LoadedModel, pairs: Sequence[Pair], *, batch_size: int = 8,
                  max_length: int | None = None) -> float:
    """Mean cross-entropy per response token over `pairs` (eval mode, no dropout), e.g. before and after training."""
    encoded, _ = _encode(loaded, pairs, max_length)
    was_training = loaded.model.training
    loaded.model.eval()
    total, tokens = 0.0, 0
    try:
        for i in range(0, len(encoded), batch_size):
            ids, attention, positions, labels = _batch(loaded, encoded[i:i + batch_size])
            total += float(_response_loss(loaded.model, ids, attention, positions, labels, reduction="sum"))
            tokens += int((labels[:, 1:] != IGNORE).sum())
    finally:
        loaded.model.train(was_training)
    return total / tokens


def _batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Seeded batches: pass after pass over a fresh permutation, `batch_size` samples at a time (at most n)."""
    rng = random.Random(seed)
    size = min(batch_size, n)
    stream: list[int] = []
    out = []
    for _ in range(steps):
        while len(stream) < size:
            order = list(range(n))
            rng.shuffle(order)
            stream += order
        out.append(stream[:size])
        stream = stream[size:]
    return out


class _Frozen:
    """Keeps frozen entries bit-identical: zeroed gradients, no decay, and restored after every step."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor] | None):
        self.params = dict(model.named_parameters())
        self.flags = {name: p.requires_grad for name, p in self.params.items()}
        self.partial: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (frozen mask, saved values)
        self.hooks = []
        for name, p in self.params.items():
            m = None if masks is None else masks[name].to(p.device)
            if m is None or (m.dim() == 0 and bool(m)):
                p.requires_grad_(True)
            elif m.dim() == 0:
                p.requires_grad_(False)
            else:
                frozen = ~m
                self.partial[name] = frozen, p.detach()[frozen].clone()
                p.requires_grad_(True)
                self.hooks.append(p.register_hook(lambda g, frozen=frozen: g.masked_fill(frozen, 0)))

    @property
    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.params.items() if p.requires_grad]

    @torch.no_grad()
    def decay(self, lr: float, weight_decay: float) -> None:
        """Decoupled weight decay (AdamW's p -= lr * wd * p) on trainable entries of matrices only."""
        if weight_decay == 0:
            return
        for name, p in self.trainable:
            if p.dim() < 2:
                continue
            if name in self.partial:
                p.mul_(torch.where(self.partial[name][0], 1.0, 1 - lr * weight_decay).to(p.dtype))
            else:
                p.mul_(1 - lr * weight_decay)

    @torch.no_grad()
    def restore(self) -> None:
        for name, (frozen, saved) in self.partial.items():
            self.params[name].masked_scatter_(frozen, saved)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        for name, p in self.params.items():
            p.requires_grad_(self.flags[name])


def _anchor_rows(loaded: LoadedModel, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Plain texts as token rows after a start-of-document token (as knowledge is read), cut to `max_length`."""
    if max_length is None:
        max_length = getattr(loaded.model.config, "max_position_embeddings", None)
    return [r[:max_length] for r in plain_text_rows(loaded.tokenizer, texts) if len(r) > 1]


def _anchor_kl(model, reference: torch.nn.Module, rows: Sequence[Sequence[int]], pad_id: int,
               device: torch.device) -> torch.Tensor:
    """Mean KL divergence per token from `reference`'s next-token distributions to the model's, on plain text."""
    ids, attention, positions, counted = pad_batch(rows, [[True] * len(r) for r in rows], pad_id, "right", device)
    where = counted[:, 1:]  # logits at t predict the token at t + 1: positions with a real next token
    with torch.no_grad():
        target = reference(input_ids=ids, attention_mask=attention, position_ids=positions,
                           use_cache=False).logits[:, :-1][where]
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False).logits
    return _token_kl(logits[:, :-1][where], target).mean()


def finetune(loaded: LoadedModel, pairs: Sequence[Pair], masks: dict[str, torch.Tensor] | None,
             config: FinetuneConfig, *, progress: Progress | None = None,
             teacher: torch.nn.Module | None = None, distil: Sequence[bool] | None = None,
             anchor: tuple[torch.nn.Module, Sequence[str], float] | None = None) -> dict:
    """Train `loaded.model` in place on response tokens, only where `masks` is True (None: full fine-tuning).
    With a `teacher` (a model of the same vocabulary, on the same device) the loss is the KL divergence from its
    next-token distributions on the response tokens instead of the cross-entropy of the tokens themselves; with
    `distil` (one bool per pair) only the pairs marked True are distilled, the others learn their tokens.
    `anchor` (reference model, plain texts, weight) adds weight x the KL divergence from the reference's
    next-token distributions on a batch of those texts (no chat template) at every step: language modelling
    outside the chat format is held where the reference has it while the chat replies are learnt.

    Trains in train mode (dropout as the config sets it, seeded) and hands the model back in its old mode.
    Returns a log: loss per step, lr per step, trainable and frozen parameter entries, tokens, seconds.
    The same seed, data and masks give the same weights (on CPU; CUDA kernels may add float noise).
    """
    t0 = time.perf_counter()
    model = loaded.model
    dtype = next(model.parameters()).dtype
    if dtype in (torch.float16, torch.bfloat16):
        warnings.warn(f"fine-tuning {dtype} weights in place: AdamW steps smaller than the format's resolution "
                      "are lost; load the model in float32 to fine-tune", stacklevel=2)
    if masks is not None:
        check_masks(model, masks)
    trainable_count, frozen_count = count_trainable(model, masks)
    if trainable_count == 0:
        raise InterventionError("nothing to train: the masks freeze every parameter (is the group empty?)")
    if teacher is not None:
        vocab = (teacher.get_output_embeddings().weight.shape[0], model.get_output_embeddings().weight.shape[0])
        if vocab[0] != vocab[1]:
            raise InterventionError(f"the teacher's vocabulary has {vocab[0]} tokens and the model's {vocab[1]}; "
                                    "distillation needs the same tokenizer")
        teacher.eval()
    if distil is not None and (teacher is None or len(distil) != len(pairs)):
        raise ValueError("distil marks pairs for a teacher: give a teacher and one flag per pair "
                         f"({len(pairs)} pairs, {len(distil)} flags)")
    encoded, rows = _encode(loaded, pairs, config.max_length)
    skipped = len(pairs) - len(rows)
    flags = None if distil is None else torch.tensor([bool(distil[i]) for i in rows])
    plan = _batch_order(len(encoded), config.batch_size, config.steps, config.seed)
    anchor_rows, anchor_plan, anchor_losses = [], [], []
    if anchor is not None:
        reference, texts, anchor_weight = anchor
        if not (math.isfinite(anchor_weight) and anchor_weight > 0):
            raise ValueError(f"the anchor's weight must be a positive number, got {anchor_weight}")
        anchor_rows = _anchor_rows(loaded, texts, config.max_length)
        if not anchor_rows:
            raise DataError("no anchor text has a token to hold; give plain texts")
        reference.eval()
        anchor_plan = _batch_order(len(anchor_rows), config.batch_size, config.steps, config.seed + 1)
        pad_id = 0 if loaded.tokenizer.pad_token_id is None else loaded.tokenizer.pad_token_id

    frozen = _Frozen(model, masks)
    was_training = model.training
    devices = [loaded.device] if loaded.device.type == "cuda" else []
    losses, lrs, tokens = [], [], 0
    try:
        with torch.random.fork_rng(devices=devices):  # dropout is seeded without touching the caller's RNG
            torch.manual_seed(config.seed)
            optimizer = torch.optim.AdamW([p for _, p in frozen.trainable], lr=config.lr, weight_decay=0.0)
            model.train()
            for step, idx in enumerate(plan):
                lr = config.lr * min(1.0, (step + 1) / (config.warmup_steps + 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                ids, attention, positions, labels = _batch(loaded, [encoded[i] for i in idx])
                loss = _response_loss(model, ids, attention, positions, labels, teacher=teacher,
                                      distilled=None if flags is None else flags[idx])
                if anchor_rows:
                    held = _anchor_kl(model, reference, [anchor_rows[i] for i in anchor_plan[step]], pad_id,
                                      loaded.device)
                    anchor_losses.append(float(held.detach()))
                    loss = loss + anchor_weight * held
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_([p for _, p in frozen.trainable], config.max_grad_norm)
                frozen.decay(lr, config.weight_decay)
                optimizer.step()
                frozen.restore()
                losses.append(float(loss.detach()))
                lrs.append(lr)
                tokens += int((labels[:, 1:] != IGNORE).sum())
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(f"the loss became {losses[-1]} at step {step + 1}; lower lr")
                if progress:
                    progress("fine-tuning", step + 1, config.steps)
                if config.stop_at_loss is not None and len(losses) >= config.loss_window and \
                        sum(losses[-config.loss_window:]) / config.loss_window <= config.stop_at_loss:
                    break  # trained as far as the loss asked for
    finally:
        frozen.close()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return {"config": config.as_dict(), "loss": losses, "lr": lrs, "steps": len(losses),
            "final_loss": sum(losses[-config.loss_window:]) / len(losses[-config.loss_window:]),
            "trainable_params": trainable_count, "frozen_params": frozen_count,
            "trainable_fraction": trainable_count / (trainable_count + frozen_count),
            "dtype": str(dtype).removeprefix("torch."), "samples": len(encoded), "skipped_empty": skipped, "tokens": tokens,
            "loss_kind": ("cross-entropy" if teacher is None else "KL from the teacher" if flags is None else
                          f"KL from the teacher on {int(flags.sum())} of {len(flags)} pairs, cross-entropy on the rest"),
            **({"anchor": {"weight": anchor_weight, "texts": len(anchor_rows), "kl": anchor_losses}}
               if anchor_rows else {}),
            "seconds": round(time.perf_counter() - t0, 3)}


# ----------------------------------------------------------------------------------------------------------------
# Saving


def save_model(loaded: LoadedModel, out: str | Path) -> Path:
    """Save the (fine-tuned) model and its tokenizer as a plain Hugging Face safetensors folder, atomically:
    `out` is either the old folder or the complete new one, never half written."""
    return save_folder(loaded.model, loaded.tokenizer, out)


