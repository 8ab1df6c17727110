"""Faults: a worker killed mid-job (its job retried once, then failed), an API restart, and jobs whose worker was
lost while the API was down."""
from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from servicekit import API, PAUSE_AT, release, run_body, serve, settings_in, wait, wait_paused

from backend.store.tables import Job, Run, utcnow

pytestmark = pytest.mark.slow  # kills spawned workers and restarts the app


def test_a_killed_worker_s_job_is_retried_then_failed_with_the_signal_and_a_new_worker_takes_the_next(roots,
                                                                                                     tmp_path):
    settings = settings_in(tmp_path, roots, pause_at=PAUSE_AT)  # SSAH_MAX_RETRIES: 1 (the default)
    assert settings.max_retries == 1
    with serve(settings) as client:
        runner = client.app.state.runner
        slow = client.post(f"{API}/runs", json=run_body(roots)).json()
        wait_paused(client, f"{API}/runs/{slow['id']}")
        (worker,) = runner.health()["workers"]
        os.kill(worker["pid"], signal.SIGKILL)

        # the job is queued again and a new worker takes it (it holds at the same point: a new attempt) ...
        again = wait(client, f"{API}/jobs/{slow['job_id']}", timeout=300,
                     check=lambda b: b["attempts"] == 2 and b["phase"].startswith("paused at"))
        assert again["status"] == "running" and again["error"] is None
        (second,) = runner.health()["workers"]
        assert second["pid"] != worker["pid"] and second["restarts"] == 1
        os.kill(second["pid"], signal.SIGKILL)

        # ... and when that worker dies too, its retries are spent: the job fails, naming the signal
        failed = wait(client, f"{API}/runs/{slow['id']}", timeout=30)
        assert failed["status"] == "failed"
        assert "SIGKILL" in failed["error"] and "worker process" in failed["error"]
        assert "after 2 attempts" in failed["error"]
        job = client.get(f"{API}/jobs/{slow['job_id']}").json()
        assert job["status"] == "failed" and job["error"] == failed["error"] and job["attempts"] == 2
        assert not [p for p in settings.runs_dir.iterdir() if p.name.startswith(".")]  # no half-written folder
        worker = second

        nxt = client.post(f"{API}/runs", json=run_body(roots, seed=1)).json()
        release(settings, nxt["job_id"])
        done = wait(client, f"{API}/runs/{nxt['id']}")
        assert done["status"] == "succeeded", done["error"]
        (restarted,) = runner.health()["workers"]
        assert restarted["alive"] and restarted["pid"] != worker["pid"] and restarted["restarts"] == 2

    # A job left running by a worker that died with the previous API (its heartbeat is old, its retries spent) ...
    with client.app.state.sessions.begin() as session:
        orphan = Run(model="llama-gqa", model_path="x", settings={}, cache_key="k", status="running")
        session.add(orphan)
        session.flush()
        session.add(Job(kind="attribution", run_id=orphan.id, request={}, status="running", worker_id="gone",
                        heartbeat_at=utcnow() - timedelta(hours=1), attempts=2))

    # ... and after a restart (a new app on the same database and results) everything is still there.
    with serve(settings.model_copy(update={"runner": "none", "pause_at": ""})) as client:
        runs = {r["id"]: r for r in client.get(f"{API}/runs").json()["data"]}
        assert runs[slow["id"]]["status"] == "failed" and "SIGKILL" in runs[slow["id"]]["error"]
        assert runs[done["id"]]["status"] == "succeeded"
        assert runs[orphan.id]["status"] == "failed" and runs[orphan.id]["error"].startswith("worker lost")
        units = client.get(f"{API}/runs/{done['id']}/units", params={"format": "parquet"})
        assert units.status_code == 200
        assert units.content == (settings.runs_dir / done["id"] / "units.parquet").read_bytes()
        assert client.get(f"{API}/runs/{done['id']}").json()["manifest"] == done["manifest"]
