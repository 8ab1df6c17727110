"""A unit's page data through the REST API, on a tiny-model run made in this process (the worker's code runs the
jobs, no worker is spawned): its numbers against the units table and the run's files, an inspect job that caches
top tokens and contexts in the run folder, one layer's units, a preview pruning one unit or one layer's SCU, share
tokens reading all of it, and the 404 / 409 / 422 answers for what does not exist or cannot be read yet."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file
from servicekit import API, bad_fields, run_body, settings_in

from backend.api.app import create_app
from backend.jobs.context import Context, ModelCache
from backend.jobs.worker import run_job
from backend.store.folders import RunFolders
from backend.store.queue import claim
from backend.store.tokens import create_token


@pytest.fixture(scope="module")
def served(roots, tmp_path_factory):
    """(client, worker context, write headers, run id, units table) for one finished run; tokens are required."""
    settings = settings_in(tmp_path_factory.mktemp("units"), roots, runner="none", host="0.0.0.0")
    client = TestClient(create_app(settings))
    ctx = Context(settings, "cpu", ModelCache(1), client.app.state.sessions, RunFolders(settings.runs_dir))
    with ctx.sessions.begin() as session:
        writer = {"Authorization": f"Bearer {create_token(session, 'tests')[1]}"}
    accepted = client.post(f"{API}/runs", json=run_body(roots), headers=writer).json()
    early = client.get(f"{API}/runs/{accepted['id']}/units/mlp/0/0", headers=writer)
    assert early.status_code == 409 and "queued" in early.json()["detail"]  # no units before the run succeeded
    run_job(ctx, claim(ctx.sessions, "test"))
    run = client.get(f"{API}/runs/{accepted['id']}", headers=writer).json()
    assert run["status"] == "succeeded", run["error"]
    table = pd.DataFrame(client.get(f"{API}/runs/{run['id']}/units", headers=writer).json())
    return client, ctx, writer, run["id"], table


def test_a_units_numbers_are_its_row_with_percentiles_boundaries_and_channel_statistics(served):
    client, ctx, writer, run_id, table = served
    scu = table[(table.role == "SCU") & (table.module == "mlp")].iloc[0]
    layer, unit = int(scu.layer), int(scu.unit)
    body = client.get(f"{API}/runs/{run_id}/units/mlp/{layer}/{unit}", headers=writer).json()
    for name in ("params", "score_safety", "score_utility", "z_safety", "z_utility", "role"):
        assert body[name] == pytest.approx(scu[name]) if name != "role" else body[name] == scu[name]
    assert body["diff"] == pytest.approx(scu.z_safety - scu.z_utility)
    block = table[(table.layer == layer) & (table.module == "mlp")]
    assert body["layer_units"] == len(block) and body["model_units"] == len(table)
    assert body["percentiles"]["layer"]["z_safety"] == pytest.approx(100 * (block.z_safety <= scu.z_safety).mean())
    assert body["percentiles"]["model"]["score_utility"] == pytest.approx(
        100 * (table.score_utility <= scu.score_utility).mean())
    scu_boundary = body["boundaries"]["SCU"]
    diff = table.z_safety - table.z_utility
    assert scu_boundary["key"] == "diff" and scu_boundary["inside"] and scu_boundary["distance"] >= 0
    assert scu_boundary["cutoff"] == pytest.approx(diff[table.role == "SCU"].min())
    folder = ctx.settings.runs_dir / run_id
    means, variances = load_file(folder / "means.safetensors"), load_file(folder / "variances.safetensors")
    for split in ("safety", "utility"):
        assert body["channels"][split]["mean"] == pytest.approx([means[f"{split}.mlp.{layer}"][unit]])
        assert body["channels"][split]["variance"] == pytest.approx([variances[f"{split}.mlp.{layer}"][unit]])
    assert body["top_tokens"] is None and body["contexts"] is None and body["inspection"] is None

    head = client.get(f"{API}/runs/{run_id}/units/attn/1/3", headers=writer,
                      params={"h_scu": 0.5, "h_ucu": 0.0, "h_ru": 0.0}).json()
    d = len(head["channels"]["safety"]["mean"])
    np.testing.assert_allclose(head["channels"]["utility"]["mean"], means["utility.attn.1"][3 * d:4 * d], rtol=1e-6)
    assert head["thresholds"]["h_scu"] == 0.5 and head["boundaries"]["UCU"]["cutoff"] is None
    assert head["role"] == ("SCU" if head["boundaries"]["SCU"]["distance"] >= 0 else "CU")


def test_an_inspection_job_caches_top_tokens_and_contexts_that_the_unit_then_serves(served):
    client, ctx, writer, run_id, table = served
    path = f"{API}/runs/{run_id}/units/mlp/1/5"
    first = client.post(f"{path}/inspections", headers=writer)
    assert first.status_code == 202
    again = client.post(f"{path}/inspections", headers=writer)
    assert again.json()["job_id"] == first.json()["job_id"]  # one job per unit while it is queued
    assert client.get(path, headers=writer).json()["inspection"]["status"] == "queued"
    run_job(ctx, claim(ctx.sessions, "test"))
    body = client.get(path, headers=writer).json()
    assert body["inspection"]["status"] == "succeeded", body["inspection"]["error"]
    cached = json.loads((ctx.settings.runs_dir / run_id / "inspect" / "mlp.1.5.json").read_text())
    assert body["top_tokens"] == cached["top_tokens"] and body["contexts"] == cached["contexts"]
    promoted = body["top_tokens"]["promoted"]
    assert len(promoted) == 20 and [t["logit"] for t in promoted] == sorted((t["logit"] for t in promoted),
                                                                          reverse=True)
    for split in ("safety", "utility"):
        contexts = body["contexts"][split]
        assert contexts and [c["activation"] for c in contexts] == sorted((c["activation"] for c in contexts),
                                                                          reverse=True)
        assert all(c["activations"][c["focus"]] == c["activation"] and c["tokens"][c["focus"]] == c["token"]
                   for c in contexts)
    job = client.get(f"{API}/jobs/{first.json()['job_id']}", headers=writer).json()
    assert job["kind"] == "inspect" and job["result"]["top_tokens"] == body["top_tokens"]


def test_a_layer_lists_its_units_with_roles_and_the_model_wide_boundaries(served):
    client, ctx, writer, run_id, table = served
    body = client.get(f"{API}/runs/{run_id}/layers/1", headers=writer).json()
    rows = table[table.layer == 1]
    assert body["layers"] == sorted(table.layer.unique().tolist())
    assert body["units"]["role"] == rows.role.tolist() and body["units"]["unit"] == rows.unit.tolist()
    assert body["cutoffs"]["UCU"] == pytest.approx((table.z_safety - table.z_utility)[table.role == "UCU"].max())


def test_a_preview_prunes_one_unit_or_one_layers_scu(served):
    client, ctx, writer, run_id, table = served
    scu = table[table.role == "SCU"].iloc[0]
    evaluation = {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"], "limit": 1, "max_new_tokens": 2}
    one = {"units": [{"layer": int(scu.layer), "module": scu.module, "unit": int(scu.unit)}]}
    accepted = client.post(f"{API}/runs/{run_id}/previews", headers=writer, json={"prune": one, "eval": evaluation})
    assert accepted.status_code == 202, accepted.text
    run_job(ctx, claim(ctx.sessions, "test"))
    result = client.get(f"{API}/jobs/{accepted.json()['job_id']}", headers=writer).json()["result"]
    assert result["selection"]["units"] == 1
    assert result["selection"]["label"] == f"{scu.module}.{scu.layer}.{scu.unit}"
    layer_scu = {"groups": ["SCU"], "layers": [int(scu.layer)]}
    accepted = client.post(f"{API}/runs/{run_id}/previews", headers=writer,
                           json={"prune": layer_scu, "eval": evaluation})
    assert accepted.status_code == 202, accepted.text
    stored = client.get(f"{API}/jobs/{accepted.json()['job_id']}", headers=writer).json()["request"]["prune"]
    assert stored["layers"] == [int(scu.layer)] and stored["groups"] == ["SCU"]
    client.delete(f"{API}/jobs/{accepted.json()['job_id']}", headers=writer)
    for prune in ({"units": [{"layer": 0, "module": "mlp", "unit": 10_000}]}, {"groups": ["SCU"], "layers": [99]}):
        refused = client.post(f"{API}/runs/{run_id}/previews", headers=writer, json={"prune": prune,
                                                                                    "eval": evaluation})
        assert bad_fields(refused) == ["body.prune"], refused.text
    refused = client.post(f"{API}/runs/{run_id}/previews", headers=writer,
                          json={"prune": {"units": [{"layer": 0, "module": "ffn", "unit": 1}]}, "eval": evaluation})
    assert bad_fields(refused) == ["body.prune.units.0.module"]


def test_units_that_do_not_exist_are_404_and_bad_paths_422_naming_the_problem(served):
    client, ctx, writer, run_id, table = served
    heads = int(((table.layer == 0) & (table.module == "attn")).sum())
    missing = client.get(f"{API}/runs/{run_id}/units/attn/0/{heads}", headers=writer)
    assert missing.status_code == 404 and f"{heads} attn heads" in missing.json()["detail"]
    assert "no layer 7" in client.get(f"{API}/runs/{run_id}/units/mlp/7/0", headers=writer).json()["detail"]
    assert client.post(f"{API}/runs/{run_id}/units/mlp/7/0/inspections", headers=writer).status_code == 404
    assert client.get(f"{API}/runs/{run_id}/layers/7", headers=writer).status_code == 404
    assert client.get(f"{API}/runs/nope/units/mlp/0/0", headers=writer).status_code == 404
    assert bad_fields(client.get(f"{API}/runs/{run_id}/units/ffn/0/0", headers=writer)) == ["path.module"]
    assert bad_fields(client.get(f"{API}/runs/{run_id}/units/mlp/0/-1", headers=writer)) == ["path.unit"]
    assert bad_fields(client.get(f"{API}/runs/{run_id}/units/mlp/x/0", headers=writer)) == ["path.layer"]
    assert bad_fields(client.get(f"{API}/runs/{run_id}/units/mlp/0/0", headers=writer,
                                 params={"h_scu": 0.7, "h_ucu": 0.6})) == ["query.h_ucu"]


def test_a_share_token_reads_units_and_layers_but_starts_no_job(served):
    client, ctx, writer, run_id, table = served
    with ctx.sessions.begin() as session:
        reader = create_token(session, "share", scope="read", run_id=run_id)[1]
    path = f"{API}/runs/{run_id}/units/mlp/0/2"
    assert client.get(path, params={"token": reader}).status_code == 200
    assert client.get(f"{API}/runs/{run_id}/layers/0", params={"token": reader}).status_code == 200
    refused = client.post(f"{path}/inspections", headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    assert client.get(path).status_code == 401
