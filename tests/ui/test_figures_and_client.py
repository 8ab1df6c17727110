"""The role map and scatter sent to the browser, checked against the units they summarise, and the REST client's
errors in words (no browser needed)."""
from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from app.rolemap import KEEP_ALL_CAP, RunMap
from backend.engine.roles import ROLES, Thresholds, classify


def decode(spec) -> np.ndarray:
    """plotly.js's typed-array spec back to numpy."""
    if not isinstance(spec, dict):
        return np.asarray(spec)
    array = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
    return array.reshape([int(n) for n in spec["shape"].split(",")]) if "shape" in spec else array


@pytest.fixture(scope="module")
def units() -> pd.DataFrame:
    """3 layers of 1,000 MLP channels (binned: 4 per cell) and 8 heads, correlated z-scores."""
    rng = np.random.default_rng(1)
    parts = []
    for layer in range(3):
        for module, n, params in (("attn", 8, 4096), ("mlp", 1000, 96)):
            z_s = rng.standard_normal(n)
            parts.append(pd.DataFrame({"layer": layer, "module": module, "unit": np.arange(n), "params": params,
                                       "z_safety": z_s, "z_utility": 0.5 * z_s + rng.standard_normal(n)}))
    table = pd.concat(parts, ignore_index=True)
    table["role"] = classify(table.z_safety.to_numpy(), table.z_utility.to_numpy(), table.params.to_numpy())
    return table


def test_binned_map_counts_every_unit_once_in_its_layer_and_role(units):
    runmap = RunMap(units)
    thresholds = Thresholds(h_ru=0.2, h_scu=0.03, h_ucu=0.1)
    codes = runmap.codes(**thresholds.as_dict())
    roles = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy(), thresholds)
    assert [ROLES[c] for c in codes] == list(roles)  # the engine's own classification
    trace = runmap.map_figure("mlp", codes)["data"][0]
    custom = decode(trace["customdata"])  # layers x cells x (SCU, UCU, CU, RU, last channel, ...)
    assert custom.shape == (3, 250, 10)
    mlp = units.module == "mlp"
    for layer in range(3):
        expected = pd.Series(roles[(mlp & (units.layer == layer)).to_numpy()]).value_counts()
        assert [int(custom[layer, :, i].sum()) for i in range(4)] == [int(expected.get(r, 0)) for r in ROLES]
    assert custom[0, 1, 4] == 7  # the second cell holds channels 4-7
    top = units[mlp & (units.layer == 2) & units.unit.between(8, 11)]
    best = top.iloc[np.argmax((top.z_safety - top.z_utility).to_numpy())]
    assert custom[2, 2, 7] == best.unit and custom[2, 2, 8] == pytest.approx(best.z_safety, abs=1e-5)
    assert "MLP channels %{x}–%{customdata[4]}" in trace["hovertemplate"]


def test_heads_are_one_cell_each_named_by_role_on_hover(units):
    runmap = RunMap(units)
    codes = runmap.codes(0.1, 0.01, 0.05)
    trace = runmap.map_figure("attn", codes)["data"][0]
    cells = trace["customdata"]
    assert len(cells) == 3 and len(cells[0]) == 8
    heads = units[units.module == "attn"].reset_index(drop=True)
    assert [cell[0] for row in cells for cell in row] == list(heads.role)
    assert cells[1][5][1] == pytest.approx(heads.z_safety[8 + 5])


def test_the_scatter_keeps_every_scu_and_ucu_and_samples_the_rest(units, monkeypatch):
    import app.rolemap

    monkeypatch.setattr(app.rolemap, "SAMPLE", {"CU": 500, "RU": 100})
    runmap = RunMap(units)
    codes = runmap.codes(0.1, 0.05, 0.1)
    drawn = {role: 0 for role in ROLES}
    for trace in runmap.scatter_figure(codes)["data"]:
        if trace["type"] == "scattergl":
            drawn[trace["name"]] += len(decode(trace["x"]))
    for role in ("SCU", "UCU"):
        assert drawn[role] == min(int((codes == ROLES.index(role)).sum()), KEEP_ALL_CAP)
    assert (drawn["CU"], drawn["RU"]) == (500, 100)
    lines = [t["name"] for t in runmap.scatter_figure(codes)["data"] if t["type"] == "scatter"]
    assert [n.split()[0] for n in lines] == ["SCU", "UCU", "RU"]


def test_the_dashboard_imports_neither_torch_nor_the_store():
    code = ("import sys, app; app.create_dash_app('http://127.0.0.1:9/api/v1'); "
            "import app.rolemap, app.pages.overview; "
            "bad = [m for m in ('torch', 'transformers', 'sqlalchemy', 'backend.store', 'backend.api') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_missing_api_route_is_named_in_words():
    """Behind `ssah serve` an unknown /api/v1 path reaches the dashboard's mount (an HTML page); the client must
    say that the route is missing rather than fail on the HTML."""
    import httpx

    from app.client import Api, ApiError

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<!DOCTYPE html><html></html>", headers={"content-type": "text/html"})

    api = Api("http://ssah.test/api/v1")
    api._http = httpx.Client(base_url=api.base_url, transport=httpx.MockTransport(answer))
    with pytest.raises(ApiError, match="no compare route yet"):
        api.compare("a", "b")
