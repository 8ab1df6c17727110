"""The REST contract end to end on a tiny model, with a real SQLite file and a real spawned worker."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from contract import check_run_folder
from servicekit import API, PAUSE_AT, bad_fields, release, run_body, serve, settings_in, wait, wait_paused

from backend.engine.judge import VERDICTS

pytestmark = pytest.mark.slow  # a served app with a spawned worker


@pytest.fixture(scope="module")
def service(roots, tmp_path_factory):
    settings = settings_in(tmp_path_factory.mktemp("rest"), roots)
    with serve(settings) as client:
        yield client, settings


@pytest.fixture(scope="module")
def client(service):
    return service[0]


@pytest.fixture(scope="module")
def runs_dir(service) -> Path:
    return service[1].runs_dir


@pytest.fixture(scope="module")
def run(client, roots) -> dict:
    """A finished run of the tiny model."""
    accepted = client.post(f"{API}/runs", json=run_body(roots))
    assert accepted.status_code == 202, accepted.text
    done = wait(client, f"{API}/runs/{accepted.json()['id']}")
    assert done["status"] == "succeeded", done
    return done


def eval_body(**fields) -> dict:
    return {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"], "limit": 2, "max_new_tokens": 8} | fields


def test_a_run_reports_progress_by_phase_and_writes_a_contract_run_folder(client, roots, runs_dir):
    accepted = client.post(f"{API}/runs", json=run_body(roots, safety="big.jsonl", utility="big.jsonl",
                                                         samples=150, batch_size=1))
    assert accepted.status_code == 202
    assert accepted.json()["status"] == "queued" and not accepted.json()["cached"]
    seen = []
    final = wait(client, f"{API}/runs/{accepted.json()['id']}",
                 check=lambda body: seen.append(body) or body["status"] in ("succeeded", "failed"))
    assert final["status"] == "succeeded", final["error"]
    progress = [b["progress"] for b in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    phases = {b["phase"].rsplit(" ", 1)[0] for b in seen if b["status"] == "running"}
    assert {"forward safety", "forward utility"} & phases, phases
    manifest = final["manifest"]
    assert manifest["datasets"]["safety"]["samples"] == 150 and manifest["model"]["architecture"] == "llama"
    folder = runs_dir / final["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "means.safetensors", "units.parquet",
                                                        "variances.safetensors"]


def test_a_finished_run_folder_passes_the_contract_checker(run, runs_dir):
    check_run_folder(runs_dir / run["id"])


def test_server_sent_events_follow_a_job_to_its_end(client, roots):
    accepted = client.post(f"{API}/runs", json=run_body(roots, safety="big.jsonl", utility="big.jsonl",
                                                         samples=100, batch_size=1, seed=1)).json()
    events = []
    with client.stream("GET", f"{API}/jobs/{accepted['job_id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"
    assert all(kind == "progress" for kind, _ in events[:-1])
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress) and len(events) >= 2


def test_units_come_in_json_csv_and_parquet_with_the_same_rows(client, run, runs_dir):
    stored = pd.read_parquet(runs_dir / run["id"] / "units.parquet")
    parquet = client.get(f"{API}/runs/{run['id']}/units", params={"format": "parquet"})
    assert parquet.status_code == 200
    assert parquet.content == (runs_dir / run["id"] / "units.parquet").read_bytes()

    csv = client.get(f"{API}/runs/{run['id']}/units", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(csv.text)), stored, check_dtype=False)
    assert (runs_dir / run["id"] / ".units.csv").is_file()  # encoded once, then served as a file
    assert client.get(f"{API}/runs/{run['id']}/units", params={"format": "csv"}).content == csv.content

    records = client.get(f"{API}/runs/{run['id']}/units").json()
    assert len(records) == len(stored) and list(records[0]) == list(stored.columns)
    as_json = pd.DataFrame(records)
    assert (as_json[["layer", "module", "unit", "params", "role"]] == stored[["layer", "module", "unit", "params",
                                                                              "role"]]).all().all()
    np.testing.assert_allclose(as_json.z_safety, stored.z_safety, rtol=1e-13)


def test_roles_are_recomputed_from_the_stored_z_scores(client, run, runs_dir):
    units = pd.read_parquet(runs_dir / run["id"] / "units.parquet")
    total = units.params.sum()
    stored = client.get(f"{API}/runs/{run['id']}/roles").json()
    assert stored["thresholds"] == {"h_ru": 0.10, "h_scu": 0.01, "h_ucu": 0.05}
    assert {r: v["units"] for r, v in stored["overall"].items()} == run["manifest"]["roles"]

    wide = client.get(f"{API}/runs/{run['id']}/roles", params={"h_scu": 0.3, "h_ucu": 0, "h_ru": 0}).json()
    scu = wide["overall"]["SCU"]
    assert wide["overall"]["UCU"]["units"] == 0 and wide["overall"]["RU"]["units"] == 0
    assert 0.3 <= scu["param_fraction"] < 0.3 + units.params.max() / total  # the shortest prefix reaching 30 %
    # independently: SCU is the top of z_safety - z_utility by parameter mass
    diff = (units.z_safety - units.z_utility).sort_values(ascending=False)
    mass = units.params[diff.index].cumsum()
    assert scu["units"] == int((mass < 0.3 * total).sum()) + 1
    assert sum(layer["SCU"] for layer in wide["per_layer"]) == scu["units"]
    assert wide["units"] == len(units) and wide["total_params"] == total

    assert bad_fields(client.get(f"{API}/runs/{run['id']}/roles", params={"h_ru": 1.5})) == ["query.h_ru"]
    assert bad_fields(client.get(f"{API}/runs/{run['id']}/roles", params={"h_scu": 0.7, "h_ucu": 0.6})) \
        == ["query.h_ucu"]


def test_a_preview_puts_baseline_and_pruned_generations_side_by_side(client, run):
    accepted = client.post(f"{API}/runs/{run['id']}/previews",
                           json={"prune": {"groups": ["SCU"], "reference": "zero"}, "eval": eval_body()})
    assert accepted.status_code == 202, accepted.text
    job = wait(client, f"{API}/jobs/{accepted.json()['id']}")
    assert job["status"] == "succeeded", job["error"]
    assert job["kind"] == "preview" and job["run_id"] == run["id"] and job["progress"] == 1.0
    result = job["result"]
    assert result["selection"]["label"] == "SCU" and result["selection"]["references"] == {
        "zero": result["selection"]["units"]}
    assert {"asr", "over_refusal", "degenerate_rate"} <= set(result["baseline"]) <= set(result["pruned"])
    rows = result["generations"]
    assert len(rows) == 4 and {r["set"] for r in rows} == {"harmful.jsonl", "benign.jsonl"}
    for row in rows:
        for side in ("baseline", "pruned"):
            assert row[side]["verdict"] in VERDICTS and isinstance(row[side]["reply"], str)
    listed = client.get(f"{API}/jobs", params={"run_id": run["id"], "kind": "preview"}).json()
    assert accepted.json()["id"] in [j["id"] for j in listed["data"]]


def test_a_finetune_saves_a_model_that_can_be_attributed_in_turn(client, roots, run, runs_dir):
    accepted = client.post(f"{API}/runs/{run['id']}/finetunes", json={
        "freeze": {"groups": ["SCU"]}, "data": "safety.jsonl", "steps": 2, "batch_size": 4,
        "eval": eval_body(limit=1, max_new_tokens=4)})
    assert accepted.status_code == 202, accepted.text
    job = wait(client, f"{API}/jobs/{accepted.json()['id']}")
    assert job["status"] == "succeeded", job["error"]
    report = job["result"]
    assert report["mode"] == "freeze SCU" and len(report["training"]["loss"]) == 2
    assert report["before"]["asr"] is not None and report["after"]["asr"] is not None
    model = Path(report["model"])
    assert model.parent == runs_dir / "finetunes" and (model / "config.json").exists()
    assert (model / "finetune.json").exists()
    again = client.post(f"{API}/runs", json=run_body(roots, model=str(model)))
    assert again.status_code == 202, again.text


def test_an_alignment_job_trains_only_the_runs_redundant_units_and_reports_its_targets(client, roots, run,
                                                                                        runs_dir):
    from safetensors.torch import load_file

    accepted = client.post(f"{API}/runs/{run['id']}/alignments", json={
        "mode": "budget", "steps": 2, "lr": 1e-3, "batch_size": 4, "train_limit": 4, "answer_tokens": 6,
        "benign_share": 0.6, "eval": {"limit": 1, "max_new_tokens": 4}})
    assert accepted.status_code == 202, accepted.text
    job = wait(client, f"{API}/jobs/{accepted.json()['id']}", timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["kind"] == "align"
    report = job["result"]
    assert report["config"]["mode"] == "budget" and len(report["training"]["loss"]) == 2
    assert report["config"]["benign_share"] == 0.6
    assert set(report["aligned"]["sets"]) >= {"advbench-eval", "donotanswer", "alarming-benign", "ood-harmful",
                                              "ood-benign"}
    assert len(report["targets"]) == 8  # the OOD sets' two among them
    model = Path(report["model"])
    assert model.parent == runs_dir / "finetunes" and (model / "alignment.json").is_file()
    # only the budget moved: every row/column that changed belongs to a unit of lowest z_U (0.2 of the parameters)
    from backend.recipes.align import utility_only_budget

    units = utility_only_budget(pd.read_parquet(runs_dir / run["id"] / "units.parquet"), 0.2)
    assert report["config"]["budget_score"] == "utility" and report["config"]["h_ru"] == 0.2
    base = load_file(str(roots.models / roots.model / "model.safetensors"))
    new = load_file(str(model / "model.safetensors"))
    changed = {name for name in base if not np.array_equal(base[name].numpy(), new[name].numpy())}
    assert changed and all(".mlp." in n or ".self_attn." in n for n in changed)
    for name in (n for n in changed if n.endswith("mlp.down_proj.weight")):
        layer = int(name.split(".")[2])
        moved = np.flatnonzero((base[name] != new[name]).any(0).numpy())
        roles = units[(units.layer == layer) & (units.module == "mlp")].set_index("unit").role
        assert set(roles[moved]) == {"RU"}, name
    assert client.get(f"{API}/jobs", params={"kind": "align"}).json()["count"] >= 1


def test_a_lowrank_alignment_job_changes_each_decoder_map_by_at_most_its_rank(client, roots, run):
    import torch
    from safetensors.torch import load_file

    accepted = client.post(f"{API}/runs/{run['id']}/alignments", json={
        "mode": "lowrank", "rank": 2, "steps": 2, "lr": 1e-2, "batch_size": 4, "train_limit": 4, "answer_tokens": 6,
        "strength": 0.5, "benign_distil": True, "anchor": 0.5, "eval": None})
    assert accepted.status_code == 202, accepted.text
    job = wait(client, f"{API}/jobs/{accepted.json()['id']}", timeout=300)
    assert job["status"] == "succeeded", job["error"]
    report = job["result"]
    assert report["config"]["mode"] == "lowrank" and report["config"]["rank"] == 2 and report["aligned"] is None
    assert report["config"]["strength"] == 0.5  # half the learned change kept: still of rank 2
    assert report["config"]["benign_distil"] and report["training"]["loss_kind"].startswith("KL from the teacher on")
    assert report["config"]["anchor"] == 0.5 and len(report["training"]["anchor"]["kl"]) == 2
    base = load_file(str(roots.models / roots.model / "model.safetensors"))
    new = load_file(str(Path(report["model"]) / "model.safetensors"))
    changed = [name for name in base if not torch.equal(base[name], new[name])]
    maps = [n for n in changed if new[n].dim() == 2]
    assert maps and all(".mlp." in n or ".self_attn." in n for n in maps)  # the embedding stays
    for name in maps:  # up to float32 rounding of the saved weights
        assert torch.linalg.matrix_rank(new[name].double() - base[name].double(), rtol=1e-4) <= 2, name


def test_the_same_request_is_answered_from_the_cache_at_once(client, roots, run, runs_dir):
    again = client.post(f"{API}/runs", json=run_body(roots))
    assert again.status_code == 202
    body = again.json()
    assert body["cached"] and body["status"] == "succeeded" and body["id"] != run["id"]
    cached = client.get(f"{API}/runs/{body['id']}").json()
    assert cached["cached"] and cached["manifest"] == run["manifest"]
    assert (client.get(f"{API}/runs/{body['id']}/units", params={"format": "parquet"}).content
            == (runs_dir / run["id"] / "units.parquet").read_bytes())
    other = client.post(f"{API}/runs", json=run_body(roots, thresholds={"h_scu": 0.02})).json()
    assert not other["cached"] and other["status"] == "queued"


def test_cancelling_stops_a_running_run_and_a_queued_job_and_writes_nothing(roots, tmp_path):
    settings = settings_in(tmp_path, roots, pause_at=PAUSE_AT)
    runs_dir = settings.runs_dir
    with serve(settings) as client:
        first = client.post(f"{API}/runs", json=run_body(roots)).json()
        release(settings, first["job_id"])
        run = wait(client, f"{API}/runs/{first['id']}")
        assert run["status"] == "succeeded", run["error"]
        slow = client.post(f"{API}/runs", json=run_body(roots, seed=1)).json()
        wait_paused(client, f"{API}/runs/{slow['id']}")  # held: the worker is busy with it
        queued = client.post(f"{API}/runs/{run['id']}/previews", json={"eval": eval_body()}).json()
        cancelled = client.delete(f"{API}/jobs/{queued['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert client.get(f"{API}/jobs/{queued['id']}").json()["status"] == "cancelled"

        stopping = client.delete(f"{API}/runs/{slow['id']}")
        assert stopping.status_code == 202 and stopping.json()["status"] == "cancelling"
        final = wait(client, f"{API}/runs/{slow['id']}", timeout=30)
        assert final["status"] == "cancelled" and final["progress"] < 1
        assert not (runs_dir / slow["id"]).exists()
        assert not [p for p in runs_dir.iterdir() if p.name.startswith(".")]
        assert client.get(f"{API}/runs/{slow['id']}/units").status_code == 409
        assert client.delete(f"{API}/jobs/{slow['job_id']}").status_code == 409  # it has ended


def test_deleting_a_finished_run_removes_it_and_its_folder(client, roots, runs_dir):
    done = wait(client, f"{API}/runs/{client.post(f'{API}/runs', json=run_body(roots, seed=7)).json()['id']}")
    assert (runs_dir / done["id"]).is_dir()
    deleted = client.delete(f"{API}/runs/{done['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"id": done["id"], "status": "deleted"}
    assert client.get(f"{API}/runs/{done['id']}").status_code == 404
    assert client.get(f"{API}/jobs/{done['job_id']}").status_code == 404
    assert not (runs_dir / done["id"]).exists()
    assert done["id"] not in [r["id"] for r in client.get(f"{API}/runs").json()["data"]]


def test_bad_preview_and_finetune_fields_are_named(client, run, roots):
    previews = f"{API}/runs/{run['id']}/previews"
    assert bad_fields(client.post(previews, json={"prune": {"groups": ["XYZ"]}})) == ["body.prune.groups.0"]
    assert bad_fields(client.post(previews, json={"prune": {"groups": ["SCU"], "reference": "median"}})) \
        == ["body.prune.reference"]
    assert bad_fields(client.post(previews, json={"eval": eval_body(limit=10_000)})) == ["body.eval.limit"]
    assert bad_fields(client.post(previews, json={"eval": eval_body(max_new_tokens=100_000)})) \
        == ["body.eval.max_new_tokens"]
    assert bad_fields(client.post(previews, json={"eval": eval_body(harmful=["harmful.jsonl", "nope"])})) \
        == ["body.eval.harmful.1"]
    assert bad_fields(client.post(previews, json={"prune": {"groups": ["SCU"], "cu_fraction": 2}})) \
        == ["body.prune.cu_fraction"]
    finetunes = f"{API}/runs/{run['id']}/finetunes"
    assert bad_fields(client.post(finetunes, json={"data": "safety.jsonl", "steps": 0})) == ["body.steps"]
    assert bad_fields(client.post(finetunes, json={"data": "safety.jsonl", "steps": 1, "freeze": {"groups": ["SCU"]},
                                                   "train_only": {"groups": ["RU"]}})) == ["body.train_only"]
    assert bad_fields(client.post(finetunes, json={"data": "../safety.jsonl", "steps": 1})) == ["body.data"]
    alignments = f"{API}/runs/{run['id']}/alignments"
    assert bad_fields(client.post(alignments, json={"mode": "partial"})) == ["body.mode"]
    assert bad_fields(client.post(alignments, json={"steps": 10**9})) == ["body.steps"]
    assert bad_fields(client.post(alignments, json={"budget_groups": "XYZ"})) == ["body.budget_groups"]
    assert bad_fields(client.post(alignments, json={"budget_score": "both", "budget_groups": "XYZ"})) == \
        ["body.budget_groups"]
    assert bad_fields(client.post(alignments, json={"budget_score": "safety"})) == ["body.budget_score"]
    assert bad_fields(client.post(alignments, json={"mode": "full", "rank": 8})) == ["body.rank"]
    assert bad_fields(client.post(alignments, json={"mode": "lowrank", "rank": 0})) == ["body.rank"]
    assert bad_fields(client.post(alignments, json={"strength": 1.5})) == ["body.strength"]
    assert bad_fields(client.post(alignments, json={"eval": {"limit": 10**6}})) == ["body.eval.limit"]
    queued = client.post(f"{API}/runs", json=run_body(roots, seed=99)).json()
    client.delete(f"{API}/runs/{queued['id']}")
    assert client.post(f"{API}/runs/{queued['id']}/previews", json={}).status_code == 409
