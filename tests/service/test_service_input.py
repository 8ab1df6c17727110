"""Bad input: every bad field is a 4xx that names it, never a 500 (no worker needed: nothing has to run)."""
from __future__ import annotations

import pandas as pd
import pytest
from servicekit import API, bad_fields, run_body, serve, settings_in, write_jsonl


@pytest.fixture()
def client(roots, tmp_path):
    with serve(settings_in(tmp_path, roots, runner="none", max_queued_jobs=3, max_body_bytes=4096,
                           max_samples=500)) as client:
        yield client


@pytest.fixture()
def outside(tmp_path, tiny_model_path):
    """A real model folder and a data file outside every root, and links to them from inside the roots."""
    import shutil

    folder = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_path("llama-gqa"), folder / "model")
    (folder / "data.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    return folder


def post_run(client, roots, **fields):
    return client.post(f"{API}/runs", json=run_body(roots, **fields))


def test_model_paths_must_stay_inside_the_model_roots(client, roots, outside):
    link = roots.models / "link-out"
    link.symlink_to(outside / "model", target_is_directory=True)
    try:
        for model in ("../elsewhere/model", f"{roots.model}/../../{outside.name}/model", str(outside / "model"),
                      "link-out", str(link)):
            response = post_run(client, roots, model=model)
            assert bad_fields(response) == ["body.model"], model
            assert "outside" in response.json()["detail"][0]["msg"] or "neither" in response.json()["detail"][0]["msg"]
        assert "outside the model roots" in post_run(client, roots, model="link-out").json()["detail"][0]["msg"]
        assert bad_fields(post_run(client, roots, model="no-such-model")) == ["body.model"]
        assert bad_fields(post_run(client, roots, model="org/hub-model")) == ["body.model"]
        assert post_run(client, roots, model=str(roots.models / roots.model)).status_code == 202  # absolute, inside
    finally:
        link.unlink()


def test_data_sets_must_be_known_or_inside_the_data_roots(client, roots, outside):
    link = roots.data / "link-out.jsonl"
    link.symlink_to(outside / "data.jsonl")
    try:
        assert bad_fields(post_run(client, roots, safety="no-such-set")) == ["body.safety"]
        assert bad_fields(post_run(client, roots, utility="../elsewhere/data.jsonl")) == ["body.utility"]
        assert bad_fields(post_run(client, roots, utility="link-out.jsonl")) == ["body.utility"]
        assert bad_fields(post_run(client, roots, safety=str(outside / "data.jsonl"))) == ["body.safety"]
        (roots.data / "empty.jsonl").write_text("")
        empty = post_run(client, roots, safety="empty.jsonl")
        assert bad_fields(empty) == ["body.safety"] and "empty" in empty.json()["detail"][0]["msg"]
    finally:
        link.unlink()


def test_numbers_out_of_bounds_and_unknown_fields_are_named(client, roots):
    assert bad_fields(post_run(client, roots, samples=0)) == ["body.samples"]
    too_many = post_run(client, roots, samples=501)
    assert bad_fields(too_many) == ["body.samples"] and "SSAH_MAX_SAMPLES" in too_many.json()["detail"][0]["msg"]
    assert bad_fields(post_run(client, roots, batch_size=100_000)) == ["body.batch_size"]
    assert bad_fields(post_run(client, roots, max_length=1)) == ["body.max_length"]
    assert bad_fields(post_run(client, roots, thresholds={"h_ru": 1.5})) == ["body.thresholds.h_ru"]
    assert bad_fields(post_run(client, roots, thresholds={"h_scu": -0.1})) == ["body.thresholds.h_scu"]
    assert bad_fields(post_run(client, roots, thresholds={"h_scu": 0.6, "h_ucu": 0.6})) == ["body.thresholds.h_ucu"]
    assert bad_fields(post_run(client, roots, positions="middle")) == ["body.positions"]
    assert bad_fields(post_run(client, roots, sample=12)) == ["body.sample"]  # a typo is not ignored
    assert bad_fields(post_run(client, roots, seed="zero")) == ["body.seed"]
    assert bad_fields(client.get(f"{API}/runs", params={"limit": 0})) == ["query.limit"]


def test_unknown_ids_are_404_and_huge_bodies_413(client, roots):
    assert client.get(f"{API}/runs/nope").status_code == 404
    assert client.get(f"{API}/runs/nope").json() == {"detail": "no run 'nope'"}
    assert client.get(f"{API}/runs/nope/units").status_code == 404
    assert client.post(f"{API}/runs/nope/previews", json={}).status_code == 404
    assert client.delete(f"{API}/runs/nope").status_code == 404
    assert client.get(f"{API}/jobs/nope").status_code == 404
    assert client.delete(f"{API}/jobs/nope").status_code == 404
    huge = client.post(f"{API}/runs", json=run_body(roots, safety="x" * 5000))
    assert huge.status_code == 413 and "limit" in huge.json()["detail"]
    chunked = client.post(f"{API}/runs", content=(b" " * 1024 for _ in range(8)),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "detail" in chunked.json()
    assert client.post(f"{API}/runs", content=b"{not json", headers={"content-type": "application/json"}) \
        .status_code == 422


def test_a_full_queue_answers_429_with_retry_after(client, roots):
    for seed in range(3):
        assert post_run(client, roots, seed=seed).status_code == 202
    full = post_run(client, roots, seed=3)
    assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
    assert "queue is full" in full.json()["detail"]
    first = client.get(f"{API}/runs", params={"status": "queued"}).json()["data"][-1]
    assert client.delete(f"{API}/runs/{first['id']}").json()["status"] == "cancelled"  # a cancel makes room
    assert post_run(client, roots, seed=3).status_code == 202


def msg(response) -> str:
    return " ".join(d["msg"] for d in response.json()["detail"])


def test_data_files_are_read_at_submit_columns_and_token_lengths(client, roots):
    long_rows = [("a short request", "a short reply"), ("word " * 300, "a reply")]
    write_jsonl(roots.data / "long-row.jsonl", long_rows)
    too_long = post_run(client, roots, safety="long-row.jsonl", max_length=64)
    assert bad_fields(too_long) == ["body.safety"], too_long.text
    assert "row 2" in msg(too_long) and "over the limit of 64" in msg(too_long)
    over_context = post_run(client, roots, utility="long-row.jsonl")  # no max_length: the model's context (256)
    assert bad_fields(over_context) == ["body.utility"] and "row 2" in msg(over_context)
    assert post_run(client, roots, safety="long-row.jsonl", utility="long-row.jsonl", samples=1, seed=0,
                    max_length=64).status_code in (202, 422)  # a sample may miss the long row; never a 500

    (roots.data / "columns.csv").write_text("question,answer\nhow?,like this\n")
    (roots.data / "columns.jsonl").write_text('{"prompt": "how?", "answer": "like this"}\n')
    pd.DataFrame({"prompt": ["how?"], "reply": ["like this"]}).to_parquet(roots.data / "columns.parquet")
    for name in ("columns.csv", "columns.jsonl", "columns.parquet"):
        missing = post_run(client, roots, safety=name)
        assert bad_fields(missing) == ["body.safety"], name
        assert "response" in msg(missing), msg(missing)


def test_model_files_are_read_at_submit_gguf_and_safetensors_headers(client, roots, tiny_model_path):
    import shutil

    from tiny import write_gguf

    good = write_gguf(tiny_model_path("llama-gqa"), roots.models / "tiny-submit.gguf")
    assert post_run(client, roots, model=good.name).status_code == 202
    (roots.models / "garbage.gguf").write_bytes(b"not a model at all" * 10)
    truncated = roots.models / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in ("garbage.gguf", "truncated.gguf"):
        bad = post_run(client, roots, model=name)
        assert bad_fields(bad) == ["body.model"], name
        assert "GGUF" in msg(bad), msg(bad)

    folder = roots.models / "cut-weights"
    shutil.copytree(roots.models / roots.model, folder, dirs_exist_ok=True)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    cut = post_run(client, roots, model="cut-weights")
    assert bad_fields(cut) == ["body.model"] and "model.safetensors" in msg(cut), msg(cut)
    weights.write_bytes(b"\xff" * 8 + b"{}")
    assert bad_fields(post_run(client, roots, model="cut-weights")) == ["body.model"]


@pytest.mark.parametrize("field, value", [("samples", True), ("samples", "8"), ("batch_size", 4.0),
                                          ("seed", False), ("max_length", "64"), ("self_max_new_tokens", 8.0),
                                          ("thresholds", {"h_ru": "0.1"}), ("thresholds", {"h_scu": True})])
def test_wrong_types_are_refused_not_coerced(client, roots, field, value):
    answer = post_run(client, roots, **{field: value})
    assert bad_fields(answer)[0].startswith(f"body.{field}"), answer.text


def test_right_types_still_pass_json_integers_included_for_floats(client, roots):
    assert post_run(client, roots, samples=12, thresholds={"h_ru": 0, "h_scu": 0.02, "h_ucu": 0}).status_code == 202


def test_any_method_under_the_api_answers_json_even_with_the_dashboard_mounted(roots, tmp_path):
    from fastapi.testclient import TestClient

    from backend.api.app import create_app

    async def page(scope, receive, send):  # stands where the dashboard is mounted: HTML for every path and method
        await send({"type": "http.response.start", "status": 405, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"<!DOCTYPE html><html>405</html>"})

    with TestClient(create_app(settings_in(tmp_path, roots, runner="none"), mounts={"/": page})) as client:
        for method in ("TRACE", "CONNECT", "PROPFIND", "PUT"):
            answer = client.request(method, f"{API}/runs")
            assert answer.status_code == 405 and answer.headers["content-type"] == "application/json", method
            assert set(answer.headers["allow"].split(", ")) == {"GET", "POST"} and answer.json()["detail"]
        answer = client.request("TRACE", f"{API}/no-such-thing")
        assert answer.status_code == 404 and "no API route" in answer.json()["detail"]
        assert client.request("TRACE", "/runs/abc").headers["content-type"] == "text/html"  # the dashboard's own


def test_the_openapi_document_declares_the_errors_each_operation_returns(client):
    operations = client.get("/openapi.json").json()["paths"]
    codes = {(path.removeprefix(API), method): set(op["responses"]) for path, ops in operations.items()
             for method, op in ops.items()}
    assert {"202", "400", "401", "403", "413", "422", "429"} <= codes[("/runs", "post")]
    assert {"200", "202", "404"} <= codes[("/runs/{run_id}", "delete")]
    assert {"404", "409", "422"} <= codes[("/runs/{run_id}/units", "get")]
    assert {"202", "404", "409", "429"} <= codes[("/runs/{run_id}/previews", "post")]
    assert {"202", "404", "409"} <= codes[("/jobs/{job_id}", "delete")]
    assert {"404"} <= codes[("/shares/{share_id}", "delete")] and "401" not in codes[("/health", "get")]
    assert all("401" in c for (path, _), c in codes.items() if path != "/health")
