"""Fixtures of the browser tests: the real service (API, spawned CPU worker, dashboard mounted at /) on a free
loopback port with a temporary database and results dir, two finished runs of the tiny Llama made through the
REST API, and headless Chromium.

The service runs with tokens required (as on a team server), so every page is also checked to carry its token:
the tests browse with a write token in the URL, and a share link must open with its own read token alone.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uikit import browser, finished_run, free_port, serve_stack

from backend.settings import Settings


# A preview with a utility set waits when it reaches its pruned model's utility answers until the test releases it
# (uikit.release): a deterministic moment at which the page shows the instant estimate and no measured result yet.
# No other job reaches that phase (only previews take a utility set, and no other test gives one).
PAUSE_AT = "pruned: utility"


def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))


@pytest.fixture(scope="session")
def roots(tiny_model_path, safety_pairs, utility_pairs, tmp_path_factory) -> tuple[Path, Path]:
    """(model root holding the tiny model folder "llama", data root with calibration and evaluation files)."""
    models = tmp_path_factory.mktemp("model-root")
    shutil.copytree(tiny_model_path("llama"), models / "llama")
    data = tmp_path_factory.mktemp("data-root")
    _write_jsonl(data / "safety.jsonl", [(p.prompt, p.response) for p in safety_pairs])
    _write_jsonl(data / "utility.jsonl", [(p.prompt, p.response) for p in utility_pairs])
    _write_jsonl(data / "harmful.jsonl", [(p.prompt, "") for p in safety_pairs[:2]])
    _write_jsonl(data / "benign.jsonl", [(p.prompt, "") for p in utility_pairs[:2]])
    return models, data


@pytest.fixture(scope="session")
def service(roots, tmp_path_factory):
    """The service with tokens required (bound to loopback, but configured as a team server would be)."""
    folder = tmp_path_factory.mktemp("ui-service")
    port = free_port()
    models, data = roots
    settings = Settings(home=folder / "home", database_url=f"sqlite:///{folder / 'ssah.db'}",
                        results_dir=folder / "runs", devices=["cpu"], dtype="float32", model_roots=[models],
                        data_roots=[data], progress_interval_s=0.05, heartbeat_s=0.5, preload_engine=False,
                        worker_threads=1, host="ssah.test", pause_at=PAUSE_AT,
                        public_url=f"http://127.0.0.1:{port}")  # where people reach it: share links start there
    with serve_stack(settings, port) as served:
        yield served


@pytest.fixture(scope="session")
def token(service) -> str:
    """A write token (what `ssah tokens create` prints)."""
    from backend.store.tokens import create_token

    with service.app.state.sessions.begin() as session:
        return create_token(session, "ui tests", scope="write")[1]


@pytest.fixture(scope="session")
def api(service, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.api, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                      trust_env=False) as client:
        yield client


@pytest.fixture(scope="session")
def run(api) -> dict:
    """A finished run of the tiny Llama, made through the REST API."""
    return finished_run(api)


@pytest.fixture(scope="session")
def other_run(api, run) -> dict:
    """A second run of the same model on fewer pairs (roles move a little), for Compare."""
    return finished_run(api, samples=8)


@pytest.fixture(scope="module")
def driver():
    with browser() as d:
        yield d


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, keep a screenshot of the page as it was (test-artifacts/ui/FAILED-<test>.png)."""
    outcome = yield
    report = outcome.get_result()
    driver = item.funcargs.get("driver") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and driver is not None:
        from uikit import screenshot

        try:
            path = screenshot(driver, f"FAILED-{item.name}")
            report.sections.append(("page", f"{driver.current_url}\n{path}\n"
                                            f"{driver.find_element('tag name', 'body').text[:3000]}"))
        except Exception as error:  # the browser itself may be what failed
            report.sections.append(("page", f"no screenshot: {error!r}"))
