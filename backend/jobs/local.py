"""The local runner: one worker process per device (started with spawn, so CUDA is safe), watched by a
supervisor thread in the API process that fails the job of a worker that died and starts a new worker."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from backend.api.settings import Settings
from backend.store.db import make_engine, session_factory
from backend.store.queue import fail_running
from backend.store.results import Results

from . import worker
from .runner import recover_lost_jobs

log = logging.getLogger("ssah.jobs")

SUPERVISE_EVERY_S = 0.5
SWEEP_EVERY_S = 10.0
QUICK_DEATH_S = 10.0  # a worker that dies this soon after starting is restarted with a growing delay


def describe_exit(exitcode: int | None) -> str:
    """'was killed by signal SIGKILL (9)', 'exited with code 1', ..."""
    if exitcode is None:
        return "stopped"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by signal {name} ({-exitcode})"
    return f"exited with code {exitcode}"


@dataclass
class Slot:
    """One device and the worker process that currently serves it."""

    device: str
    index: int
    process: mp.process.BaseProcess | None = None
    worker_id: str = ""
    wake: object = None
    started_at: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    next_start: float = 0.0


class LocalRunner:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.context = mp.get_context("spawn")
        self.sessions = session_factory(make_engine(settings.database_url))
        self.results = Results(settings.runs_dir)
        self.slots = [Slot(device, i) for i, device in enumerate(settings.devices)]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- the Runner interface -----------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for slot in self.slots:
                self._spawn(slot)
        self._thread = threading.Thread(target=self._supervise, name="ssah-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for slot in self.slots:
                process = slot.process
                if process is None:
                    continue
                if process.is_alive():
                    process.terminate()
                    process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
                fail_running(self.sessions, "the service stopped while this job was running",
                             worker_id=slot.worker_id)
                slot.process, slot.wake = None, None  # releases the event's semaphores now, not at exit

    def notify(self) -> None:
        for slot in self.slots:
            if slot.wake is not None:
                slot.wake.set()

    def cancel(self, job_id: str) -> None:
        pass  # the worker reads the job's cancel flag every progress_interval_s

    def health(self) -> dict:
        with self._lock:
            workers = [{"device": s.device, "worker_id": s.worker_id,
                        "pid": s.process.pid if s.process else None,
                        "alive": bool(s.process and s.process.is_alive()), "restarts": s.restarts}
                       for s in self.slots]
        return {"runner": "local", "workers": workers}

    # -- supervision --------------------------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        slot.worker_id = f"{self._instance}:{slot.device}:{slot.index}:{slot.restarts}"
        slot.wake = self.context.Event()
        slot.process = self.context.Process(
            target=worker.main, args=(self.settings, slot.worker_id, slot.device, slot.wake),
            name=f"ssah-worker-{slot.device}-{slot.index}", daemon=True)
        slot.process.start()
        slot.started_at = time.monotonic()
        log.info("started worker %s (pid %s)", slot.worker_id, slot.process.pid)

    def _supervise(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            try:
                with self._lock:
                    for slot in self.slots:
                        self._check(slot)
                if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                    recover_lost_jobs(self.sessions, self.results, self.settings.lost_after_s)
                    last_sweep = time.monotonic()
            except Exception:  # the supervisor must outlive a database hiccup
                log.exception("supervisor check failed; trying again")

    def _check(self, slot: Slot) -> None:
        process = slot.process
        if process is None or process.is_alive() or self._stopping.is_set():
            if process is None and time.monotonic() >= slot.next_start:
                self._spawn(slot)
            return
        process.join(timeout=1)
        how = describe_exit(process.exitcode)
        # A worker that dies takes its job with it; it is not retried: what killed it (often running out of
        # memory) would most likely kill the next attempt too. The reason names the signal; resubmit to retry.
        failed = fail_running(self.sessions, f"the worker process {how} while running this job",
                              worker_id=slot.worker_id)
        self.results.clean_partials({job.run_id for job in failed if job.run_id})
        log.warning("worker %s %s; failed jobs: %s", slot.worker_id, how, [j.id for j in failed] or "none")
        quick = not failed and time.monotonic() - slot.started_at < QUICK_DEATH_S  # a crash loop, not a bad job
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
        slot.restarts += 1
        slot.process = None
        slot.next_start = time.monotonic() + (min(60.0, 2.0 ** slot.quick_deaths) if quick else 0.0)
        if time.monotonic() >= slot.next_start:
            self._spawn(slot)
