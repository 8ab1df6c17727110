"""Where queued jobs run.

The database is the queue. The API writes a queued job and calls `notify()`; a runner's workers take jobs with
`store.queue.claim` (one guarded UPDATE, so any number of workers on any number of machines can share it), report
progress and heartbeats with `store.queue.report`, and end them with `store.queue.finish`; `backend.jobs.worker`
does all of that for one device, in a local worker process (`local.LocalRunner`) or in a Ray actor
(`ray_runner.RayRunner`). A cancel is a flag in the job row that the worker reads while it reports progress, so
`cancel()` only has to hurry things up.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy.orm import Session, sessionmaker

from backend.api.settings import Settings
from backend.store.models import utcnow
from backend.store.queue import fail_running
from backend.store.results import Results


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


def make_runner(settings: Settings) -> Runner:
    if settings.runner == "local":
        from .local import LocalRunner

        return LocalRunner(settings)
    if settings.runner == "ray":
        from .ray_runner import RayRunner

        return RayRunner(settings)
    return NullRunner()


def recover_lost_jobs(sessions: sessionmaker[Session], results: Results, lost_after_s: float) -> list[str]:
    """Fail running jobs whose worker stopped sending heartbeats, and remove their half-written folders;
    returns the ids of the jobs failed."""
    before = utcnow() - timedelta(seconds=lost_after_s)
    lost = fail_running(sessions, f"worker lost: no heartbeat for {lost_after_s:g} s (the worker process or its "
                                  "machine stopped while running this job)", heartbeat_before=before)
    results.clean_partials({job.run_id for job in lost if job.run_id})
    return [job.id for job in lost]
