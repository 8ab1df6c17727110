"""Pairs as the model reads them: the chat template applied to the prompt, the response after it, tokenised in two
parts so that the boundary (which tokens count as response) is exact."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backend.constants import POSITIONS

from .data import Pair
from .errors import DataError


@dataclass(frozen=True)
class EncodedPair:
    input_ids: tuple[int, ...]
    prompt_len: int  # response tokens are input_ids[prompt_len:]

    @property
    def response_len(self) -> int:
        """Number of response tokens; 0 for an empty response (such a pair counts nothing under positions=response)."""
        return len(self.input_ids) - self.prompt_len




def pair_text(tokenizer, pair: Pair) -> tuple[str, str]:
    """The prompt part and the response part of a pair, as text (the fixed contract of the CLI)."""
    if not tokenizer.chat_template:
        return pair.prompt, pair.response
    user = {"role": "user", "content": pair.prompt}
    prompt = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    if pair.response == "":
        return prompt, ""
    return prompt, pair.response + _end_of_turn(tokenizer, user, prompt, pair.response)


def _end_of_turn(tokenizer, user: dict, prompt: str, response: str) -> str:
    """What the template writes after an assistant reply (e.g. "<|im_end|>\\n"), else the eos token."""
    from jinja2 import TemplateError

    assistant = {"role": "assistant", "content": response}
    try:
        full = tokenizer.apply_chat_template([user, assistant], tokenize=False)
    except TemplateError:
        full = ""
    if full.startswith(prompt) and full[len(prompt) :].startswith(response):
        return full[len(prompt) + len(response) :]
    return tokenizer.eos_token or ""


def plain_text_rows(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text as plain text (no chat template): a start-of-document token (BOS, else EOS), then its tokens."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [[start, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]


def encode_pairs(
    tokenizer, pairs: Sequence[Pair], *, max_length: int | None = None, source: str = ""
) -> list[EncodedPair]:
    """Tokenise each pair as prompt part + response part, tokenised separately so the boundary is exact.

    A pair longer than `max_length` tokens is refused, never cut.
    """
    if max_length is not None and max_length < 2:
        raise DataError(f"max_length must be at least 2 tokens, got {max_length}")
    texts = [pair_text(tokenizer, pair) for pair in pairs]
    if not texts:
        return []
    templated = bool(tokenizer.chat_template)
    prompt_ids = tokenizer([p for p, _ in texts], add_special_tokens=not templated)["input_ids"]
    response_ids = tokenizer([r for _, r in texts], add_special_tokens=False)["input_ids"]
    encoded = [EncodedPair(tuple(p) + tuple(r), len(p)) for p, r in zip(prompt_ids, response_ids)]
    if max_length is not None:
        _refuse_long_rows(encoded, max_length, source)
    return encoded


def _refuse_long_rows(encoded: Sequence[EncodedPair], max_length: int, source: str) -> None:
    """Raise a DataError naming the first row over `max_length` tokens and how many rows are over."""
    too_long = [(row, len(e.input_ids)) for row, e in enumerate(encoded, start=1) if len(e.input_ids) > max_length]
    if not too_long:
        return
    row, length = too_long[0]
    others = f" ({len(too_long)} rows are over the limit)" if len(too_long) > 1 else ""
    raise DataError(
        f"{source or 'calibration set'}: row {row} is {length} tokens long, over the limit of {max_length}{others}; "
        "rows are refused, not cut; raise --max-length or shorten the row"
    )


def count_mask(encoded: EncodedPair, positions: str) -> list[bool]:
    """Which tokens count for the statistics: "response" (after the prompt part), "prompt", or "all"."""
    n, k = len(encoded.input_ids), encoded.prompt_len
    if positions == "response":
        return [i >= k for i in range(n)]
    if positions == "prompt":
        return [i < k for i in range(n)]
    if positions == "all":
        return [True] * n
    raise DataError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
