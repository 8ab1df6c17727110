"""Batched greedy generation with the chat template (left padding, KV cache)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import Pair, encode_pairs
from .models import LoadedModel
from .scoring import Progress, batches, pad_batch


@torch.no_grad()
def generate(loaded: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int = 64, batch_size: int = 8,
             progress: Progress | None = None, phase: str = "generating") -> list[str]:
    """Greedy replies to each prompt, in the order given."""
    tokenizer = loaded.tokenizer
    encoded = encode_pairs(tokenizer, [Pair(p, "") for p in prompts])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    replies: list[str] = [""] * len(prompts)
    plan = batches(encoded, batch_size)
    for step, idx in enumerate(plan):
        rows = [encoded[i].input_ids[:encoded[i].prompt_len] for i in idx]
        ids, attention, _, _ = pad_batch(rows, [[True] * len(r) for r in rows], pad_id, "left", loaded.device)
        out = loaded.model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad_id)
        for i, row in zip(idx, out[:, ids.shape[1]:]):
            replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        if progress:
            progress(phase, step + 1, len(plan))
    return replies
