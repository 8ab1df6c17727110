"""Role transfer between two runs: transition matrices in units and parameters, and SCU overlap (Jaccard)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from backend.engine import attribute, load_model
from backend.engine.roles import ROLES, Thresholds, reclassify
from backend.recipes.transfer import compare


def table(rows):
    """(layer, module, unit, params, role) tuples -> a units table."""
    return pd.DataFrame(rows, columns=["layer", "module", "unit", "params", "role"])


# Layer 0: both runs have SCU (one shared); layer 1 attn: only A has SCU; layer 1 mlp: no SCU on either side.
A = table([
    (0, "attn", 0, 100, "SCU"), (0, "attn", 1, 100, "CU"),
    (0, "mlp", 0, 10, "SCU"), (0, "mlp", 1, 10, "RU"), (0, "mlp", 2, 10, "UCU"),
    (1, "attn", 0, 100, "SCU"), (1, "attn", 1, 100, "RU"),
    (1, "mlp", 0, 10, "CU"), (1, "mlp", 1, 10, "CU"), (1, "mlp", 2, 10, "UCU"),
])
B_ROLES = ["SCU", "SCU", "CU", "RU", "UCU", "CU", "RU", "RU", "CU", "CU"]


def test_hand_built_transitions_and_jaccard():
    b = A.assign(role=B_ROLES).iloc[::-1]  # row order does not matter
    t = compare(A, b)
    expected_units = {("SCU", "SCU"): 1, ("SCU", "CU"): 2, ("CU", "SCU"): 1, ("RU", "RU"): 2, ("UCU", "UCU"): 1,
                      ("UCU", "CU"): 1, ("CU", "RU"): 1, ("CU", "CU"): 1}
    expected_params = {("SCU", "SCU"): 100, ("SCU", "CU"): 110, ("CU", "SCU"): 100, ("RU", "RU"): 110,
                       ("UCU", "UCU"): 10, ("UCU", "CU"): 10, ("CU", "RU"): 10, ("CU", "CU"): 10}
    for frame, expected in ((t.transitions_units, expected_units), (t.transitions_params, expected_params)):
        assert list(frame.index) == list(ROLES) and list(frame.columns) == list(ROLES)
        for a in ROLES:
            for b_role in ROLES:
                assert frame.loc[a, b_role] == expected.get((a, b_role), 0), (a, b_role)
    # SCU_A = {0attn0, 0mlp0, 1attn0}, SCU_B = {0attn0, 0attn1}: 1 shared of 4
    assert t.scu_jaccard == pytest.approx(1 / 4)
    assert t.scu_jaccard_params == pytest.approx(100 / (100 + 10 + 100 + 100))
    assert t.same_role_fraction == pytest.approx(5 / 10)  # SCU, 2 RU, UCU, CU kept their role
    per = t.scu_per_layer.set_index(["layer", "module"])
    assert list(t.scu_per_layer.columns) == ["layer", "module", "jaccard", "scu_a", "scu_b", "both"]
    assert per.loc[(0, "attn")].tolist() == [0.5, 1, 2, 1]
    assert per.loc[(0, "mlp")].tolist() == [0.0, 1, 0, 0]
    assert per.loc[(1, "attn")].tolist() == [0.0, 1, 0, 0]
    assert math.isnan(per.loc[(1, "mlp"), "jaccard"])  # no SCU on either side: undefined


def test_to_dict_is_strict_json():
    d = compare(A, A.assign(role=B_ROLES)).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["transitions_units"]["SCU"]["CU"] == 2 and back["transitions_params"]["SCU"]["CU"] == 110
    assert back["units"] == 10 and back["params"] == 460 and back["roles"] == list(ROLES)
    assert back["scu_per_layer"][-1] == {"layer": 1, "module": "mlp", "jaccard": None, "scu_a": 0, "scu_b": 0,
                                         "both": 0}


def test_no_scu_anywhere_gives_undefined_jaccard():
    t = compare(A.assign(role="CU"), A.assign(role="RU"))
    assert math.isnan(t.scu_jaccard) and math.isnan(t.scu_jaccard_params)
    assert t.to_dict()["scu_jaccard"] is None
    assert t.transitions_units.loc["CU", "RU"] == 10 and t.transitions_units.to_numpy().sum() == 10


@pytest.fixture(scope="module")
def run(tiny_model_path, safety_pairs, utility_pairs):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
        return attribute(loaded, safety_pairs, utility_pairs, batch_size=4).units
    finally:
        torch.set_num_threads(before)


def test_a_run_compared_with_itself_is_diagonal(run):
    t = compare(run, run)
    for frame, weights in ((t.transitions_units, None), (t.transitions_params, "params")):
        m = frame.to_numpy()
        assert (m == np.diag(np.diag(m))).all()
        counts = run.groupby("role").size() if weights is None else run.groupby("role").params.sum()
        assert [m[i, i] for i in range(4)] == [int(counts.get(r, 0)) for r in ROLES]
    assert t.scu_jaccard == 1.0 and t.scu_jaccard_params == 1.0 and t.same_role_fraction == 1.0
    assert t.scu_per_layer.jaccard.dropna().eq(1.0).all()


def test_margins_are_the_role_counts_of_each_run(run):
    other = reclassify(run, Thresholds(h_ru=0.2, h_scu=0.05, h_ucu=0.1))
    t = compare(run, other)
    assert t.transitions_units.sum(axis=1).tolist() == [int((run.role == r).sum()) for r in ROLES]
    assert t.transitions_units.sum(axis=0).tolist() == [int((other.role == r).sum()) for r in ROLES]
    assert t.transitions_params.sum(axis=1).tolist() == [int(run.params[run.role == r].sum()) for r in ROLES]
    # a wider SCU threshold keeps the narrower SCU set: A's SCU all stay SCU
    assert t.transitions_units.loc["SCU", "SCU"] == (run.role == "SCU").sum()
    assert 0 < t.scu_jaccard < 1


def test_tables_of_different_models_are_refused():
    with pytest.raises(ValueError, match="different architectures: mlp unit 2 of layer 1 is only in A"):
        compare(A, A.iloc[:-1])
    with pytest.raises(ValueError, match="only in B"):
        compare(A.iloc[:-1], A)
    with pytest.raises(ValueError, match="has 10 parameters in A and 12 in B"):
        compare(A, A.assign(params=[100, 100, 10, 10, 10, 100, 100, 10, 10, 12]))
    with pytest.raises(ValueError, match="lacks columns \\['role'\\]"):
        compare(A, A.drop(columns="role"))
    with pytest.raises(ValueError, match="unknown role 'XCU'"):
        compare(A, A.assign(role="XCU"))
    with pytest.raises(ValueError, match="lists attn unit 0 of layer 0 twice"):
        compare(pd.concat([A, A.iloc[:1]]), A)
