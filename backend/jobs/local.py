"""The local runner: one worker process per device (started with spawn, so CUDA is safe), watched by a
supervisor thread in the API process that fails the job of a worker that died and starts a new worker."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass

from backend.settings import Settings

from . import worker
from .runner import SupervisedRunner, WorkerSlot

log = logging.getLogger("ssah.jobs")


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


@dataclass(kw_only=True)
class Slot(WorkerSlot):
    """One device and the worker process that currently serves it."""

    device: str
    process: mp.process.BaseProcess | None = None
    wake: object = None


class LocalRunner(SupervisedRunner):
    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.context = mp.get_context("spawn")
        self.slots = [Slot(i, device=device) for i, device in enumerate(settings.devices)]
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- the Runner interface (start and stop are SupervisedRunner's) ----------------------------------------------

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
        same = sum(other.device == slot.device for other in self.slots[:slot.index])
        slot.process = self.context.Process(
            target=worker.main, args=(self.settings, slot.worker_id, slot.device, slot.wake, f"{slot.device}-{same}"),
            name=f"ssah-worker-{slot.device}-{slot.index}", daemon=True)
        slot.process.start()
        slot.started_at = time.monotonic()
        log.info("started worker %s (pid %s)", slot.worker_id, slot.process.pid)

    def _check(self, slot: Slot) -> None:
        process = slot.process
        if process is None or process.is_alive() or self._stopping.is_set():
            if process is None and time.monotonic() >= slot.next_start:
                self._spawn(slot)
            return
        process.join(timeout=1)
        slot.process = None
        self._restart(slot, f"the worker process {describe_exit(process.exitcode)} while running this job",
                      f"worker {slot.worker_id}")

    def _halt(self, slot: Slot) -> bool:
        process = slot.process
        if process is None:
            return False
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        slot.process, slot.wake = None, None  # releases the event's semaphores now, not at exit
        return True
