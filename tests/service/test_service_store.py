"""The job queue in the database (claims by concurrent workers, guarded transitions), how a dead worker is named,
progress by phase, and settings from the environment."""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from backend.jobs.context import PhasePlan
from backend.jobs.local import describe_exit
from backend.settings import Settings
from backend.store import queue
from backend.store.db import make_engine, session_factory
from backend.store.tables import Job, Run


def test_concurrent_workers_claim_every_job_exactly_once(database_url):
    """Four workers, each with its own engine (as separate processes would have), race for 200 queued jobs."""
    sessions = session_factory(make_engine(database_url))
    with sessions.begin() as session:
        queued = {queue.enqueue_job(session, "preview", None, {"n": i}).id for i in range(200)}
    claimed: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def work(name: str) -> None:
        mine = session_factory(make_engine(database_url))
        start.wait()
        while (job := queue.claim(mine, name)) is not None:
            claimed.setdefault(name, []).append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(everything) == sorted(queued)  # each once, none lost
    assert len(claimed) >= 2  # they did race
    with sessions() as session:
        jobs = session.query(Job).all()
        assert {j.status for j in jobs} == {"running"} and {j.attempts for j in jobs} == {1}
        assert all(j.id in claimed[j.worker_id] for j in jobs)


def test_transitions_are_guarded(database_url):
    sessions = session_factory(make_engine(database_url))
    with sessions.begin() as session:
        job = queue.enqueue_job(session, "preview", None, {})
    assert queue.report(sessions, job.id, 0.5, "x") is None  # not running: not this worker's
    assert queue.claim(sessions, "w").id == job.id
    assert queue.report(sessions, job.id, 0.5, "generating 1/2") is False
    with sessions.begin() as session:
        assert queue.cancel(session, session.get(Job, job.id)) == "cancelling"
    assert queue.report(sessions, job.id, 0.6, "generating 2/2") is True
    assert queue.finish(sessions, job.id, "cancelled")
    assert not queue.finish(sessions, job.id, "succeeded")  # an ended job stays as it ended
    with sessions.begin() as session:
        assert queue.cancel(session, session.get(Job, job.id)) is None
        assert session.get(Job, job.id).status == "cancelled"


def test_a_lost_job_is_queued_again_until_its_retries_are_spent(database_url):
    sessions = session_factory(make_engine(database_url))
    with sessions.begin() as session:
        run, job = queue.enqueue_run(session, model="m", model_path="m", settings={}, cache_key="k")
    assert queue.claim(sessions, "w1").attempts == 1
    lost = queue.lose_running(sessions, "the worker died", retries=1, worker_id="w1")
    assert [(j.id, now) for j, now in lost] == [(job.id, "queued")]
    with sessions() as session:
        again = session.get(Job, job.id)
        assert again.status == "queued" and again.attempts == 1 and again.worker_id is None
        assert "the worker died" in again.phase and "attempt 1" in again.phase and again.error is None
        assert session.get(Run, run.id).status == "queued"

    assert queue.claim(sessions, "w2").attempts == 2
    # the first worker, still alive somewhere, may no longer report or finish what is now w2's
    assert queue.report(sessions, job.id, 0.5, "x", worker_id="w1") is None
    assert not queue.finish(sessions, job.id, "succeeded", worker_id="w1")
    assert queue.report(sessions, job.id, 0.5, "x", worker_id="w2") is False
    lost = queue.lose_running(sessions, "the node died", retries=1, worker_id="w2")
    assert [now for _, now in lost] == ["failed"]
    with sessions() as session:
        failed = session.get(Job, job.id)
        assert failed.status == "failed" and failed.attempts == 2
        assert failed.error.startswith("the node died") and "2 attempts" in failed.error
        assert session.get(Run, run.id).status == "failed"


def test_a_lost_job_that_was_being_cancelled_ends_cancelled(database_url):
    sessions = session_factory(make_engine(database_url))
    with sessions.begin() as session:
        job = queue.enqueue_job(session, "preview", None, {})
    queue.claim(sessions, "w")
    with sessions.begin() as session:
        queue.cancel(session, session.get(Job, job.id))
    assert [now for _, now in queue.lose_running(sessions, "gone", retries=1, worker_id="w")] == ["cancelled"]


def test_a_dead_worker_is_described_by_its_signal():
    assert describe_exit(-signal.SIGKILL) == "was killed by signal SIGKILL (9)"
    assert describe_exit(-signal.SIGSEGV) == "was killed by signal SIGSEGV (11)"
    assert describe_exit(1) == "exited with code 1"


def test_progress_follows_the_phase_plan_and_never_goes_back():
    plan = PhasePlan([("loading", 1), ("forward safety", 4), ("forward utility", 4), ("scoring", 1)])
    assert plan("loading model", 1, 1) == 0.1
    assert plan("forward safety", 2, 4) == 0.3
    assert plan("forward utility", 4, 4) == 0.9
    assert plan("forward safety", 1, 4) == 0.9  # a report out of order does not move it back
    assert plan("unknown phase", 1, 1) == 0.9
    assert plan("scoring", 1, 1) == 1.0


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SSAH_HOME", str(tmp_path))
    monkeypatch.setenv("SSAH_MODEL_ROOTS", "/models,/scratch/models")
    monkeypatch.setenv("SSAH_DEVICES", '["cuda:0", "cuda:1"]')
    monkeypatch.setenv("SSAH_MAX_SAMPLES", "64")
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'service' / 'ssah.db'}"
    assert settings.runs_dir == tmp_path / "service" / "runs"
    assert settings.model_roots == [Path("/models"), Path("/scratch/models")] and settings.data_roots == []
    assert settings.devices == ["cuda:0", "cuda:1"] and settings.max_samples == 64
    assert settings.loopback and not Settings(host="0.0.0.0").loopback
    monkeypatch.setenv("SSAH_DATABASE_URL", "postgresql+psycopg://ssah@db/ssah")
    assert Settings().database_url == "postgresql+psycopg://ssah@db/ssah"


def test_a_device_is_held_by_one_worker_at_a_time(tmp_path):
    from backend.jobs.worker import hold_device

    lock = tmp_path / "devices" / "cuda:0-0.lock"
    first = hold_device(lock)
    second: list = []
    waiting = threading.Thread(target=lambda: second.append(hold_device(lock)))
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive() and not second  # a new worker waits while the old one lives
    first.close()  # the old worker exits: the kernel drops its lock
    waiting.join(timeout=10)
    assert second and lock.read_text().strip().isdigit()
    second[0].close()
