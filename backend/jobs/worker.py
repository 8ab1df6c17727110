"""A worker: one process, one device. It claims jobs from the database, runs them on the engine and reports.

Progress reaches the database from a reporter thread, at most every `progress_interval_s` (and a heartbeat at
least every `heartbeat_s`); the same write reads the job's cancel flag, and the engine's next progress callback
(once per batch) raises `Cancelled`. Imports of torch and the engine happen in the worker process only.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import traceback

from backend.settings import Settings
from backend.store.db import make_engine, session_factory
from backend.store.folders import RunFolders
from backend.store.queue import claim, finish

from . import tasks
from .context import Cancelled, Context, JobLost, ModelCache, Reporter

log = logging.getLogger("ssah.jobs")

IDLE_WAIT_S = 1.0


def run_job(ctx: Context, job) -> None:
    """Run one claimed job to a terminal state."""
    settings = ctx.settings
    reporter = Reporter(ctx.sessions, job.id, settings.progress_interval_s, settings.heartbeat_s,
                        pause_at=settings.pause_at, release=settings.home / "release" / job.id)
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
