"""The Ray runner: the local runner's worker loop on Ray actors, for one or more GPU machines in a Ray cluster.

Each actor asks Ray for `ray_num_gpus` GPUs and runs `worker.main`, so it claims jobs from the shared database
(PostgreSQL across machines; the SQLite file on one machine), writes heartbeats and progress, and reads the cancel
flag exactly as a local worker process does. A supervisor thread in the API process watches the actors: when one
dies (`ray.kill`, out of memory, its node lost) the job it was running is queued again while it has retries left
(SSAH_MAX_RETRIES), else failed with Ray's reason, as with the local runner; a new actor takes its place. GPU nodes
that join later get actors of their own.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from backend.settings import Settings

from . import worker
from .runner import SupervisedRunner, WorkerSlot

log = logging.getLogger("ssah.jobs")

NAMESPACE = "ssah"
LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024  # jobs pass nothing through Ray's object store
STOP_WAIT_S = 10.0
MAX_REASON = 600  # Ray's reasons for a lost worker process run to a paragraph of likely causes


@contextmanager
def server_signals_kept() -> Iterator[None]:
    """Keep the server's SIGTERM and SIGINT handlers across `ray.init`, which puts its own in (a `sys.exit` from
    wherever the main thread is): with Ray's, `ssah serve` died on SIGTERM without stopping its workers or the local
    Ray it started (raylet, ray::JobActor and ray::IDLE processes were left running); with the server's, uvicorn
    shuts down in order and the runner's `stop` shuts Ray down."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread has signal handlers (and Ray installs none from another thread)
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


class JobActor:
    """One worker as a Ray actor: `run` is the worker loop (it returns only when the actor dies), `notify` wakes
    it while it waits for a job (the actor is threaded, so `notify` runs beside `run`)."""

    def __init__(self) -> None:
        self.wake = threading.Event()

    def ready(self) -> dict:
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, settings: Settings, worker_id: str, device: str) -> None:
        worker.main(settings, worker_id, device, self.wake)

    def notify(self) -> None:
        self.wake.set()


def death_reason(error: BaseException) -> str:
    """Ray's own last line about a dead actor, e.g. 'it was killed by `ray.kill`'."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    for prefix in ("The actor is dead because ", "The actor died because "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    reason = reason.rstrip(".")
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3].rstrip() + "..."


@dataclass
class Slot(WorkerSlot):
    """One place for a worker actor, and the actor that currently fills it."""

    actor: Any = None
    name: str = ""
    ready: Any = None  # ObjectRef of JobActor.ready
    running: Any = None  # ObjectRef of JobActor.run: it resolves (to an error) when the actor dies
    info: dict = field(default_factory=dict)


class RayRunner(SupervisedRunner):
    thread_name = "ssah-ray-supervisor"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.num_gpus = 0.0
        self.device = "cpu"
        self._owns_ray = False
        self._actor_class = ray.remote(JobActor)
        self._actor_options: dict = {}
        self._instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    # -- the Runner interface -----------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        if not ray.is_initialized():
            with server_signals_kept():
                if s.ray_address:
                    ray.init(address=s.ray_address)
                else:
                    ray.init(num_cpus=s.ray_local_cpus, include_dashboard=False,
                             object_store_memory=LOCAL_OBJECT_STORE_BYTES)
            self._owns_ray = True
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
        self.num_gpus = s.ray_num_gpus if s.ray_num_gpus is not None else (1.0 if cluster_gpus else 0.0)
        self.device = "cuda" if self.num_gpus > 0 else "cpu"
        count = self._wanted(cluster_gpus)
        self._actor_options = dict(num_gpus=self.num_gpus, num_cpus=s.ray_num_cpus, max_concurrency=2,
                                   max_restarts=0, namespace=NAMESPACE)
        log.info("ray runner: %d actor(s) with %g GPU and %g CPU each on %s", count, self.num_gpus, s.ray_num_cpus,
                 s.ray_address or "a local Ray")
        self.slots = [Slot(i) for i in range(count)]
        super().start()

    def stop(self) -> None:
        super().stop()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def notify(self) -> None:
        for slot in self.slots:
            actor = slot.actor
            if actor is not None:
                actor.notify.remote()  # fire and forget: a dead actor's reply is an error nobody reads

    def cancel(self, job_id: str) -> None:
        pass  # the actor's worker loop reads the job's cancel flag every progress_interval_s

    def health(self) -> dict:
        with self._lock:
            workers = [{"device": self.device, "worker_id": s.worker_id, "actor": s.name, "namespace": NAMESPACE,
                        "node": s.info.get("node"), "node_id": s.info.get("node_id"), "pid": s.info.get("pid"),
                        "gpus": s.info.get("gpus", []),
                        "alive": s.actor is not None and bool(s.info),
                        "pending": s.actor is not None and not s.info,  # waiting for a GPU (or still starting)
                        "restarts": s.restarts}
                       for s in self.slots]
        return {"runner": "ray", "address": self.settings.ray_address or "local", "num_gpus": self.num_gpus,
                "workers": workers}

    # -- supervision --------------------------------------------------------------------------------------------

    def _wanted(self, cluster_gpus: float) -> int:
        """How many actors: `ray_workers`, else one per `num_gpus` GPUs of the cluster (one without GPUs)."""
        if self.settings.ray_workers:
            return self.settings.ray_workers
        return max(1, int(cluster_gpus // self.num_gpus)) if self.num_gpus else 1

    def _on_sweep(self) -> None:
        """GPU nodes that joined after the start (or after an autoscaler added them) get actors too."""
        if self.settings.ray_workers or not self.num_gpus:
            return
        wanted = self._wanted(ray.cluster_resources().get("GPU", 0.0))
        with self._lock:
            while len(self.slots) < wanted and not self._stopping.is_set():
                slot = Slot(len(self.slots))
                self.slots.append(slot)
                self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        slot.worker_id = f"ray:{self._instance}:{slot.index}:{slot.restarts}"
        slot.name = f"ssah-worker-{self._instance}-{slot.index}-{slot.restarts}"
        slot.actor = self._actor_class.options(name=slot.name, **self._actor_options).remote()
        slot.ready = slot.actor.ready.remote()
        slot.running = slot.actor.run.remote(self.settings, slot.worker_id, self.device)
        slot.info = {}
        slot.started_at = time.monotonic()
        log.info("started Ray actor %s (worker %s)", slot.name, slot.worker_id)

    def _check(self, slot: Slot) -> None:
        if self._stopping.is_set():
            return
        if slot.actor is None:
            if time.monotonic() >= slot.next_start:
                self._spawn(slot)
            return
        if not slot.info and ray.wait([slot.ready], timeout=0)[0]:
            try:
                slot.info = ray.get(slot.ready)
                slot.started_at = time.monotonic()  # a pending actor's wait for a GPU is not its life
                log.info("Ray actor %s is up: %s", slot.name, slot.info)
            except RayActorError:
                pass  # `running` says how it died
        if not ray.wait([slot.running], timeout=0)[0]:
            return
        try:
            ray.get(slot.running)
            how = "stopped while running this job"
        except RayActorError as error:
            how = f"died while running this job: {death_reason(error)}"
        except Exception as error:  # worker.main raised (e.g. the engine does not import on that node)
            how = f"stopped with an error while running this job: {death_reason(error)}"
        where = f" on {slot.info['node']}" if slot.info.get("node") else ""
        slot.actor = slot.ready = slot.running = None
        self._restart(slot, f"the Ray worker actor{where} {how}", f"Ray actor {slot.name}")

    def _halt(self, slot: Slot) -> bool:
        if slot.actor is None:
            return False
        ray.kill(slot.actor, no_restart=True)
        ray.wait([slot.running], timeout=STOP_WAIT_S)  # dead, so it claims nothing after this
        slot.actor = slot.ready = slot.running = None
        return True
