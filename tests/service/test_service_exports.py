"""Compare, freeze masks and "who am I" through the REST API, checked against computations written out here; and
the API's own JSON answer for a path it does not have, also when the dashboard is mounted beside it."""
from __future__ import annotations

import io
import json
import shutil

import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from servicekit import API, bad_fields, run_body, serve, settings_in, wait

from backend.api.app import create_app
from backend.engine.masks import load_masks
from backend.engine.models import load_model

pytestmark = pytest.mark.slow  # a served app with a spawned worker

ROLES = ["SCU", "UCU", "CU", "RU"]


@pytest.fixture(scope="module")
def service(roots, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    models = folder / "models"  # a model root of its own, so one test can take the model away
    shutil.copytree(roots.models / roots.model, models / roots.model)
    settings = settings_in(folder, roots, model_roots=[models])
    with serve(settings) as client:
        yield client, models / roots.model


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    return service[0]


def finished(client, roots, **fields) -> dict:
    accepted = client.post(f"{API}/runs", json=run_body(roots, **fields))
    assert accepted.status_code == 202, accepted.text
    done = wait(client, f"{API}/runs/{accepted.json()['id']}")
    assert done["status"] == "succeeded", done
    return done


@pytest.fixture(scope="module")
def two_runs(client, roots) -> tuple[dict, dict]:
    """Two runs of one model on different calibration samples (seeds), so roles differ between them."""
    return finished(client, roots), finished(client, roots, samples=8, seed=5, thresholds={"h_scu": 0.05})


def units_of(client, run: dict) -> pd.DataFrame:
    answer = client.get(f"{API}/runs/{run['id']}/units", params={"format": "parquet"})
    return pd.read_parquet(io.BytesIO(answer.content))


def test_compare_gives_the_role_transitions_and_scu_overlap_of_two_runs(client, two_runs):
    a, b = two_runs
    answer = client.get(f"{API}/compare", params={"a": a["id"], "b": b["id"]})
    assert answer.status_code == 200, answer.text
    got = answer.json()

    both = units_of(client, a).merge(units_of(client, b), on=["layer", "module", "unit"], suffixes=("_a", "_b"))
    by_units = pd.crosstab(both.role_a, both.role_b).reindex(index=ROLES, columns=ROLES, fill_value=0)
    by_params = pd.crosstab(both.role_a, both.role_b, values=both.params_a, aggfunc="sum") \
        .reindex(index=ROLES, columns=ROLES).fillna(0).astype(int)
    assert got["transitions_units"] == {r: {c: int(by_units.loc[r, c]) for c in ROLES} for r in ROLES}
    assert got["transitions_params"] == {r: {c: int(by_params.loc[r, c]) for c in ROLES} for r in ROLES}
    assert got["units"] == len(both) and got["params"] == int(both.params_a.sum())
    assert by_units.to_numpy().trace() < len(both)  # the runs do differ: the test compares something

    scu_a = set(both[both.role_a == "SCU"].index)
    scu_b = set(both[both.role_b == "SCU"].index)
    assert got["scu_jaccard"] == pytest.approx(len(scu_a & scu_b) / len(scu_a | scu_b))
    for layer in got["scu_per_layer"]:
        rows = both[(both.layer == layer["layer"]) & (both.module == layer["module"])]
        in_a, in_b = set(rows.index[rows.role_a == "SCU"]), set(rows.index[rows.role_b == "SCU"])
        assert (layer["scu_a"], layer["scu_b"], layer["both"]) == (len(in_a), len(in_b), len(in_a & in_b))
        assert layer["jaccard"] == (pytest.approx(len(in_a & in_b) / len(in_a | in_b)) if in_a | in_b else None)

    itself = client.get(f"{API}/compare", params={"a": a["id"], "b": a["id"]}).json()
    assert itself["same_role_fraction"] == 1.0 and itself["scu_jaccard"] == 1.0


def test_compare_names_a_missing_or_unfinished_run(client, two_runs, roots):
    a, _ = two_runs
    missing = client.get(f"{API}/compare", params={"a": a["id"], "b": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert bad_fields(client.get(f"{API}/compare", params={"a": a["id"]})) == ["query.b"]


def owned_by_hand(units: pd.DataFrame, config: dict, *, shared: str) -> dict[str, torch.Tensor]:
    """True at the entries the given units own in a Llama, written out from the layout: an MLP channel c owns
    row c of gate_proj and up_proj and column c of down_proj; head h owns rows h*d..(h+1)*d of q_proj and those
    columns of o_proj, and shares its group's k_proj/v_proj rows (marked when any / all heads of it are given)."""
    d = config["head_dim"]
    group = config["num_attention_heads"] // config["num_key_value_heads"]
    shapes = {"gate_proj": (config["intermediate_size"], config["hidden_size"]),
              "up_proj": (config["intermediate_size"], config["hidden_size"]),
              "down_proj": (config["hidden_size"], config["intermediate_size"]),
              "q_proj": (config["num_attention_heads"] * d, config["hidden_size"]),
              "k_proj": (config["num_key_value_heads"] * d, config["hidden_size"]),
              "v_proj": (config["num_key_value_heads"] * d, config["hidden_size"]),
              "o_proj": (config["hidden_size"], config["num_attention_heads"] * d)}
    out: dict[str, torch.Tensor] = {}

    def mark(layer: int, where: str, name: str, rows=None, cols=None):
        key = f"model.layers.{layer}.{where}.{name}.weight"
        mask = out.setdefault(key, torch.zeros(shapes[name], dtype=torch.bool))
        if rows is not None:
            mask[rows, :] = True
        else:
            mask[:, cols] = True

    for layer in range(config["num_hidden_layers"]):
        mlp = units[(units.layer == layer) & (units.module == "mlp")].unit.tolist()
        for c in mlp:
            mark(layer, "mlp", "gate_proj", rows=c)
            mark(layer, "mlp", "up_proj", rows=c)
            mark(layer, "mlp", "down_proj", cols=c)
        heads = set(units[(units.layer == layer) & (units.module == "attn")].unit.tolist())
        for h in heads:
            mark(layer, "self_attn", "q_proj", rows=slice(h * d, (h + 1) * d))
            mark(layer, "self_attn", "o_proj", cols=slice(h * d, (h + 1) * d))
        for g in range(config["num_key_value_heads"]):
            members = set(range(g * group, (g + 1) * group))
            if (members & heads) if shared == "any" else members <= heads:
                for name in ("k_proj", "v_proj"):
                    mark(layer, "self_attn", name, rows=slice(g * d, (g + 1) * d))
    return out


def test_freeze_masks_download_and_load_into_training_code(client, service, two_runs):
    a, _ = two_runs
    folder = service[1]
    config = json.loads((folder / "config.json").read_text())
    model = load_model(str(folder), device="cpu", dtype="float32").model
    units = units_of(client, a)

    answer = client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "SCU,UCU"})
    assert answer.status_code == 200, answer.text
    assert "attachment" in answer.headers["content-disposition"]
    path = folder.parent.parent / "freeze.safetensors"
    path.write_bytes(answer.content)
    masks = load_masks(path, model)
    frozen = owned_by_hand(units[units.role.isin(["SCU", "UCU"])], config, shared="any")
    assert frozen  # the run has SCU and UCU
    for name, p in model.named_parameters():
        expected = ~frozen[name] if name in frozen else torch.ones(p.shape, dtype=torch.bool)
        assert torch.equal(masks[name].expand(p.shape), expected), name

    budget = client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "RU", "mode": "train_only", "format": "json"})
    assert budget.status_code == 200, budget.text
    plan = budget.json()
    assert plan["mode"] == "train_only" and plan["owned_entries_are"] == "trainable"
    assert plan["shapes"] == {n: list(p.shape) for n, p in model.named_parameters()}
    trainable = owned_by_hand(units[units.role == "RU"], config, shared="all")
    for name, axes in plan["owned"].items():
        mask = torch.zeros(plan["shapes"][name], dtype=torch.bool)
        for axis, idx in axes.items():
            mask.index_fill_(int(axis), torch.tensor(idx), True)
        assert torch.equal(mask, trainable.pop(name)), name
    assert not any(m.any() for m in trainable.values())  # nothing the file left out should have trained

    # other thresholds give other roles, and so other masks
    wider = client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "SCU", "h_scu": 0.3, "format": "json"}).json()
    narrow = client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "SCU", "format": "json"}).json()
    count = lambda plan: sum(len(i) for axes in plan["owned"].values() for i in axes.values())  # noqa: E731
    assert count(wider) > count(narrow) > 0


def test_bad_mask_requests_are_named_and_a_lost_model_is_said(client, service, two_runs):
    a, _ = two_runs
    assert bad_fields(client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "SCU,XYZ"})) == ["query.groups"]
    assert bad_fields(client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "SCU", "mode": "thaw"})) \
        == ["query.mode"]
    assert bad_fields(client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "SCU", "h_scu": 0, "h_ucu": 0,
                                                                        "h_ru": 0})) == ["query.groups"]
    folder = service[1]
    moved = folder.with_name("moved-away")
    folder.rename(moved)
    try:
        lost = client.get(f"{API}/runs/{a['id']}/masks", params={"groups": "SCU", "seed": 1})
        assert lost.status_code == 409 and "not on this server" in lost.json()["detail"]
    finally:
        moved.rename(folder)


def test_who_am_i_on_a_loopback_server(client):
    assert client.get(f"{API}/tokens/me").json() == {"auth": False, "scope": "write", "run_id": None, "name": None,
                                                     "expires_at": None}


def test_an_unknown_api_path_answers_json_even_with_the_dashboard_mounted(roots, tmp_path):
    async def page(scope, receive, send):  # stands where the dashboard is mounted: it answers every path with HTML
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"<!DOCTYPE html><html></html>"})

    app = create_app(settings_in(tmp_path, roots), mounts={"/": page})
    with TestClient(app) as client:
        assert client.get("/runs/abc").headers["content-type"] == "text/html"  # the dashboard still has its paths
        for path in ("/api/v1/nothing-here", "/api/v1/runs/abc/nothing", "/api/v1"):
            answer = client.get(path)
            assert answer.status_code == 404 and "no API route" in answer.json()["detail"], path
        wrong = client.put(f"{API}/runs")
        assert wrong.status_code == 405 and set(wrong.headers["allow"].split(", ")) == {"GET", "POST"}
        assert client.get(f"{API}/runs").status_code == 200
