"""Helpers of the service tests: settings on a tmp folder, request bodies, polling, and a served app."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.settings import Settings

API = "/api/v1"
TERMINAL = ("succeeded", "failed", "cancelled")
BIG = 3000  # pairs in big.jsonl: with batch_size 1 an attribution runs long enough to cancel or kill mid-job


@dataclass(frozen=True)
class Roots:
    models: Path  # holds the tiny model folder "llama-gqa"
    data: Path  # safety.jsonl, utility.jsonl, big.jsonl, harmful.jsonl, benign.jsonl
    model: str = "llama-gqa"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    return path


def settings_in(folder: Path, roots: Roots, **overrides) -> Settings:
    """A service whose database (a real SQLite file) and results live in `folder`, with one CPU worker."""
    values = dict(home=folder / "home", database_url=f"sqlite:///{folder / 'ssah.db'}", results_dir=folder / "runs",
                  devices=["cpu"], dtype="float32", model_roots=[roots.models], data_roots=[roots.data],
                  progress_interval_s=0.05, heartbeat_s=0.5, preload_engine=False, worker_threads=1)
    return Settings(**(values | overrides))


@contextmanager
def serve(settings: Settings, **kwargs) -> Iterator[TestClient]:
    """The app with its runner started (and stopped on leaving)."""
    with TestClient(create_app(settings, **kwargs)) as client:
        yield client


def run_body(roots: Roots, **fields) -> dict:
    """A small attribution of the tiny model on the 12-pair calibration files."""
    return {"model": roots.model, "safety": "safety.jsonl", "utility": "utility.jsonl", "samples": 12,
            "batch_size": 4} | fields


def slow_body(roots: Roots, **fields) -> dict:
    """An attribution of a few thousand single-pair batches: many seconds, with a progress report per batch."""
    return run_body(roots, safety="big.jsonl", utility="big.jsonl", samples=BIG, batch_size=1) | fields


def wait(client: TestClient, path: str, *, until: tuple[str, ...] = TERMINAL, timeout: float = 120,
         check: Callable[[dict], bool] | None = None, headers: dict | None = None) -> dict:
    """Poll `path` until its status is in `until` (or `check` holds); returns the last body."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(path, headers=headers).json()
        if check(body) if check else body["status"] in until:
            return body
        assert time.monotonic() < deadline, f"{path} still {body.get('status')} ({body.get('phase')}) after {timeout} s"
        time.sleep(0.05)


def bad_fields(response) -> list[str]:
    """The dotted field names a 422 names, e.g. ['body.thresholds.h_ru']."""
    assert response.status_code == 422, (response.status_code, response.text)
    return [".".join(map(str, d["loc"])) for d in response.json()["detail"]]
