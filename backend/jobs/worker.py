"""A worker: one process, one device. It claims jobs from the database, runs them on the engine and reports.

Progress reaches the database from a reporter thread, at most every `progress_interval_s` (and a heartbeat at
least every `heartbeat_s`); the same write reads the job's cancel flag, and the engine's next progress callback
(once per batch) raises `Cancelled`. Imports of torch and the engine happen in the worker process only.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from backend.settings import Settings
from backend.store.db import make_engine, session_factory
from backend.store.queue import claim, finish, report
from backend.store.folders import RunFolders

log = logging.getLogger("ssah.jobs")

IDLE_WAIT_S = 1.0


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
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        """The engine's progress callback (also called by the tasks between steps)."""
        self.progress = self.plan(phase, done, total)
        self.phase = f"{phase} {done}/{total}" if total > 1 else phase
        self.check()

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
                flag = report(self.sessions, self.job_id, *state)
            except Exception:
                log.exception("could not report progress of job %s", self.job_id)
                continue
            written, last_write = state, time.monotonic()
            if flag is None:
                self.lost.set()
            elif flag:
                self.cancelled.set()


class ModelCache:
    """The last few models a worker used, keyed by (path, content hash, device, dtype)."""

    def __init__(self, size: int):
        self.size = size
        self._models: OrderedDict[tuple, object] = OrderedDict()

    def get(self, path: str, content_hash: str, device: str, dtype: str):
        from backend.engine.models import load_model

        key = (path, content_hash, device, dtype)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.size:
            self._models.popitem(last=False)
            _free_memory()
        loaded = load_model(path, device=device, dtype=dtype)
        self._models[key] = loaded
        return loaded


def _free_memory() -> None:
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


def run_job(ctx: Context, job) -> None:
    """Run one claimed job to a terminal state."""
    from . import tasks

    reporter = Reporter(ctx.sessions, job.id, ctx.settings.progress_interval_s, ctx.settings.heartbeat_s)
    try:
        with reporter:
            outcome = tasks.TASKS[job.kind](ctx, job, reporter)
    except Cancelled:
        finish(ctx.sessions, job.id, "cancelled", error="cancelled on request")
        return
    except JobLost:
        log.warning("job %s was taken from this worker; its outcome is dropped", job.id)
        return
    except Exception as error:
        log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        finish(ctx.sessions, job.id, "failed", error=tasks.describe_error(error))
        return
    if not finish(ctx.sessions, job.id, "succeeded", result=outcome.result, run_fields=outcome.run_fields):
        outcome.undo()  # the job was cancelled, failed as lost or deleted meanwhile


def main(settings: Settings, worker_id: str, device: str, wake) -> None:
    """Entry point of a worker process: take jobs until the parent process goes away."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    os.environ["SSAH_HOME"] = str(settings.home)  # the engine caches converted models and hashes there
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (imported before the first job)

    from . import tasks  # noqa: F401  (the engine and torch)

    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)

    sessions = session_factory(make_engine(settings.database_url))
    ctx = Context(settings, device, ModelCache(settings.model_cache_size), sessions, RunFolders(settings.runs_dir))
    parent = mp.parent_process()
    log.info("worker %s ready on %s", worker_id, device)
    while parent is None or parent.is_alive():
        wake.clear()
        job = claim(sessions, worker_id)
        if job is None:
            wake.wait(IDLE_WAIT_S)
            continue
        log.info("job %s (%s) started", job.id, job.kind)
        run_job(ctx, job)
        log.info("job %s done", job.id)
