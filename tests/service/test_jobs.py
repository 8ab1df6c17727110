"""A job as the worker runs it, in this process (no worker process is spawned): the request the API stored is
rebuilt into the verb's request and run, and what the job publishes is what the REST API then serves."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from servicekit import API, bad_fields, run_body, settings_in

from backend.api.app import create_app
from backend.jobs.context import Context, ModelCache
from backend.jobs.worker import run_job
from backend.store.folders import RunFolders
from backend.store.queue import claim
from backend.verbs import baseline_cache


def test_an_attribution_and_a_preview_run_through_the_workers_code(roots, tmp_path):
    settings = settings_in(tmp_path, roots, runner="none")
    client = TestClient(create_app(settings))
    ctx = Context(settings, "cpu", ModelCache(1), client.app.state.sessions, RunFolders(settings.runs_dir))

    accepted = client.post(f"{API}/runs", json=run_body(roots)).json()
    run_job(ctx, claim(ctx.sessions, "test"))
    run = client.get(f"{API}/runs/{accepted['id']}").json()
    assert run["status"] == "succeeded", run["error"]
    assert sorted(p.name for p in (settings.runs_dir / run["id"]).iterdir()) == \
        ["manifest.json", "means.safetensors", "units.parquet", "variances.safetensors"]

    body = {"prune": {"groups": ["SCU"]}, "eval": {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"],
                                                    "limit": 2, "max_new_tokens": 6, "judge": "keyword"}}
    preview = client.post(f"{API}/runs/{run['id']}/previews", json=body).json()
    stored = client.get(f"{API}/jobs/{preview['id']}").json()["request"]
    assert stored["prune"]["groups"] == ["SCU"] and "paths" not in stored["sets"]  # server paths stay private
    run_job(ctx, claim(ctx.sessions, "test"))
    job = client.get(f"{API}/jobs/{preview['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["run_id"] == run["id"] and result["selection"]["label"] == "SCU"
    assert result["judge"]["judge"] == "keyword" and len(result["generations"]) == 4
    asr = result["pruned"]["counts"]["asr"]
    assert asr["n"] == 2 and 0 <= asr["ci_low"] <= asr["rate"] <= asr["ci_high"] <= 1
    assert set(result["changes"]) == {"asr", "over_refusal", "off_topic", "degenerate"}
    assert all(side["reason"] for g in result["generations"] for side in (g["baseline"], g["pruned"]))


@pytest.mark.slow  # three jobs on a tiny model, one of them thirteen generations
def test_a_sweep_is_one_job_whose_points_share_the_unpruned_replies(roots, tmp_path):
    settings = settings_in(tmp_path, roots, runner="none")
    client = TestClient(create_app(settings))
    ctx = Context(settings, "cpu", ModelCache(1), client.app.state.sessions, RunFolders(settings.runs_dir))
    accepted = client.post(f"{API}/runs", json=run_body(roots)).json()
    run_job(ctx, claim(ctx.sessions, "test"))
    evaluation = {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"], "limit": 2, "max_new_tokens": 5,
                  "judge": "keyword"}
    body = {"group": "SCU", "fractions": [0.05, 0.02], "eval": evaluation, "controls": 5}
    few = client.post(f"{API}/runs/{accepted['id']}/sweeps", json={**body, "controls": 3})
    assert bad_fields(few) == ["body.controls"] and "at least 5" in few.json()["detail"][0]["msg"]
    sweep = client.post(f"{API}/runs/{accepted['id']}/sweeps", json=body).json()
    assert client.get(f"{API}/jobs/{sweep['id']}").json()["request"]["controls"] == 5
    preview = client.post(f"{API}/runs/{accepted['id']}/previews",
                          json={"prune": {"groups": ["SCU"]}, "eval": evaluation}).json()
    estimate = client.post(f"{API}/runs/{accepted['id']}/estimates",
                           json={"prune": {"groups": ["SCU"]}, "eval": evaluation}).json()
    for _ in range(3):
        run_job(ctx, claim(ctx.sessions, "test"))
    done = client.get(f"{API}/jobs/{sweep['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert [p["fraction"] for p in result["points"]] == [0.02, 0.05]  # sorted
    shares = [p["selection"]["param_fraction"] for p in result["points"]]
    assert shares[0] < shares[1] and all(p["control"]["selection"]["param_fraction"] > 0 for p in result["points"])
    seeds = [p["control"]["seeds"] for p in result["points"]]
    assert seeds == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]] and result["settings"]["controls"] == 5
    assert all(b["min"] <= b["mean"] <= b["max"] for p in result["points"] for b in p["control"]["band"].values())
    assert all(len(p["replies"]) == len(result["prompts"]) == 4 for p in result["points"])
    # the preview after it reads the same unpruned replies (generated once, kept by model, prompts and decoding)
    replies = [r["reply"] for r in result["baseline_replies"]]
    assert any(json.loads(p.read_text()) == replies for p in baseline_cache().glob("*.json"))
    previewed = client.get(f"{API}/jobs/{preview['id']}").json()["result"]
    assert [g["baseline"]["reply"] for g in previewed["generations"]] == [r["reply"] for r in result["baseline_replies"]]
    probe = client.get(f"{API}/jobs/{estimate['id']}").json()["result"]
    assert probe["baseline"]["harmful"]["n"] == 2 and 0 <= probe["pruned"]["benign"]["mean"] <= 1
    bad = client.post(f"{API}/runs/{accepted['id']}/sweeps", json={**body, "fractions": [0.0]})
    assert bad.status_code == 422
    older = client.post(f"{API}/runs/{accepted['id']}/sweeps", json={**body, "controls": True}).json()
    assert client.get(f"{API}/jobs/{older['id']}").json()["request"]["controls"] == 5  # a client before bands


def test_running_out_of_gpu_memory_says_how_much_was_asked_and_what_to_change():
    import torch

    from backend.jobs.tasks import describe_error

    error = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 3.50 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.25 GiB "
        "is free. Including non-PyTorch memory, this process has 77.93 GiB memory in use.")
    text = describe_error(error, batch_size=32, dtype="float32")
    assert text.startswith("out of GPU memory")
    assert "3.50 GiB" in text and "79.19 GiB" in text and "1.25 GiB" in text
    assert "batch_size" in text and "32" in text and "bfloat16" in text
    assert "SSAH_DTYPE" not in describe_error(error, batch_size=1, dtype="bfloat16")  # already the smaller one
    other = describe_error(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), batch_size=4)
    assert "20.00 MiB" in other and "batch_size" in other
    assert describe_error(ValueError("nope")) == "ValueError: nope"
