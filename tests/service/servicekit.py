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
BIG = 200  # pairs in big.jsonl: with batch_size 1 an attribution reports its progress many times
PAUSE_AT = "forward"  # a service made with pause_at=PAUSE_AT holds every job at its first forward batch


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


def wait_paused(client: TestClient, path: str, timeout: float = 300) -> dict:
    """Wait for the explicit signal that a job is held mid-run (its phase says `paused at ...`): from then on it
    cannot finish before the test kills its worker or cancels it."""
    return wait(client, path, timeout=timeout, check=lambda b: b["phase"].startswith("paused at"))


def release(settings: Settings, job_id: str) -> None:
    """Let a job held at SSAH_PAUSE_AT go on (before or after it got there)."""
    (settings.home / "release").mkdir(parents=True, exist_ok=True)
    (settings.home / "release" / job_id).touch()


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
