"""A worker: one process, one device. It claims jobs from the database, runs them on the engine and reports.

Progress reaches the database from a reporter thread, at most every `progress_interval_s` (and a heartbeat at
least every `heartbeat_s`); the same write reads the job's cancel flag, and the engine's next progress callback
(once per batch) raises `Cancelled`. Imports of torch and the engine happen in the worker process only.
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from backend.settings import Settings
from backend.store.db import make_engine, session_factory
from backend.store.folders import RunFolders
from backend.store.queue import claim, finish

from . import tasks
from .context import Cancelled, Context, JobLost, ModelCache, Reporter

log = logging.getLogger("ssah.jobs")

IDLE_WAIT_S = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHANED = 70  # exit code of a worker whose service died


def run_job(ctx: Context, job) -> None:
    """Run one claimed job to a terminal state (or drop it, when it stopped being this worker's meanwhile)."""
    settings = ctx.settings
    reporter = Reporter(ctx.sessions, job.id, settings.progress_interval_s, settings.heartbeat_s,
                        pause_at=settings.pause_at, release=settings.home / "release" / job.id,
                        worker_id=job.worker_id)
    mine = {"worker_id": job.worker_id}
    try:
        with reporter:
            outcome = tasks.TASKS[job.kind](ctx, job, reporter)
    except Cancelled:
        finish(ctx.sessions, job.id, "cancelled", error="cancelled on request", **mine)
        return
    except JobLost:
        log.warning("job %s was taken from this worker; its outcome is dropped", job.id)
        return
    except Exception as error:
        log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        finish(ctx.sessions, job.id, "failed", error=tasks.describe_error(error, **tasks.error_hints(ctx, job)),
               **mine)
        return
    if not finish(ctx.sessions, job.id, "succeeded", result=outcome.result, run_fields=outcome.run_fields, **mine):
        outcome.undo()  # the job was cancelled, lost (and queued again) or deleted meanwhile


def die_with_parent(parent) -> None:
    """Exit the moment the process that started this worker dies (killed with -9, say), even in the middle of a
    job: on Linux the kernel sends SIGKILL (PR_SET_PDEATHSIG); everywhere a watchdog thread waits on the
    parent's sentinel and exits. A restarted service then never finds an orphan still running a job."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("could not ask the kernel to stop this worker with its parent; the watchdog does")

    def watch() -> None:
        parent.join()  # returns when the parent's end of the sentinel pipe closes
        log.error("the service process (pid %s) is gone; this worker stops now", parent.pid)
        os._exit(ORPHANED)

    threading.Thread(target=watch, name="ssah-parent-watch", daemon=True).start()
    if not parent.is_alive():  # it died before the watch began
        os._exit(ORPHANED)


def hold_device(path: Path) -> object:
    """An exclusive lock on this worker's device (a file lock, released by the kernel when the process dies):
    a new worker waits for an old one that is still running, so no device ever runs two jobs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("device lock %s is held by another worker; waiting until it stops", path)
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def main(settings: Settings, worker_id: str, device: str, wake, device_lock: str | None = None) -> None:
    """Entry point of a worker process: take jobs until the parent process goes away. A worker process started by
    the service dies with it; `device_lock` names the lock of its device (local workers; a Ray actor's GPU is
    Ray's to hand out)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    parent = mp.parent_process()
    if parent is not None:
        die_with_parent(parent)
    held = hold_device(settings.home / "service" / "devices" / f"{device_lock}.lock") if device_lock else None
    os.environ["SSAH_HOME"] = str(settings.home)  # the engine caches converted models and hashes there
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (imported before the first job)

    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)

    sessions = session_factory(make_engine(settings.database_url))
    ctx = Context(settings, device, ModelCache(settings.model_cache_size), sessions, RunFolders(settings.runs_dir))
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
    del held
