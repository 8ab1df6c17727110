"""`ssah serve` as a real process: what its log shows, and what is left when it is stopped or killed."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from servicekit import (API, PAUSE_AT, TERMINAL, alive, release, run_body, serve_process, settings_in,
                        wait_until)

pytestmark = pytest.mark.slow  # spawns `ssah serve`

SECRET = "ssah_" + "s3cret-Token_value" * 2


def stored_job(settings, job_id: str):
    """A job as the database of a service that has stopped holds it."""
    from backend.store.db import make_engine, session_factory
    from backend.store.tables import Job

    with session_factory(make_engine(settings.database_url))() as session:
        return session.get(Job, job_id)


def wait_http(http: httpx.Client, path: str, check, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not check(body := http.get(path).json()):
        assert time.monotonic() < deadline, f"{path}: still {body.get('status')} ({body.get('phase')})"
        time.sleep(0.1)
    return body


def test_tokens_never_reach_the_log(roots, tmp_path):
    settings = settings_in(tmp_path, roots, runner="none")
    with serve_process(settings, tmp_path / "serve.log") as served:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            assert http.get(f"{API}/runs", params={"token": SECRET, "limit": 5}).status_code == 200
            assert http.get(f"{API}/runs/nope", params={"access_token": SECRET}).status_code == 404
            http.get("/runs/abc", params={"h_scu": 0.02, "token": SECRET})  # a share link opened in the dashboard
            http.get(f"{API}/runs", headers={"Authorization": f"Bearer {SECRET}"})
            assert http.post(f"{API}/runs", params={"token": SECRET}, json=run_body(roots)).status_code == 202
    log = served.text()
    assert "GET /api/v1/runs?token=[redacted]&limit=5" in log, log[-2000:]  # the access log still names the request
    assert "/runs/abc?h_scu=0.02&token=[redacted]" in log
    assert SECRET not in log and SECRET[5:20] not in log


def test_after_a_kill_9_of_the_service_its_worker_exits_and_the_restart_runs_one_job_at_a_time(roots, tmp_path):
    settings = settings_in(tmp_path, roots, pause_at=PAUSE_AT, lost_after_s=3)
    with serve_process(settings, tmp_path / "serve.log") as served, \
            httpx.Client(base_url=served.api, timeout=60) as http:
        first = http.post("/runs", json=run_body(roots)).json()
        second = http.post("/runs", json=run_body(roots, seed=1)).json()
        wait_http(http, f"/runs/{first['id']}", lambda b: b["phase"].startswith("paused at"), 300)
        assert http.get(f"/runs/{second['id']}").json()["status"] == "queued"
        pids = served.pids() - {served.process.pid}
        assert pids, "the service has no worker process"
        served.process.send_signal(signal.SIGKILL)
        served.process.wait()
        # the orphaned worker notices at once that its parent is gone, and stops in the middle of its job
        wait_until(lambda: not any(alive(pid) for pid in pids), 15, "exit of the orphaned worker")

    for accepted in (first, second):
        release(settings, accepted["job_id"])
    with serve_process(settings, tmp_path / "serve.log") as served, \
            httpx.Client(base_url=served.api, timeout=60) as http:
        # the first job's worker went with the service: it is found lost (no heartbeat) and run again
        jobs = [wait_http(http, f"/jobs/{accepted['job_id']}", lambda b: b["status"] in TERMINAL, 300)
                for accepted in (first, second)]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], [job["error"] for job in jobs]
    assert [job["attempts"] for job in jobs] == [2, 1]
    (a_start, a_end), (b_start, b_end) = [(job["started_at"], job["finished_at"]) for job in jobs]
    assert a_end <= b_start or b_end <= a_start, jobs  # one device, one job at a time


def test_sigterm_stops_the_local_ray_the_service_started(roots, tmp_path):
    pytest.importorskip("ray")
    settings = settings_in(tmp_path, roots, runner="ray", ray_local_cpus=1, pause_at=PAUSE_AT)
    with serve_process(settings, tmp_path / "serve.log", timeout=300) as served, \
            httpx.Client(base_url=served.api, timeout=60) as http:
        held = http.post("/runs", json=run_body(roots)).json()  # an actor busy with a job when the signal comes
        wait_http(http, f"/runs/{held['id']}", lambda b: b["phase"].startswith("paused at"), 300)
        pids = served.pids()
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80] for pid in pids
                 if alive(pid)}
        assert any("raylet" in n for n in names.values()) and any("ray::" in n for n in names.values()), names
        served.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down in order, then ends by the signal it caught, as a process killed by it would
        assert served.process.wait(timeout=120) in (0, -signal.SIGTERM), served.text()[-3000:]
        assert "Application shutdown complete" in served.text()
        left = lambda: {pid: names.get(pid) for pid in pids if alive(pid)}  # noqa: E731
        deadline = time.monotonic() + 10  # Ray's workers notice their raylet is gone within a few seconds
        while left() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left(), f"left running after SIGTERM: {left()}"
    job = stored_job(settings, held["job_id"])  # queued again, to run when the service is back
    assert job.status == "queued" and "the service stopped while this job was running" in job.phase
