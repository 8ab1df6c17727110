"""The Ray runner on a local Ray (CPU only, 2 CPUs, no dashboard): a job end to end, a cancel, and an actor
killed in the middle of a job (retried on a new actor, then failed when that one is killed too)."""
from __future__ import annotations

import pytest
from servicekit import API, PAUSE_AT, release, run_body, serve, settings_in, wait, wait_paused

ray = pytest.importorskip("ray")

from backend.jobs.ray_runner import RayRunner, death_reason  # noqa: E402  (needs ray)

pytestmark = pytest.mark.slow  # a local Ray cluster


@pytest.fixture(scope="module")
def service(roots, tmp_path_factory):
    """The app with the Ray runner; SSAH_RAY_ADDRESS unset, so the runner starts (and stops) a local Ray."""
    settings = settings_in(tmp_path_factory.mktemp("ray"), roots, runner="ray", ray_local_cpus=2, pause_at=PAUSE_AT)
    try:
        with serve(settings) as client:
            yield client, settings
    finally:
        if ray.is_initialized():  # the runner shuts its Ray down; this is for a start-up that failed half way
            ray.shutdown()


def test_a_job_runs_end_to_end_on_a_ray_actor_and_can_be_cancelled(service, roots):
    client, settings = service
    runner = client.app.state.runner
    assert isinstance(runner, RayRunner) and runner.num_gpus == 0 and runner.device == "cpu"

    accepted = client.post(f"{API}/runs", json=run_body(roots))
    assert accepted.status_code == 202, accepted.text
    release(settings, accepted.json()["job_id"])
    seen = []
    # the bound includes the actor's start (importing torch in a fresh process: ~10 s on a quiet machine, ~50 s
    # on a loaded one), so it is generous; it is a deadline, not a timing
    done = wait(client, f"{API}/runs/{accepted.json()['id']}", timeout=300,
                check=lambda b: seen.append(b) or b["status"] in ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done["error"]
    assert done["manifest"]["model"]["architecture"] == "llama"
    assert (settings.runs_dir / done["id"] / "units.parquet").is_file()
    assert [b["progress"] for b in seen] == sorted(b["progress"] for b in seen)
    (actor,) = runner.health()["workers"]
    assert actor["alive"] and actor["worker_id"].startswith("ray:") and actor["pid"]
    job = client.get(f"{API}/jobs/{done['job_id']}").json()
    assert job["attempts"] == 1 and client.get(f"{API}/health").json()["workers_alive"] == 1

    slow = client.post(f"{API}/runs", json=run_body(roots, seed=2)).json()
    wait_paused(client, f"{API}/runs/{slow['id']}")
    assert client.delete(f"{API}/runs/{slow['id']}").json()["status"] == "cancelling"
    final = wait(client, f"{API}/runs/{slow['id']}", timeout=30)
    assert final["status"] == "cancelled" and final["progress"] < 1
    assert not (settings.runs_dir / slow["id"]).exists()


def test_an_actor_killed_mid_job_has_its_job_retried_on_a_new_actor_then_failed_with_ray_s_reason(service, roots):
    client, settings = service
    runner = client.app.state.runner
    slow = client.post(f"{API}/runs", json=run_body(roots, seed=3)).json()
    wait_paused(client, f"{API}/runs/{slow['id']}")
    (before,) = runner.health()["workers"]
    ray.kill(ray.get_actor(before["actor"], namespace=before["namespace"]))

    again = wait(client, f"{API}/jobs/{slow['job_id']}", timeout=300,  # a new actor starts and takes it again
                 check=lambda b: b["attempts"] == 2 and b["phase"].startswith("paused at"))
    assert again["status"] == "running"
    (second,) = runner.health()["workers"]
    assert second["worker_id"] != before["worker_id"]
    ray.kill(ray.get_actor(second["actor"], namespace=second["namespace"]))

    failed = wait(client, f"{API}/runs/{slow['id']}", timeout=60)  # SSAH_MAX_RETRIES 1: spent
    assert failed["status"] == "failed"
    assert "Ray worker actor" in failed["error"] and "killed by `ray.kill`" in failed["error"], failed["error"]
    assert "after 2 attempts" in failed["error"]
    assert client.get(f"{API}/jobs/{slow['job_id']}").json()["error"] == failed["error"]
    assert not [p for p in settings.runs_dir.iterdir() if p.name.startswith(".")]  # no half-written folder

    nxt = client.post(f"{API}/runs", json=run_body(roots, seed=4)).json()
    release(settings, nxt["job_id"])
    done = wait(client, f"{API}/runs/{nxt['id']}", timeout=300)  # a new actor starts first
    assert done["status"] == "succeeded", done["error"]
    (after,) = runner.health()["workers"]
    assert after["alive"] and after["restarts"] == 2 and after["worker_id"] != second["worker_id"]


def test_death_reasons_are_ray_s_last_line():
    error = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: JobActor\n"
                         "The actor is dead because it was killed by `ray.kill`.")
    assert death_reason(error) == "it was killed by `ray.kill`"
