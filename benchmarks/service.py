"""Latency of the REST API under concurrent clients: p50/p95 of the reads a dashboard makes (the run list, a run,
its units, its roles at other thresholds) and of preview requests, against a real uvicorn server on 127.0.0.1 with
its worker, on a finished run. Prints a section of docs/benchmarks.md.

    python benchmarks/service.py [--clients 50] [--requests 20] [--model smollm2-135m-instruct] [--samples 16]
                                 [--runner local|none] [--folder DIR] [--write docs/benchmarks.md]

First one client alone makes each kind of request a few times (the service time), then the clients all at once.

Every response must be 2xx, or 429 with Retry-After for a preview when the queue is full (SSAH_MAX_QUEUED_JOBS);
anything else is counted as an error. tests/service/test_concurrency.py runs the same mix, smaller.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.api.app import create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402

API = "/api/v1"
HEADING = "## Service under concurrent clients (issue: service)"
KINDS = ("GET /runs", "GET /runs/{id}", "GET /runs/{id}/units", "GET /runs/{id}/roles", "POST /runs/{id}/previews")
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Sample:
    kind: str
    status: int  # 0: no response (connection error or timeout)
    seconds: float
    ok: bool


@contextmanager
def serve(settings: Settings, **app_kwargs) -> Iterator[str]:
    """The app (and its runner) under uvicorn in a thread, on a free 127.0.0.1 port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings, **app_kwargs), log_level="warning", lifespan="on",
                            backlog=256, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def wait_for(http: httpx.Client, path: str, timeout: float = 600) -> dict:
    """Poll a run or job until it ends."""
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(path).json()
        if body["status"] in TERMINAL:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} still {body['status']} ({body.get('phase')}) after {timeout} s")
        time.sleep(0.2)


def one_client(base: str, run_id: str, requests: int, seed: int, preview_eval: dict,
               start: threading.Barrier | None = None) -> list[Sample]:
    """One client's requests, in turn: the run list, the run, its units (json, csv, parquet, arrow in turn; gzipped
    where httpx asks for it, as it does by default), its roles at random thresholds, a preview of a random group."""
    rng = random.Random(seed)
    samples = []
    with httpx.Client(base_url=base + API, timeout=60) as http:
        if start is not None:
            start.wait()
        for i in range(requests):
            kind = KINDS[(seed + i) % len(KINDS)]
            t0 = time.perf_counter()
            try:
                if kind == "GET /runs":
                    response = http.get("/runs")
                elif kind == "GET /runs/{id}":
                    response = http.get(f"/runs/{run_id}")
                elif kind == "GET /runs/{id}/units":
                    response = http.get(f"/runs/{run_id}/units",
                                        params={"format": ("json", "csv", "parquet", "arrow")[i % 4]})
                elif kind == "GET /runs/{id}/roles":
                    response = http.get(f"/runs/{run_id}/roles", params={"h_scu": round(rng.uniform(0.005, 0.05), 3),
                                                                         "h_ru": round(rng.uniform(0.05, 0.2), 3)})
                else:
                    group = rng.choice(["SCU", "UCU", "RU"])
                    response = http.post(f"/runs/{run_id}/previews",
                                         json={"prune": {"groups": [group]}, "eval": preview_eval})
            except httpx.HTTPError:
                samples.append(Sample(kind, 0, time.perf_counter() - t0, False))
                continue
            seconds = time.perf_counter() - t0
            ok = response.is_success or (response.status_code == 429 and kind.startswith("POST")
                                         and response.headers.get("retry-after", "").isdigit())
            samples.append(Sample(kind, response.status_code, seconds, ok))
    return samples


def load(base: str, run_id: str, *, clients: int, requests: int, preview_eval: dict) -> tuple[list[Sample], float]:
    """`clients` threads that start together, each with its own connection; (samples, wall seconds)."""
    start = threading.Barrier(clients)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one_client, base, run_id, requests, seed, preview_eval, start)
                   for seed in range(clients)]
        samples = [s for f in futures for s in f.result()]
    return samples, time.perf_counter() - t0


def wire_bytes(http: httpx.Client, path: str, fmt: str, encoding: str) -> int:
    """Bytes the server sends for `path?format=fmt` to a client whose Accept-Encoding is `encoding`."""
    with http.stream("GET", path, params={"format": fmt}, headers={"Accept-Encoding": encoding}) as response:
        response.raise_for_status()
        return sum(len(chunk) for chunk in response.iter_raw())


def table(samples: list[Sample], alone: list[Sample]) -> str:
    """p50/p95/max per kind of request under load, beside the median of the same request made alone."""
    rows = ["| request | alone p50 ms | n | p50 ms | p95 ms | max ms | statuses |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for kind in (*KINDS, "all"):
        picked = [s for s in samples if kind == "all" or s.kind == kind]
        if not picked:
            continue
        ms = np.array([s.seconds * 1000 for s in picked])
        single = np.median([s.seconds * 1000 for s in alone if kind == "all" or s.kind == kind])
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(Counter(s.status for s in picked).items()))
        p50, p95 = np.percentile(ms, [50, 95])
        rows.append(f"| {kind} | {single:.0f} | {len(picked)} | {p50:.0f} | {p95:.0f} | {ms.max():.0f} | {statuses} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--samples", type=int, default=16, help="calibration pairs of the run that is read")
    parser.add_argument("--runner", choices=("local", "none"), default="local",
                        help="local: a CPU worker runs the previews meanwhile, as under `ssah serve`")
    parser.add_argument("--max-queued-jobs", type=int, default=100)
    parser.add_argument("--alone", type=int, default=4, help="requests of each kind by one client first")
    parser.add_argument("--folder", type=Path, default=None,
                        help="database and results here (kept, so a second run reads the cached run at once); "
                             "default: a temporary folder")
    parser.add_argument("--write", type=Path, default=None, help="replace this benchmark's section of that file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ssah-bench-service-") as scratch:
        folder = args.folder or Path(scratch)
        settings = Settings(database_url=f"sqlite:///{folder / 'ssah.db'}", results_dir=folder / "runs",
                            devices=["cpu"], runner="local", max_queued_jobs=args.max_queued_jobs,
                            preload_engine=True)
        # The run is made by a worker first; the load then meets the runner the flag asks for.
        with serve(settings) as base, httpx.Client(base_url=base + API, timeout=60) as http:
            accepted = http.post("/runs", json={"model": args.model, "samples": args.samples})
            accepted.raise_for_status()
            t0 = time.perf_counter()
            run = wait_for(http, f"/runs/{accepted.json()['id']}")
            if run["status"] != "succeeded":
                raise SystemExit(f"the run {run['status']}: {run['error']}")
            attribution_s = time.perf_counter() - t0
        units = sum(run["manifest"]["roles"].values())
        preview_eval = {"harmful": ["advbench-eval"], "benign": ["benign-prompts"], "limit": 2, "max_new_tokens": 8}
        with serve(settings.model_copy(update={"runner": args.runner})) as base:
            with httpx.Client(base_url=base + API, timeout=120) as http:  # each format is encoded once, then a file
                first = {}
                for fmt in ("json", "csv", "arrow"):
                    t0 = time.perf_counter()
                    http.get(f"/runs/{run['id']}/units", params={"format": fmt}).raise_for_status()
                    first[fmt] = time.perf_counter() - t0
            alone = one_client(base, run["id"], len(KINDS) * args.alone, 0, preview_eval)
            samples, wall = load(base, run["id"], clients=args.clients, requests=args.requests,
                                 preview_eval=preview_eval)
            with httpx.Client(base_url=base + API, timeout=60) as http:  # the queued previews are not the point
                queued = http.get("/jobs", params={"kind": "preview", "status": "queued", "limit": 1000}).json()
                for job in queued["data"]:
                    http.delete(f"/jobs/{job['id']}")
                wire = {(fmt, enc): wire_bytes(http, f"/runs/{run['id']}/units", fmt, enc)
                        for fmt in ("json", "csv", "arrow", "parquet") for enc in ("gzip", "identity")}

    errors = [s for s in alone + samples if not s.ok]
    made = ("from the cache of an earlier run in --folder" if run["cached"]
            else f"attributed in {attribution_s:.0f} s first")
    command = " ".join(["python benchmarks/service.py", *sys.argv[1:]])
    text = "\n".join([
        HEADING, "",
        f"`{command}` on {platform.machine()} with {os.cpu_count()} CPUs (Python {platform.python_version()}), "
        f"{platform.platform(terse=True)}.", "",
        f"A real uvicorn server on 127.0.0.1 (SQLite file, runner `{args.runner}`"
        + (", one CPU worker running the previews meanwhile" if args.runner == "local" else "")
        + f"), {args.clients} concurrent clients (threads, one httpx connection each) x {args.requests} requests, "
        f"in turn: the run list, a run, its units (json / csv / parquet / arrow, gzipped where the client accepts it: "
        f"httpx does by default), its roles at random thresholds, a preview "
        f"request. The run read: {args.model}, {args.samples} calibration pairs, {units} units ({made}). "
        f"Queue limit {args.max_queued_jobs}: a preview beyond it is a 429 with Retry-After, which counts as an "
        "answer. 'alone': the median of the same request made by one client before the load.", "",
        table(samples, alone), "",
        "The first request for each format of the units encodes the table and gzips it once, kept as a file "
        "beside it (" + ", ".join(f"{fmt} {t:.1f} s" for fmt, t in first.items()) + "); the table above starts "
        "after that. Bytes on the wire for the run's units table (" + ", ".join(
            f"{fmt} {wire[fmt, 'gzip'] / 1e6:.2f} MB gzipped / {wire[fmt, 'identity'] / 1e6:.2f} MB plain"
            if fmt != "parquet" else f"parquet {wire[fmt, 'identity'] / 1e6:.2f} MB"
            for fmt in ("json", "csv", "arrow", "parquet")) + ").", "",
        f"{len(samples)} requests in {wall:.1f} s ({len(samples) / wall:.0f} requests/s); "
        f"errors (not 2xx, nor 429 with Retry-After): {len(errors)}.", ""])
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from attribution import replace_section

        replace_section(args.write, HEADING, text)
    if errors:
        failed = sorted(Counter((e.kind, e.status) for e in errors).items())
        raise SystemExit(f"{len(errors)} request(s) failed: {failed}")


if __name__ == "__main__":
    main()
