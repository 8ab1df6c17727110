"""The served app end to end on each database the service supports: a SQLite file and PostgreSQL (a fresh
database on the server SSAH_TEST_POSTGRES_URL names; a reported skip without it). A run is attributed by a
spawned worker and read back, a preview runs on it, and a worker killed in the middle of a job has the job retried
by the next worker."""
from __future__ import annotations

import os
import signal

import pytest
from servicekit import API, PAUSE_AT, release, run_body, serve, settings_in, wait, wait_paused

pytestmark = pytest.mark.slow  # a served app with a spawned worker


def test_a_run_a_preview_and_a_retried_job_on_the_database(roots, tmp_path, database_url):
    settings = settings_in(tmp_path, roots, database_url=database_url, pause_at=PAUSE_AT)
    with serve(settings) as client:
        accepted = client.post(f"{API}/runs", json=run_body(roots)).json()
        release(settings, accepted["job_id"])
        run = wait(client, f"{API}/runs/{accepted['id']}", timeout=300)
        assert run["status"] == "succeeded", run["error"]
        units = client.get(f"{API}/runs/{run['id']}/units").json()
        assert len(units) == sum(run["manifest"]["roles"].values())
        assert client.get(f"{API}/runs/{run['id']}/roles").json()["units"] == len(units)

        preview = client.post(f"{API}/runs/{run['id']}/previews", json={
            "prune": {"groups": ["SCU"]}, "eval": {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"],
                                                   "limit": 1, "max_new_tokens": 4}}).json()
        release(settings, preview["id"])
        job = wait(client, f"{API}/jobs/{preview['id']}", timeout=300)
        assert job["status"] == "succeeded", job["error"]

        slow = client.post(f"{API}/runs", json=run_body(roots, seed=1)).json()
        wait_paused(client, f"{API}/runs/{slow['id']}")
        (worker,) = client.app.state.runner.health()["workers"]
        os.kill(worker["pid"], signal.SIGKILL)
        wait(client, f"{API}/jobs/{slow['job_id']}", timeout=300, check=lambda b: b["attempts"] == 2)
        release(settings, slow["job_id"])
        done = wait(client, f"{API}/runs/{slow['id']}", timeout=300)
        assert done["status"] == "succeeded", done["error"]
        assert client.get(f"{API}/jobs/{slow['job_id']}").json()["attempts"] == 2
        listed = client.get(f"{API}/runs", params={"status": "succeeded"}).json()
        assert {r["id"] for r in listed["data"]} == {run["id"], slow["id"]}
