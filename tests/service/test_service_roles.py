"""Roles at other thresholds: the same as an independent re-derivation, also through the API on 460k units.

Speed is measured by benchmarks/dashboard.py, not here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from reference import classify as reference_classify
from servicekit import API, serve, settings_in

from backend.engine.roles import RoleIndex, Thresholds, role_summary
from backend.store.tables import Run

LAYERS, MLP, HEADS = 40, 11_500, 40  # 461,600 units, the size of a 13B model's map


def synthetic_units(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for layer in range(LAYERS):
        for module, n, params in (("attn", HEADS, 4 * 5120 * 128), ("mlp", MLP, 3 * 5120)):
            parts.append(pd.DataFrame({
                "layer": np.full(n, layer, dtype=np.int64), "module": module, "unit": np.arange(n, dtype=np.int64),
                "params": np.full(n, params, dtype=np.int64), "score_safety": rng.random(n),
                "score_utility": rng.random(n), "z_safety": rng.standard_normal(n), "z_utility": rng.standard_normal(n),
                "role": "CU"}))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_role_index_gives_exactly_the_engines_roles(seed):
    rng = np.random.default_rng(seed)
    layers, mlp, heads = 3, 50, 4
    units = pd.concat([pd.DataFrame({
        "layer": layer, "module": module, "unit": np.arange(n), "params": np.full(n, size, dtype=np.int64),
        # rounded z-scores, so that ties (kept in canonical order) are common
        "z_safety": rng.standard_normal(n).round(1), "z_utility": rng.standard_normal(n).round(1)})
        for layer in range(layers) for module, n, size in (("attn", heads, 97), ("mlp", mlp, 13))],
        ignore_index=True)
    index = RoleIndex.from_units(units)
    for h_ru, h_scu, h_ucu in [(0.1, 0.01, 0.05), (0, 0, 0), (1, 0, 0), (0.5, 0.5, 0.5), (0.3, 1, 0), (0.2, 0.37, 0.11),
                               tuple(rng.random(3) / 2)]:
        thresholds = Thresholds(h_ru=h_ru, h_scu=h_scu, h_ucu=h_ucu)
        expected = units.assign(role=reference_classify(units, h_ru, h_scu, h_ucu))  # written from the formula
        assert (index.roles(thresholds) == expected.role).all()
        assert index.summary(thresholds) == role_summary(expected)


def test_roles_of_460k_units_through_the_api(roots, tmp_path):
    settings = settings_in(tmp_path, roots, runner="none")
    units = synthetic_units()
    with serve(settings) as client:
        with client.app.state.sessions.begin() as session:
            run = Run(model="synthetic", model_path="synthetic", settings={"thresholds": {}}, cache_key="-",
                      status="succeeded", result_dir="synthetic", manifest={})
            session.add(run)
        (settings.runs_dir / "synthetic").mkdir()
        units.to_parquet(settings.runs_dir / "synthetic" / "units.parquet", index=False)

        first = client.get(f"{API}/runs/{run.id}/roles")  # reads the table and sorts it once
        assert first.status_code == 200 and first.json()["units"] == len(units) == 461_600
        for h_scu in (0.01, 0.04, 0.07):
            response = client.get(f"{API}/runs/{run.id}/roles", params={"h_scu": h_scu, "h_ru": 0.1, "h_ucu": 0.05})
            assert response.status_code == 200
            assert abs(response.json()["overall"]["SCU"]["param_fraction"] - h_scu) < 1e-3
