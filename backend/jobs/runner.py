"""Where queued jobs run.

The database is the queue. The API writes a queued job and calls `notify()`; a runner's workers take jobs with
`store.queue.claim` (one guarded UPDATE, so any number of workers on any number of machines can share it), report
progress and heartbeats with `store.queue.report`, and end them with `store.queue.finish`; `backend.jobs.worker`
does all of that for one device, in a local worker process (`local.LocalRunner`) or in a Ray actor
(`ray_runner.RayRunner`). A cancel is a flag in the job row that the worker reads while it reports progress, so
`cancel()` only has to hurry things up.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy.orm import Session, sessionmaker

from backend.settings import Settings
from backend.store.db import make_engine, session_factory
from backend.store.folders import RunFolders
from backend.store.queue import lose_running
from backend.store.tables import utcnow

log = logging.getLogger("ssah.jobs")

SUPERVISE_EVERY_S = 0.5
SWEEP_EVERY_S = 10.0
QUICK_DEATH_S = 10.0  # a worker that dies this soon after starting is restarted with a growing delay


@runtime_checkable
class Runner(Protocol):
    """The interface the API uses; `LocalRunner`, `RayRunner` and `NullRunner` implement it."""

    def start(self) -> None:
        """Start the workers (called once, when the API starts)."""

    def stop(self) -> None:
        """Stop the workers; jobs they were running are failed with a reason."""

    def notify(self) -> None:
        """A job was queued: wake an idle worker."""

    def cancel(self, job_id: str) -> None:
        """A cancel was asked for (the job row's flag is already set)."""

    def health(self) -> dict:
        """What the runner has: workers, their devices and whether they are alive."""


class NullRunner:
    """Enqueue only: for an API whose workers run elsewhere (and for tests of the API alone)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def notify(self) -> None:
        pass

    def cancel(self, job_id: str) -> None:
        pass

    def health(self) -> dict:
        return {"runner": "none", "workers": []}


@dataclass
class WorkerSlot:
    """One place for a worker, and the supervisor's record of it: the worker that fills it now, when it started,
    and how often it was restarted (quick deaths push `next_start` later). Each runner adds how it holds one."""

    index: int
    worker_id: str = ""
    started_at: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    next_start: float = 0.0


class SupervisedRunner:
    """What the local and Ray runners share: slots of workers watched by a supervisor thread, which restarts a
    worker that died (later and later while it keeps dying at once), fails the job it took with it, and sweeps
    for jobs whose worker stopped sending heartbeats. A subclass starts a slot's worker (`_spawn`), looks at one
    (`_check`, which calls `_restart` when it died) and stops one (`_halt`: true when there was one)."""

    thread_name = "ssah-supervisor"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.sessions = session_factory(make_engine(settings.database_url))
        self.folders = RunFolders(settings.runs_dir)
        self.slots: list[WorkerSlot] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _spawn(self, slot) -> None:
        raise NotImplementedError

    def _check(self, slot) -> None:
        raise NotImplementedError

    def _halt(self, slot) -> bool:
        raise NotImplementedError

    def _on_sweep(self) -> None:
        """Called by the supervisor after each sweep for lost jobs."""

    def start(self) -> None:
        """Start a worker in every slot, and the supervisor."""
        with self._lock:
            for slot in self.slots:
                self._spawn(slot)
        self._thread = threading.Thread(target=self._supervise, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for slot in self.slots:
                if self._halt(slot):  # stopped first, so it claims nothing after this
                    lost = lose_running(self.sessions, "the service stopped while this job was running",
                                        retries=self.settings.max_retries, worker_id=slot.worker_id)
                    self.folders.clean_partials({job.run_id for job, _ in lost if job.run_id})

    def _supervise(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            try:
                with self._lock:
                    for slot in self.slots:
                        self._check(slot)
                if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                    recover_lost_jobs(self.sessions, self.folders, self.settings)
                    self._on_sweep()
                    last_sweep = time.monotonic()
            except Exception:  # the supervisor must outlive a database or cluster hiccup
                log.exception("%s: check failed; trying again", self.thread_name)

    def _restart(self, slot, reason: str, who: str) -> None:
        """`slot`'s worker died (its fields already cleared): the job it was running is queued again while it has
        retries left (SSAH_MAX_RETRIES; a worker or node that dies is often not the job's fault), else failed
        with `reason`; and a new worker starts, at once or, in a crash loop, after a delay that doubles up to a
        minute."""
        lost = lose_running(self.sessions, reason, retries=self.settings.max_retries, worker_id=slot.worker_id)
        self.folders.clean_partials({job.run_id for job, _ in lost if job.run_id})
        log.warning("%s: %s; its jobs: %s", who, reason, [f"{j.id} {now}" for j, now in lost] or "none")
        quick = not lost and time.monotonic() - slot.started_at < QUICK_DEATH_S  # a crash loop, not a bad job
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
        slot.restarts += 1
        slot.next_start = time.monotonic() + (min(60.0, 2.0 ** slot.quick_deaths) if quick else 0.0)
        if time.monotonic() >= slot.next_start:
            self._spawn(slot)


def recover_lost_jobs(sessions: sessionmaker[Session], folders: RunFolders, settings: Settings) -> list[str]:
    """Running jobs whose worker stopped sending heartbeats are queued again (while they have retries left) or
    failed, and their half-written folders removed; returns '<job id> <new status>' for each."""
    before = utcnow() - timedelta(seconds=settings.lost_after_s)
    lost = lose_running(sessions, f"worker lost: no heartbeat for {settings.lost_after_s:g} s (the worker process "
                                  "or its machine stopped while running this job)",
                        retries=settings.max_retries, heartbeat_before=before)
    folders.clean_partials({job.run_id for job, _ in lost if job.run_id})
    return [f"{job.id} {now}" for job, now in lost]
