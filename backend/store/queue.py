"""The life of runs and jobs in the database: enqueue, claim, report, finish, cancel, fail.

Every state change is one guarded UPDATE (`... WHERE status = 'queued'` / `'running'`, and the worker that holds
the job), so two workers, or a worker and the API, never both win the same transition. A job lost with its worker
is queued again while it has retries left. An attribution job's run mirrors its status.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .tables import ACTIVE, Job, Run, utcnow

NO_SYNC = {"synchronize_session": False}


def enqueue_run(session: Session, *, model: str, model_path: str, settings: dict, cache_key: str,
                **identity) -> tuple[Run, Job]:
    """A queued run and its attribution job; `identity`: name, tags, notes, parent_run, origin."""
    run = Run(model=model, model_path=model_path, settings=settings, cache_key=cache_key, status="queued", **identity)
    session.add(run)
    session.flush()
    job = Job(kind="attribution", run_id=run.id, request={"run_id": run.id})
    session.add(job)
    session.flush()
    return run, job


def add_cached_run(session: Session, source: Run, *, run_id: str, model: str, settings: dict,
                   result_dir: str, **identity) -> tuple[Run, Job]:
    """A run answered from the cache: succeeded at once, with its own copy (hard links) of `source`'s files."""
    now = utcnow()
    run = Run(id=run_id, model=model, model_path=source.model_path, settings=settings, cache_key=source.cache_key,
              status="succeeded", cached=True, result_dir=result_dir, manifest=source.manifest, **identity)
    session.add(run)
    session.flush()
    job = Job(kind="attribution", run_id=run.id, request={"run_id": run.id, "cached_from": source.id},
              status="succeeded", progress=1.0, phase="cached", started_at=now, finished_at=now)
    session.add(job)
    session.flush()
    return run, job


def enqueue_job(session: Session, kind: str, run_id: str | None, request: dict) -> Job:
    job = Job(kind=kind, run_id=run_id, request=request)
    session.add(job)
    session.flush()
    return job


def cached_run(session: Session, cache_key: str) -> Run | None:
    """The newest succeeded run with this cache key."""
    return session.scalars(select(Run).where(Run.cache_key == cache_key, Run.status == "succeeded",
                                             Run.result_dir.is_not(None))
                           .order_by(Run.created_at.desc()).limit(1)).first()


def queued_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0


QUEUE_LOCK = 0x55A4_0001  # PostgreSQL advisory lock key of the queue


class QueueFull(Exception):
    """The queue holds `limit` jobs or more."""

    def __init__(self, queued: int, limit: int):
        super().__init__(f"the queue is full ({queued} jobs waiting, limit {limit})")
        self.queued, self.limit = queued, limit


def lock_queue(session: Session) -> None:
    """Hold the queue's lock until this transaction ends, so that counting the queue and adding to it are one step
    for every API process at once: on PostgreSQL a transaction-level advisory lock, on SQLite the database's write
    lock (taken by a write that changes nothing; pysqlite begins the transaction before it)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(QUEUE_LOCK)))
    else:
        session.execute(update(Job).where(Job.id.is_(None)).values(status=Job.status).execution_options(**NO_SYNC))


def admit(session: Session, limit: int) -> int:
    """Lock the queue (until the caller commits or rolls back) and return how many jobs wait; QueueFull when there
    is no room for one more. Enqueue and commit in the same transaction."""
    lock_queue(session)
    queued = queued_count(session)
    if queued >= limit:
        raise QueueFull(queued, limit)
    return queued


def attribution_jobs(session: Session, run_ids: list[str]) -> dict[str, Job]:
    """The attribution job of each run (one query for a page of runs)."""
    jobs = session.scalars(select(Job).where(Job.run_id.in_(run_ids), Job.kind == "attribution")
                           .order_by(Job.created_at)).all()
    return {job.run_id: job for job in jobs}  # the newest wins


def attribution_job(session: Session, run_id: str) -> Job | None:
    return attribution_jobs(session, [run_id]).get(run_id)


def _sync_run(session: Session, job: Job, **fields) -> None:
    if job.kind == "attribution" and job.run_id:
        session.execute(update(Run).where(Run.id == job.run_id).values(updated_at=utcnow(), **fields)
                        .execution_options(**NO_SYNC))


def claim(sessions: sessionmaker[Session], worker_id: str) -> Job | None:
    """Take the oldest queued job for `worker_id`, or None. Safe with many workers: the row is taken by one
    guarded UPDATE (and SKIP LOCKED on PostgreSQL)."""
    now = utcnow()
    oldest = (select(Job.id).where(Job.status == "queued").order_by(Job.created_at, Job.id).limit(1)
              .with_for_update(skip_locked=True).scalar_subquery())
    with sessions.begin() as session:
        job_id = session.execute(
            update(Job).where(Job.id == oldest, Job.status == "queued")
            .values(status="running", worker_id=worker_id, started_at=now, heartbeat_at=now, phase="starting",
                    attempts=Job.attempts + 1, updated_at=now)
            .returning(Job.id).execution_options(**NO_SYNC)).scalar_one_or_none()
        if job_id is None:
            return None
        job = session.get(Job, job_id)
        _sync_run(session, job, status="running")
        return job


def report(sessions: sessionmaker[Session], job_id: str, progress: float, phase: str,
           worker_id: str | None = None) -> bool | None:
    """Write progress and a heartbeat; returns whether a cancel was asked for, or None when the job is no longer
    this worker's to run (finished, lost and queued again or taken by another worker, or deleted)."""
    guard = [Job.worker_id == worker_id] if worker_id is not None else []
    with sessions.begin() as session:
        row = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "running", *guard)
            .values(progress=progress, phase=phase, heartbeat_at=utcnow())
            .returning(Job.cancel_requested).execution_options(**NO_SYNC)).first()
    return None if row is None else bool(row[0])


def finish(sessions: sessionmaker[Session], job_id: str, status: str, *, error: str | None = None,
           result: dict | None = None, run_fields: dict | None = None, worker_id: str | None = None) -> bool:
    """Move a running job to a terminal status (and its run, for an attribution); False when it was not running
    (or, with `worker_id`, not that worker's any more)."""
    now = utcnow()
    guard = [Job.worker_id == worker_id] if worker_id is not None else []
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            return False
        values = dict(status=status, error=error, phase=status, finished_at=now, updated_at=now)
        if status == "succeeded":
            values.update(progress=1.0, result=result)
        done = session.execute(update(Job).where(Job.id == job_id, Job.status == "running", *guard).values(**values)
                               .execution_options(**NO_SYNC)).rowcount
        if done:
            _sync_run(session, job, status=status, error=error, **(run_fields or {}))
        return bool(done)


def cancel(session: Session, job: Job) -> str | None:
    """Cancel a queued job at once ('cancelled'), or ask a running one to stop ('cancelling'); None when the job
    had already ended."""
    now = utcnow()
    if session.execute(update(Job).where(Job.id == job.id, Job.status == "queued")
                       .values(status="cancelled", phase="cancelled", finished_at=now, updated_at=now)
                       .execution_options(**NO_SYNC)).rowcount:
        _sync_run(session, job, status="cancelled")
        return "cancelled"
    if session.execute(update(Job).where(Job.id == job.id, Job.status == "running")
                       .values(cancel_requested=True, updated_at=now).execution_options(**NO_SYNC)).rowcount:
        return "cancelling"
    return None


def lose_running(sessions: sessionmaker[Session], reason: str, *, retries: int, worker_id: str | None = None,
                 heartbeat_before: datetime | None = None) -> list[tuple[Job, str]]:
    """The running jobs of a dead worker (or those whose heartbeat is older than `heartbeat_before`) were lost:
    each is queued again while `attempts <= retries` (its phase says why), cancelled when a cancel was asked for,
    else failed with `reason`. Returns each job with its new status."""
    query = select(Job).where(Job.status == "running")
    if worker_id is not None:
        query = query.where(Job.worker_id == worker_id)
    if heartbeat_before is not None:
        query = query.where((Job.heartbeat_at < heartbeat_before) | Job.heartbeat_at.is_(None))
    lost = []
    with sessions.begin() as session:
        for job in session.scalars(query).all():
            now = utcnow()
            if job.cancel_requested:
                status, values = "cancelled", dict(phase="cancelled", error="cancelled on request (its worker was "
                                                                             f"lost meanwhile: {reason})")
            elif job.attempts <= retries:
                status, values = "queued", dict(phase=f"queued again after attempt {job.attempts}: {reason}",
                                                error=None, worker_id=None, heartbeat_at=None, progress=0.0)
            else:
                tries = f"{job.attempts} attempts" if job.attempts > 1 else "1 attempt, no retries"
                status, values = "failed", dict(phase="failed", error=f"{reason} (after {tries})")
            if status != "queued":
                values["finished_at"] = now
            guarded = update(Job).where(Job.id == job.id, Job.status == "running", Job.worker_id == job.worker_id)
            if session.execute(guarded.values(status=status, updated_at=now, **values)
                               .execution_options(**NO_SYNC)).rowcount:
                _sync_run(session, job, status=status, error=values.get("error"))
                lost.append((job, status))
    return lost


def active_jobs(session: Session, run_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.run_id == run_id, Job.status.in_(ACTIVE))))


def latest_job(session: Session, run_id: str, kind: str, **request) -> Job | None:
    """The newest job of `kind` on a run whose stored request holds these values (e.g. one unit's inspection)."""
    jobs = session.scalars(select(Job).where(Job.run_id == run_id, Job.kind == kind)
                           .order_by(Job.created_at.desc(), Job.id.desc()))
    return next((job for job in jobs if all(job.request.get(k) == v for k, v in request.items())), None)
