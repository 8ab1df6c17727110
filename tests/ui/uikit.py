"""Helpers of the browser tests and the dashboard benchmark: the whole service (API, worker, dashboard) served by
uvicorn on a free loopback port, headless Chromium driven by Selenium, and synthetic runs of any size put straight
into the store."""
from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import uvicorn

from app import mounts_for
from backend.api.app import create_app
from backend.engine.roles import Thresholds, classify
from backend.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    app: object  # the FastAPI app (its state holds the database sessions)

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"


@contextmanager
def serve_stack(settings: Settings, port: int) -> Iterator[Served]:
    """The API with the dashboard mounted at / (as `ssah serve` runs them), in a thread of this process."""
    app = create_app(settings, mounts=mounts_for("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="ssah-ui-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextmanager
def browser(width: int = 1400, height: int = 1000, offline: bool = False) -> Iterator:
    """Headless Chromium with a fresh profile and no network besides loopback; `offline`: no host name but
    localhost resolves at all, as on a machine that cannot reach a CDN."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ssah-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--disable-extensions", "--enable-unsafe-swiftshader",  # software WebGL
                f"--user-data-dir={profile}", f"--window-size={width},{height}", "--proxy-server=direct://",
                "--proxy-bypass-list=*"):
        options.add_argument(arg)
    if offline:
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(condition: Callable[[], object], timeout: float = 30, what: str = "condition", poll: float = 0.1):
    """Poll `condition` until it returns something truthy (which is returned); fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # an element not there yet, a stale element
            last_error = error
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def screenshot(driver, name: str) -> Path:
    """A full-page PNG under test-artifacts/ui/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    width = driver.execute_script("return window.innerWidth")
    driver.set_window_size(max(width, 1400), min(max(int(height) + 140, 800), 6000))
    time.sleep(0.4)  # let plotly re-layout to the new size
    driver.save_screenshot(str(path))
    return path


def poll_json(client: httpx.Client, path: str, check: Callable[[dict], bool], timeout: float = 180) -> dict:
    """GET `path` until `check(body)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(path).json()
        if check(body):
            return body
        assert time.monotonic() < deadline, f"{path}: still {body.get('status')} ({body.get('phase')})"
        time.sleep(0.2)


def finished_run(api: httpx.Client, **fields) -> dict:
    """A finished run of the tiny Llama made through the REST API (`fields` change the body)."""
    body = {"model": "llama", "safety": "safety.jsonl", "utility": "utility.jsonl", "samples": 12,
            "batch_size": 4} | fields
    accepted = api.post("/runs", json=body)
    assert accepted.status_code == 202, accepted.text
    done = poll_json(api, f"/runs/{accepted.json()['id']}", lambda b: b["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done
    return done


def release(settings: Settings, job_id: str) -> None:
    """Let a job held at SSAH_PAUSE_AT go on (before or after it got there)."""
    (settings.home / "release").mkdir(parents=True, exist_ok=True)
    (settings.home / "release" / job_id).touch()


def synthetic_units(layers: int = 32, channels: int = 14336, heads: int = 32, hidden: int = 4096,
                    head_dim: int = 128, kv_heads: int = 8, seed: int = 0) -> pd.DataFrame:
    """Units of a Llama-shaped model (default: Llama-3-8B, 459,776 units) with correlated z-scores, parameters
    as the engine counts them (a channel: its gate and up rows and down column; a head: its q and o slices and its
    share of k and v) and roles at the default thresholds."""
    rng = np.random.default_rng(seed)
    head_params = 2 * head_dim * hidden + 2 * head_dim * hidden * kv_heads // heads
    parts = []
    for layer in range(layers):
        for module, n, params in (("attn", heads, head_params), ("mlp", channels, 3 * hidden)):
            z_safety = rng.standard_normal(n)
            parts.append(pd.DataFrame({"layer": layer, "module": module, "unit": np.arange(n), "params": params,
                                       "z_safety": z_safety,
                                       "z_utility": 0.6 * z_safety + 0.8 * rng.standard_normal(n)}))
    units = pd.concat(parts, ignore_index=True)
    units["score_safety"], units["score_utility"] = np.exp(units.z_safety), np.exp(units.z_utility)
    units["role"] = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy())
    return units[["layer", "module", "unit", "params", "score_safety", "score_utility", "z_safety", "z_utility",
                  "role"]]


def register_run(settings: Settings, units: pd.DataFrame, model: str = "synthetic-llama-3-8b") -> str:
    """A finished run in the service's store (the API has no import route): its folder, then its record."""
    import json

    from backend.store.db import make_engine, session_factory
    from backend.store.tables import Job, Run, new_id, utcnow

    run_id = new_id()
    folder = settings.runs_dir / run_id
    folder.mkdir(parents=True)
    units.to_parquet(folder / "units.parquet", index=False)
    manifest = {"model": {"name": model, "architecture": "llama", "parameters": int(units.params.sum())},
                "datasets": {}, "thresholds": Thresholds().as_dict(), "positions": "response"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    sessions = session_factory(make_engine(settings.database_url))
    with sessions.begin() as session:
        now = utcnow()
        session.add(Run(id=run_id, status="succeeded", model=model, model_path="synthetic",
                        settings={"thresholds": Thresholds().as_dict(), "safety": "synthetic",
                                  "utility": "synthetic", "samples": 0},
                        cache_key=f"synthetic-{run_id}", result_dir=run_id, manifest=manifest))
        session.flush()
        session.add(Job(kind="attribution", run_id=run_id, request={"run_id": run_id}, status="succeeded",
                        progress=1.0, phase="synthetic", started_at=now, finished_at=now))
    return run_id
