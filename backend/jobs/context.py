"""What a running job has: its Context (settings, device, model cache, stores), a Reporter that writes its progress
and reads its cancel flag, and the exceptions that stop it."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backend.settings import Settings
from backend.store.folders import RunFolders
from backend.store.queue import report
from backend.verbs import Models

log = logging.getLogger("ssah.jobs")


class Cancelled(Exception):
    """Raised from a progress callback when the job's cancel flag is set."""


class JobLost(Exception):
    """The job is no longer this worker's (failed as lost, or its run was deleted): stop without reporting."""


class PhasePlan:
    """Overall progress 0..1 from the engine's (phase, done, total) reports. Each step of the plan is a phase
    prefix and its weight; progress never goes back."""

    def __init__(self, steps: Sequence[tuple[str, float]]):
        self.steps = [(prefix, float(weight)) for prefix, weight in steps]
        self.total = sum(w for _, w in self.steps) or 1.0
        self.progress = 0.0

    def __call__(self, phase: str, done: int, total: int) -> float:
        before = 0.0
        for prefix, weight in self.steps:
            if phase.startswith(prefix):
                fraction = min(1.0, done / total) if total else 1.0
                self.progress = max(self.progress, (before + weight * fraction) / self.total)
                break
            before += weight
        return self.progress


@dataclass
class Reporter:
    """Holds a running job's progress; a thread writes it to the database and reads the cancel flag."""

    sessions: object
    job_id: str
    interval_s: float
    heartbeat_s: float
    plan: PhasePlan = field(default_factory=lambda: PhasePlan([]))
    phase: str = "starting"
    progress: float = 0.0
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    pause_at: str = ""  # fault injection (SSAH_PAUSE_AT): wait at the first phase that starts with this
    release: Path | None = None  # ... until this file exists, the job is cancelled or its worker dies
    worker_id: str | None = None  # reports count only while the job is still this worker's
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        """The engine's progress callback (also called by the tasks between steps)."""
        self.progress = self.plan(phase, done, total)
        self.phase = f"{phase} {done}/{total}" if total > 1 else phase
        self.check()
        if self.pause_at and phase.startswith(self.pause_at):
            self.pause_at = ""  # once per job
            self._pause()

    def _pause(self) -> None:
        """Hold the job here, saying so in its phase, until it is released (the file `release` appears) or cancelled:
        a deterministic point for drills and tests to kill a worker or cancel a job mid-run."""
        held = self.phase
        self.phase = f"paused at {held} (SSAH_PAUSE_AT)"
        while self.release is None or not self.release.exists():
            self.check()
            time.sleep(0.02)
        self.phase = held

    def set_plan(self, steps: Sequence[tuple[str, float]]) -> None:
        self.plan = PhasePlan(steps)

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost(self.job_id)
        if self.cancelled.is_set():
            raise Cancelled(self.job_id)

    def __enter__(self) -> Reporter:
        self._thread = threading.Thread(target=self._loop, name=f"report-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        written, last_write = None, 0.0
        while not self._stop.wait(self.interval_s):
            state = (round(self.progress, 4), self.phase)
            if state == written and time.monotonic() - last_write < self.heartbeat_s:
                continue
            try:
                flag = report(self.sessions, self.job_id, *state, worker_id=self.worker_id)
            except Exception:
                log.exception("could not report progress of job %s", self.job_id)
                continue
            written, last_write = state, time.monotonic()
            if flag is None:
                self.lost.set()
            elif flag:
                self.cancelled.set()


class ModelCache(Models):
    """The models a verb asks for (`backend.verbs.Models`), the last few kept loaded, keyed by (spec, content hash,
    device, dtype): a model whose files changed is loaded again. A fresh copy for training is never cached."""

    def __init__(self, size: int):
        self.size = size
        self._models: OrderedDict[tuple, object] = OrderedDict()

    def get(self, spec: str, *, device: str = "auto", dtype: str = "auto"):
        from backend.engine.models import load_model, model_hash

        key = (spec, model_hash(spec), device, dtype)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.size:
            self._models.popitem(last=False)
            free_memory()
        loaded = load_model(spec, device=device, dtype=dtype)
        self._models[key] = loaded
        return loaded


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Context:
    """What a task may use: the service settings, this worker's device, its model cache and the stores."""

    settings: Settings
    device: str
    models: ModelCache
    sessions: object
    folders: RunFolders
