"""The Ray runner on a real cluster of two nodes, each started as its own process as on two machines (`ray start
--head`, `ray start --address`), with the service joining it by SSAH_RAY_ADDRESS: jobs run on both nodes' actors,
and when a node stops in the middle of a job, the job is run again on the other node and no run is lost.

Needs `ray` and several minutes: it runs where SSAH_TEST_RAY_CLUSTER=1 (.ci/run sets it); elsewhere a reported
skip. The database is PostgreSQL when SSAH_TEST_POSTGRES_URL is set (as across machines), else a SQLite file (both
nodes are on this machine)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from servicekit import (API, PAUSE_AT, descendants, fresh_postgres, free_port, release, run_body, serve,
                        settings_in, wait, wait_paused, wait_until)

pytestmark = pytest.mark.slow  # two Ray nodes and a service

ray = pytest.importorskip("ray")

ENABLED = os.environ.get("SSAH_TEST_RAY_CLUSTER", "") not in ("", "0")
SKIP = "a real two-node Ray cluster takes minutes: set SSAH_TEST_RAY_CLUSTER=1 to run it (.ci/run does)"


def ray_start(*args: str, log: Path) -> subprocess.Popen:
    """`ray start ... --block` as its own process group (so it can be stopped with everything it started)."""
    command = [str(Path(sys.executable).parent / "ray"), "start", *args, "--block", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
    # Ray reads RAY_AUTH_MODE when it is imported: the nodes take this process's (disabled unless set), since
    # `ray start` alone would turn token authentication on and this process could not join
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a `ray start --block` process and every process below it."""
    for pid in descendants(process.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def nodes_alive() -> int:
    return sum(node["Alive"] for node in ray.nodes())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node and a second node, one CPU each; yields (address, head process, second node process)."""
    if not ENABLED:
        pytest.skip(SKIP)
    logs = tmp_path_factory.mktemp("ray-cluster")
    temp = tempfile.mkdtemp(prefix="ssah-ray-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ray_start("--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                     f"--temp-dir={temp}", log=logs / "head.log")
    second = None
    try:
        wait_until(lambda: "Ray runtime started" in (logs / "head.log").read_text() or head.poll() is not None,
                   180, "Ray head")
        assert head.poll() is None, (logs / "head.log").read_text()[-3000:]
        second = ray_start(f"--address={address}", "--num-cpus=1", "--num-gpus=0", log=logs / "node.log")
        ray.init(address=address)  # only to watch the second node join; the service connects on its own
        try:
            wait_until(lambda: nodes_alive() >= 2 or second.poll() is not None, 180, "second Ray node")
        finally:
            ray.shutdown()
        assert second.poll() is None, (logs / "node.log").read_text()[-3000:]
        yield address, head, second
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for process in (second, head):
            if process is not None and process.poll() is None:
                stop(process)


@pytest.fixture()
def database_url(tmp_path):
    url = os.environ.get("SSAH_TEST_POSTGRES_URL", "")
    if not url:
        yield f"sqlite:///{tmp_path / 'ssah.db'}"
        return
    with fresh_postgres(url) as fresh:
        yield fresh


def test_jobs_run_on_both_nodes_and_a_node_stopped_mid_job_has_its_job_retried_on_the_other(
        cluster, roots, tmp_path, database_url):
    address, head, second = cluster
    settings = settings_in(tmp_path, roots, runner="ray", ray_address=address, ray_workers=2, ray_num_cpus=1,
                           database_url=database_url, pause_at=PAUSE_AT)
    with serve(settings) as client:
        runner = client.app.state.runner
        wait_until(lambda: sum(w["alive"] for w in runner.health()["workers"]) == 2, 300, "two Ray actors up")
        actors = runner.health()["workers"]
        assert len({a["node_id"] for a in actors}) == 2, actors  # one actor on each node

        runs = [client.post(f"{API}/runs", json=run_body(roots, seed=seed)).json() for seed in (1, 2)]
        for accepted in runs:  # both held at once: one on each node's actor
            wait_paused(client, f"{API}/runs/{accepted['id']}")
        with client.app.state.sessions() as session:
            from backend.store.tables import Job

            holders = {a["worker_id"]: a["node_id"] for a in actors}
            on = {accepted["job_id"]: holders[session.get(Job, accepted["job_id"]).worker_id] for accepted in runs}
        assert len(set(on.values())) == 2, on

        head_node = next(a["node_id"] for a in actors if a["pid"] in descendants(head.pid))
        doomed = next(r for r in runs if on[r["job_id"]] != head_node)  # the job on the second node
        survivor = next(r for r in runs if r is not doomed)
        stop(second, signal.SIGKILL)  # the second machine goes away in the middle of its job
        release(settings, doomed["job_id"])  # its next attempt may go on at once
        release(settings, survivor["job_id"])

        done = [wait(client, f"{API}/runs/{r['id']}", timeout=600) for r in (survivor, doomed)]
        assert [d["status"] for d in done] == ["succeeded", "succeeded"], [d["error"] for d in done]
        retried = client.get(f"{API}/jobs/{doomed['job_id']}").json()
        assert retried["attempts"] == 2 and client.get(f"{API}/jobs/{survivor['job_id']}").json()["attempts"] == 1
        with client.app.state.sessions() as session:
            assert holders.get(session.get(Job, doomed["job_id"]).worker_id) in (None, head_node)
        listed = client.get(f"{API}/runs").json()["data"]
        assert {r["status"] for r in listed} == {"succeeded"} and len(listed) == 2  # no run lost
