"""50 concurrent clients against a real uvicorn server on 127.0.0.1 with its worker: reads of a finished
tiny-model run (the run list, the run, its units, its roles) and preview requests all get an answer, 2xx or a 429
with Retry-After once the queue is full. How fast is for benchmarks/service.py, which runs the same mix, larger."""
from __future__ import annotations

import importlib.util
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from servicekit import API, run_body, settings_in

from backend.store import queue
from backend.store.db import make_engine, session_factory

pytestmark = pytest.mark.slow  # a real uvicorn server under load

CLIENTS = 50
REQUESTS = 6  # per client: every kind of request at least once
QUEUE = 10


def _bench():
    """benchmarks/service.py (the server, the client mix and the load), loaded by its path."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "service.py"
    spec = importlib.util.spec_from_file_location("ssah_service_benchmark", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def served(roots, tmp_path_factory):
    """A server with one CPU worker, a finished run of the tiny model, and a small queue limit."""
    settings = settings_in(tmp_path_factory.mktemp("concurrency"), roots, max_queued_jobs=QUEUE)
    with bench.serve(settings) as base, httpx.Client(base_url=base + API, timeout=60) as http:
        accepted = http.post("/runs", json=run_body(roots)).json()
        run = bench.wait_for(http, f"/runs/{accepted['id']}", timeout=120)
        assert run["status"] == "succeeded", run["error"]
        yield base, run, http


def test_fifty_concurrent_clients_all_get_answers(served):
    base, run, http = served
    preview_eval = {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"], "limit": 1, "max_new_tokens": 4}
    samples, _ = bench.load(base, run["id"], clients=CLIENTS, requests=REQUESTS, preview_eval=preview_eval)

    assert len(samples) == CLIENTS * REQUESTS
    errors = [(s.kind, s.status) for s in samples if not s.ok]
    assert not errors, errors
    assert {s.kind for s in samples} == set(bench.KINDS)
    previews = [s for s in samples if s.kind.startswith("POST")]
    assert {s.status for s in previews} <= {202, 429} and sum(s.status == 202 for s in previews) >= 1

    queued = http.get("/jobs", params={"kind": "preview", "limit": 1000}).json()
    assert queued["count"] == sum(s.status == 202 for s in previews)  # every 202 is a job, every 429 is not
    units = http.get(f"/runs/{run['id']}/units").json()
    assert len(units) == sum(run["manifest"]["roles"].values())


def test_the_queue_limit_holds_under_concurrent_submits(roots, tmp_path, database_url):
    """96 jobs waiting under a limit of 100, then 20 submits at once: exactly 4 get in, the rest get a 429."""
    settings = settings_in(tmp_path, roots, runner="none", database_url=database_url, max_queued_jobs=100)
    sessions = session_factory(make_engine(database_url))
    with sessions.begin() as session:
        for i in range(96):
            queue.enqueue_job(session, "preview", None, {"n": i})
    start = threading.Barrier(20)

    def submit(seed: int) -> int:
        with httpx.Client(base_url=base + API, timeout=120) as http:
            start.wait()
            return http.post("/runs", json=run_body(roots, seed=seed)).status_code

    with bench.serve(settings) as base, ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(submit, range(20)))
    assert sorted(codes) == [202] * 4 + [429] * 16, codes
    with sessions() as session:
        assert queue.queued_count(session) == 100
