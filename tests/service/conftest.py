"""Fixtures of the service tests: a tiny model inside a model root, calibration files inside a data root, and
apps on a real SQLite file with a real spawned worker (or none, where no job has to run).

The root conftest's fixtures (`tiny_model_path`, `safety_pairs`, `utility_pairs`, the temporary SSAH_HOME) are
reused; helpers live in servicekit.py.
"""
from __future__ import annotations

import pytest
from servicekit import BIG, Roots, write_jsonl


@pytest.fixture(scope="session")
def roots(tiny_model_path, safety_pairs, utility_pairs, tmp_path_factory) -> Roots:
    model = tiny_model_path("llama-gqa")
    data = tmp_path_factory.mktemp("data-root")
    write_jsonl(data / "safety.jsonl", [(p.prompt, p.response) for p in safety_pairs])
    write_jsonl(data / "utility.jsonl", [(p.prompt, p.response) for p in utility_pairs])
    pairs = [(p.prompt, p.response) for p in [*safety_pairs, *utility_pairs]]
    write_jsonl(data / "big.jsonl", [(f"{i}. {pairs[i % len(pairs)][0]}", pairs[i % len(pairs)][1])
                                     for i in range(BIG)])
    write_jsonl(data / "harmful.jsonl", [(p.prompt, "") for p in safety_pairs[:3]])
    write_jsonl(data / "benign.jsonl", [(p.prompt, "") for p in utility_pairs[:3]])
    return Roots(model.parent, data)
