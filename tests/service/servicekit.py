"""Helpers of the service tests: settings on a tmp folder, request bodies, polling, and a served app."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
API = "/api/v1"
TERMINAL = ("succeeded", "failed", "cancelled")
BIG = 200  # pairs in big.jsonl: with batch_size 1 an attribution reports its progress many times
PAUSE_AT = "forward"  # a service made with pause_at=PAUSE_AT holds every job at its first forward batch


@dataclass(frozen=True)
class Roots:
    models: Path  # holds the tiny model folder "llama-gqa"
    data: Path  # safety.jsonl, utility.jsonl, big.jsonl, harmful.jsonl, benign.jsonl
    model: str = "llama-gqa"


@contextmanager
def fresh_postgres(url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `url` (dropped on leaving); yields its URL."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"ssah_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    return path


def settings_in(folder: Path, roots: Roots, **overrides) -> Settings:
    """A service whose database (a real SQLite file) and results live in `folder`, with one CPU worker."""
    values = dict(home=folder / "home", database_url=f"sqlite:///{folder / 'ssah.db'}", results_dir=folder / "runs",
                  devices=["cpu"], dtype="float32", model_roots=[roots.models], data_roots=[roots.data],
                  progress_interval_s=0.05, heartbeat_s=0.5, preload_engine=False, worker_threads=1)
    return Settings(**(values | overrides))


@contextmanager
def serve(settings: Settings, **kwargs) -> Iterator[TestClient]:
    """The app with its runner started (and stopped on leaving)."""
    with TestClient(create_app(settings, **kwargs)) as client:
        yield client


def run_body(roots: Roots, **fields) -> dict:
    """A small attribution of the tiny model on the 12-pair calibration files."""
    return {"model": roots.model, "safety": "safety.jsonl", "utility": "utility.jsonl", "samples": 12,
            "batch_size": 4} | fields


def wait_paused(client: TestClient, path: str, timeout: float = 300) -> dict:
    """Wait for the explicit signal that a job is held mid-run (its phase says `paused at ...`): from then on it
    cannot finish before the test kills its worker or cancels it."""
    return wait(client, path, timeout=timeout, check=lambda b: b["phase"].startswith("paused at"))


def release(settings: Settings, job_id: str) -> None:
    """Let a job held at SSAH_PAUSE_AT go on (before or after it got there)."""
    (settings.home / "release").mkdir(parents=True, exist_ok=True)
    (settings.home / "release" / job_id).touch()


def wait(client: TestClient, path: str, *, until: tuple[str, ...] = TERMINAL, timeout: float = 120,
         check: Callable[[dict], bool] | None = None, headers: dict | None = None) -> dict:
    """Poll `path` until its status is in `until` (or `check` holds); returns the last body."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(path, headers=headers).json()
        if check(body) if check else body["status"] in until:
            return body
        assert time.monotonic() < deadline, f"{path} still {body.get('status')} ({body.get('phase')}) after {timeout} s"
        time.sleep(0.05)


def bad_fields(response) -> list[str]:
    """The dotted field names a 422 names, e.g. ['body.thresholds.h_ru']."""
    assert response.status_code == 422, (response.status_code, response.text)
    return [".".join(map(str, d["loc"])) for d in response.json()["detail"]]


# -- a real `ssah serve` process (for what only a separate process shows: its log, signals, kill -9) -----------


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the SSAH_* variables `ssah serve` reads them from."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = json.dumps([str(v) for v in value])
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"SSAH_{name.upper()}"] = str(value)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A `ssah serve` process: its base URL, the process (leader of its own process group) and its log file."""

    url: str
    process: subprocess.Popen
    log: Path

    @property
    def api(self) -> str:
        return self.url + API

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> set[int]:
        """The server and every process below it (its workers, a local Ray's processes)."""
        return descendants(self.process.pid)


def descendants(root: int) -> set[int]:
    """`root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
            ppid = int(rest.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)
    return value


@contextmanager
def serve_process(settings: Settings, log: Path, *, port: int | None = None,
                  timeout: float = 180) -> Iterator[Served]:
    """`python -m backend.cli serve` on 127.0.0.1 with `settings` in its environment (output to `log`), once its
    health answers; stopped (SIGTERM, then SIGKILL of its process group) on leaving."""
    port = port or free_port()
    env = os.environ | settings_env(settings) | {"PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port",
                                    str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"ssah serve exited with {process.returncode}:\n{served.text()[-3000:]}"
            try:
                if httpx.get(served.api + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"ssah serve did not answer in {timeout} s:\n{served.text()[-3000:]}"
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind in its group
        except ProcessLookupError:
            pass
        process.wait()
