"""The role map and scatter sent to the browser, checked against the units they summarise, and the REST client's
errors in words (no browser needed)."""
from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from app.rolemap import RunMap, zoom_of
from backend.engine.roles import ROLES, Thresholds, classify


def decode(spec) -> np.ndarray:
    """plotly.js's typed-array spec back to numpy."""
    if not isinstance(spec, dict):
        return np.asarray(spec)
    array = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
    return array.reshape([int(n) for n in spec["shape"].split(",")]) if "shape" in spec else array


def table(layers: int, channels: int, heads: int, seed: int = 1, channel_params: int = 96,
          head_params: int = 4096) -> pd.DataFrame:
    """A units table with correlated z-scores and roles at the default thresholds."""
    rng = np.random.default_rng(seed)
    parts = []
    for layer in range(layers):
        for module, n, params in (("attn", heads, head_params), ("mlp", channels, channel_params)):
            z_s = rng.standard_normal(n)
            parts.append(pd.DataFrame({"layer": layer, "module": module, "unit": np.arange(n), "params": params,
                                       "z_safety": z_s, "z_utility": 0.6 * z_s + 0.8 * rng.standard_normal(n)}))
    units = pd.concat(parts, ignore_index=True)
    units["role"] = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy())
    return units


@pytest.fixture(scope="module")
def units() -> pd.DataFrame:
    """3 layers of 1,000 MLP channels (binned: 4 per cell) and 8 heads, correlated z-scores."""
    return table(3, 1000, 8)


def area_shares(figure: dict) -> dict[str, float]:
    """Each role's share of the coloured cells of a role map, read from the figure dict the server sends."""
    z = decode(figure["data"][0]["z"])
    drawn = z[~np.isnan(z)]
    return {role: float(np.mean(drawn == i)) for i, role in enumerate(ROLES)}


def test_the_default_map_gives_each_role_its_share_of_the_parameters():
    """The issue's complaint: coloured by 'the most over-represented role', CU (84% of parameters) filled 39% of
    the cells and SCU (1%) 7.7%. Ranked by role, a role's area is its share of the module's parameters, and the two
    maps weighted by their parameters give the model's shares, each within 2 points."""
    units = table(12, 6000, 16, seed=3, channel_params=3 * 512, head_params=4 * 64 * 512)  # 24 channels a cell
    runmap = RunMap(units)
    roles = runmap.at(0.1, 0.01, 0.05)
    overall = {role: 0.0 for role in ROLES}
    total = units.params.sum()
    for module in ("mlp", "attn"):
        figure = runmap.map_figure(module, roles)  # the default view: colour by role, ranked by role, all of it
        assert figure["layout"]["meta"]["width"] == (24 if module == "mlp" else 1)
        area = area_shares(figure)
        mine = units[units.module == module]
        shares = mine.groupby("role").params.sum() / mine.params.sum()
        for role in ROLES:
            assert area[role] == pytest.approx(shares.get(role, 0.0), abs=0.02), (module, role, area, shares)
            overall[role] += area[role] * mine.params.sum() / total
    truth = units.groupby("role").params.sum() / total
    for role in ROLES:
        assert overall[role] == pytest.approx(truth[role], abs=0.02), (role, overall, truth)


def test_ranked_rows_read_from_safety_to_utility(units):
    runmap = RunMap(units)
    roles = runmap.at(0.2, 0.03, 0.1)
    for layer in range(3):
        cell = runmap.cell_units("mlp", roles, "role", layer, 0, 1000)
        assert len(cell) == 1000 and list(cell.position) == list(range(1000))
        blocks = [role for i, role in enumerate(cell.role) if i == 0 or cell.role.iloc[i - 1] != role]
        assert blocks == [r for r in ("SCU", "CU", "RU", "UCU") if r in set(cell.role)]  # one run per role
        for _, group in cell.groupby("role"):
            assert group["diff"].is_monotonic_decreasing  # within a role: by descending z_S - z_U
    by_index = runmap.cell_units("mlp", roles, "index", 1, 10, 14)
    assert list(by_index.unit) == [10, 11, 12, 13] and set(by_index.layer) == {1}


def test_binned_map_counts_every_unit_once_in_its_layer_and_role(units):
    runmap = RunMap(units)
    thresholds = Thresholds(h_ru=0.2, h_scu=0.03, h_ucu=0.1)
    roles = runmap.at(**thresholds.as_dict())
    expected_roles = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy(),
                              thresholds)
    assert [ROLES[c] for c in roles.codes] == list(expected_roles)  # the engine's own classification
    mlp = (units.module == "mlp").to_numpy()
    for order in ("role", "index"):
        figure = runmap.map_figure("mlp", roles, order=order)
        trace = figure["data"][0]
        custom = decode(trace["customdata"])  # layers x cells x (SCU, UCU, CU, RU, first, last, z_S, z_U)
        assert custom.shape == (3, 250, 8) and figure["layout"]["meta"]["width"] == 4
        assert "4 channels per cell" in figure["layout"]["title"]["text"]
        for layer in range(3):
            expected = pd.Series(expected_roles[mlp & (units.layer == layer).to_numpy()]).value_counts()
            assert [int(custom[layer, :, i].sum()) for i in range(4)] == [int(expected.get(r, 0)) for r in ROLES]
        assert list(custom[0, 1, 4:6]) == [4, 7]  # the second cell holds positions 4-7
    cell = units[mlp & (units.layer == 2) & units.unit.between(8, 11)]  # by index: cell 2 of layer 2
    assert custom[2, 2, 6] == pytest.approx(cell.z_safety.mean(), abs=1e-5)
    assert "MLP channels %{customdata[4]}–%{customdata[5]}" in trace["hovertemplate"]


def test_a_zoom_rebins_down_to_one_unit_per_cell_and_a_click_finds_the_cell(units):
    runmap = RunMap(units)
    roles = runmap.at(0.1, 0.01, 0.05)
    wide = runmap.map_figure("mlp", roles, x=[0, 600])
    assert wide["layout"]["meta"]["width"] == 3 and "3 channels per cell" in wide["layout"]["title"]["text"]
    close = runmap.map_figure("mlp", roles, x=[100, 300], y=[1, 2])
    assert close["layout"]["meta"] == {"module": "mlp", "order": "role", "color": "role", "x": [100, 300],
                                       "y": [1, 2], "width": 1}
    assert "(1 channel per cell)" in close["layout"]["title"]["text"]
    assert close["layout"]["xaxis"]["range"] == [99.5, 299.5]
    trace = close["data"][0]
    z, custom = decode(trace["z"]), decode(trace["customdata"])
    assert z.shape == (2, 200) and list(decode(trace["y"])) == [1, 2]
    listed = runmap.cell_units("mlp", roles, "role", 2, 100, 300)  # the same units, one per cell
    assert list(custom[1, :, 0]) == list(listed.unit)
    assert [ROLES[int(c)] for c in z[1]] == list(listed.role) == trace["text"][1]
    window = runmap.window("mlp", [0, 1000])
    assert window.cell(window.start + 1.5 + 4 * 7) == (28, 32)  # the centre of the 8th cell of 4
    assert runmap.window("mlp", [100, 300]).cell(150) == (150, 151)
    assert runmap.window("mlp", [990, 5000]).stop == 1000  # clipped to the layer


def test_heads_are_one_cell_each_named_by_role_on_hover(units):
    runmap = RunMap(units)
    roles = runmap.at(0.1, 0.01, 0.05)
    trace = runmap.map_figure("attn", roles, order="index")["data"][0]
    heads = units[units.module == "attn"].reset_index(drop=True)
    assert [name for row in trace["text"] for name in row] == list(heads.role)
    custom = decode(trace["customdata"])
    assert custom[1, 5, 0] == 5 and custom[1, 5, 1] == pytest.approx(heads.z_safety[8 + 5], abs=1e-5)


def test_the_scatter_keeps_the_bulk_in_view_and_draws_every_unit_once():
    units = table(4, 3000, 8, seed=5)
    units.loc[7, ["z_safety", "z_utility"]] = [38.0, 2.0]  # an outlier that used to set the axes
    units["role"] = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy())
    runmap = RunMap(units)
    roles = runmap.at(0.1, 0.01, 0.05)
    figure = runmap.scatter_figure(roles)
    (x_lo, x_hi), (y_lo, y_hi) = figure["layout"]["meta"]["axes"]
    assert figure["layout"]["xaxis"]["range"] == [x_lo, x_hi] and x_hi < 6  # the bulk sets the axes
    inside = units.z_safety.between(x_lo, x_hi) & units.z_utility.between(y_lo, y_hi)
    assert inside.mean() >= 0.98
    drawn = {role: 0 for role in ROLES}
    beyond = []
    for trace in figure["data"]:
        if trace["type"] == "heatmap":
            drawn[trace["name"]] += int(np.nansum(decode(trace["z"])))
        elif trace["type"] == "scattergl":
            drawn[trace["name"]] += len(decode(trace["x"]))
            if trace["marker"]["symbol"].startswith("triangle"):
                x, custom = decode(trace["x"]), decode(trace["customdata"])
                assert ((x >= x_lo) & (x <= x_hi)).all()  # on the edge ...
                beyond += [tuple(row) for row in custom]  # ... with the true values for the hover
    assert drawn == units.role.value_counts().reindex(list(ROLES), fill_value=0).to_dict()
    assert len(beyond) == int((~inside).sum())
    assert any(row[0] == 0 and row[2] == 0 and row[3] == 38.0 for row in beyond)  # layer 0, head 7, z_S 38
    lines = [t["name"] for t in figure["data"] if t["type"] == "scatter" and t.get("mode") == "lines"]
    assert [n.split()[0] for n in lines] == ["SCU", "UCU", "RU"]
    column, row = runmap.bin_of(0.01, 0.01)
    listed, (bx0, bx1, by0, by1) = runmap.bin_units(roles, column, row)
    assert len(listed) > 0 and listed.z_safety.between(bx0, bx1).all() and listed.z_utility.between(by0, by1).all()


def test_the_threshold_lines_sit_where_each_role_starts(units):
    runmap = RunMap(units)
    for thresholds in ((0.1, 0.01, 0.05), (0.3, 0.4, 0.5), (0.9, 0.2, 0.0), (0.0, 0.0, 0.0)):
        codes = runmap.at(*thresholds).small_codes
        expected = []
        for role, kind, pick in (("SCU", "diff", np.min), ("UCU", "diff", np.max), ("RU", "sum", np.max)):
            mask = codes == ROLES.index(role)
            if mask.any():
                expected.append((role, kind, float(pick((runmap.diff if kind == "diff" else runmap.sum)[mask]))))
        assert runmap.boundaries(codes) == expected, thresholds


def test_a_relayout_names_the_units_in_view():
    assert zoom_of({"xaxis.range[0]": 99.6, "xaxis.range[1]": 299.4}, None, [3, 4]) == ([100, 300], [3, 4])
    assert zoom_of({"xaxis.range[0]": -0.5, "xaxis.range[1]": 13.2, "yaxis.range[0]": 4.4, "yaxis.range[1]": 0.7},
                 [5, 9], None) == ([0, 14], [1, 4])
    assert zoom_of({"xaxis.autorange": True, "yaxis.autorange": True}, [5, 9], [1, 2]) == (None, None)
    assert zoom_of({"autosize": True}, [5, 9], [1, 2]) == ([5, 9], [1, 2])


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
