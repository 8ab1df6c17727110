"""Runs as experiments: names, tags and notes a person sets, and the lineage a run records (the run whose model a
fine-tune started from); a database made by an earlier version gains the new columns and loses nothing."""
from __future__ import annotations

import sqlite3

from fastapi.testclient import TestClient
from servicekit import API, run_body, settings_in

from backend.api.app import create_app
from backend.jobs.context import Context, ModelCache
from backend.jobs.worker import run_job
from backend.store.db import make_engine, session_factory
from backend.store.folders import RunFolders
from backend.store.queue import claim
from backend.store.tables import Run


def test_a_run_has_a_name_tags_and_notes_that_can_be_changed_and_searched(roots, tmp_path):
    client = TestClient(create_app(settings_in(tmp_path, roots, runner="none")))
    made = client.post(f"{API}/runs", json=run_body(roots, name="SmolLM2 safe, 12 pairs", tags=["smoke", "safe"]))
    other = client.post(f"{API}/runs", json=run_body(roots, seed=1)).json()
    run = client.get(f"{API}/runs/{made.json()['id']}").json()
    assert run["name"] == "SmolLM2 safe, 12 pairs" and run["tags"] == ["smoke", "safe"] and run["notes"] is None
    assert "name" not in run["settings"] and "tags" not in run["settings"]  # identity is not part of the settings
    changed = client.patch(f"{API}/runs/{run['id']}", json={"notes": "baseline for the sweep", "tags": ["safe"]}).json()
    assert changed["notes"] == "baseline for the sweep" and changed["tags"] == ["safe"] and changed["name"] == run["name"]
    assert client.patch(f"{API}/runs/{run['id']}", json={"name": None}).json()["name"] is None
    assert [r["id"] for r in client.get(f"{API}/runs", params={"tag": "safe"}).json()["data"]] == [run["id"]]
    assert {r["id"] for r in client.get(f"{API}/runs", params={"q": other["id"][:8]}).json()["data"]} == {other["id"]}
    assert client.patch(f"{API}/runs/{run['id']}", json={"tags": ["x" * 41]}).status_code == 422
    assert client.patch(f"{API}/runs/{run['id']}", json={"colour": "red"}).status_code == 422
    assert client.patch(f"{API}/runs/nope", json={"notes": "x"}).status_code == 404


def test_a_run_of_a_fine_tuned_model_names_the_run_it_came_from(roots, tmp_path):
    settings = settings_in(tmp_path, roots, runner="none")
    client = TestClient(create_app(settings))
    ctx = Context(settings, "cpu", ModelCache(1), client.app.state.sessions, RunFolders(settings.runs_dir))
    first = client.post(f"{API}/runs", json=run_body(roots)).json()
    run_job(ctx, claim(ctx.sessions, "test"))
    assert client.get(f"{API}/runs/{first['id']}").json()["origin"] == {"kind": "base"}
    tune = client.post(f"{API}/runs/{first['id']}/finetunes",
                       json={"data": "utility.jsonl", "steps": 1, "freeze": {"groups": ["SCU"]}}).json()
    run_job(ctx, claim(ctx.sessions, "test"))
    tuned = client.get(f"{API}/jobs/{tune['id']}").json()
    assert tuned["status"] == "succeeded", tuned["error"]
    second = client.post(f"{API}/runs", json=run_body(roots, model=tuned["result"]["model"])).json()
    run = client.get(f"{API}/runs/{second['id']}").json()
    assert run["parent_run"] == first["id"]
    assert run["origin"]["kind"] == "finetune" and run["origin"]["job"] == tune["id"]
    assert run["origin"]["how"] == "freeze SCU"


def test_a_database_of_an_earlier_version_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the runs table as the previous version made it
        db.execute("CREATE TABLE runs (id VARCHAR(32) PRIMARY KEY, status VARCHAR(16), model TEXT, model_path TEXT, "
                   "settings JSON, cache_key VARCHAR(64), cached BOOLEAN, result_dir TEXT, manifest JSON, error TEXT, "
                   "created_at DATETIME, updated_at DATETIME)")
        db.execute("INSERT INTO runs VALUES ('r1', 'succeeded', 'm', 'm', '{}', 'k', 0, 'r1', NULL, NULL, "
                   "'2026-01-01 00:00:00', '2026-01-01 00:00:00')")
    sessions = session_factory(make_engine(f"sqlite:///{path}"))
    with sessions() as session:
        run = session.get(Run, "r1")
        assert run.status == "succeeded" and run.name is None and run.tags is None and run.parent_run is None
