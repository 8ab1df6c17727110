"""Fixtures of the service tests: a tiny model inside a model root, calibration files inside a data root, and
apps on a real SQLite file with a real spawned worker (or none, where no job has to run).

The root conftest's fixtures (`tiny_model_path`, `safety_pairs`, `utility_pairs`, the temporary SSAH_HOME) are
reused; helpers live in servicekit.py.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servicekit import BIG, Roots, fresh_postgres, write_jsonl


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


POSTGRES_URL = os.environ.get("SSAH_TEST_POSTGRES_URL", "")
NO_POSTGRES = ("no PostgreSQL to test against: set SSAH_TEST_POSTGRES_URL (e.g. postgresql+psycopg://USER@HOST/DB; "
               ".ci/run starts one and sets it)")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> Iterator[str]:
    """The service's database, once on a SQLite file and once on a fresh PostgreSQL database (a reported skip when
    SSAH_TEST_POSTGRES_URL is not set)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ssah.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    with fresh_postgres(POSTGRES_URL) as url:
        yield url
