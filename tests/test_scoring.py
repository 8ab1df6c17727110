"""The engine's unit scores, z-scores, parameter counts, roles and means against the brute-force reference.

Every supported architecture is built as a tiny random model (tests/tiny.py); the reference (tests/reference.py)
recomputes everything from the formula one sample at a time in float64.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from contract import check_run_folder
from reference import classify, parameter_accounting, reference_attribution, select
from tiny import archs
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.engine import Thresholds, attribute, load_model

DEFAULT = Thresholds(h_ru=0.10, h_scu=0.01, h_ucu=0.05)
KEYS = ["layer", "module", "unit"]
RTOL = 1e-5
Z_ATOL = 1e-6  # z-scores are O(1); this only matters for the few near zero
MEAN_ATOL = 1e-6


# ---------------------------------------------------------------- cached runs

pytestmark = pytest.mark.usefixtures("one_thread")  # oversubscribed threads made this file 15x slower


@pytest.fixture(scope="session")
def loaded(tiny_model_path):
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_model(str(tiny_model_path(arch)), device="cpu", dtype="float32")
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def reference_model(tiny_model_path):
    """The tiny model and tokenizer loaded straight from the folder with transformers, not through the engine."""
    cache: dict[str, tuple] = {}

    def get(arch: str):
        if arch not in cache:
            path = tiny_model_path(arch)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            cache[arch] = model, AutoTokenizer.from_pretrained(path)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def reference(reference_model, safety_pairs, utility_pairs):
    cache: dict[tuple, tuple] = {}

    def get(arch: str, positions: str = "response"):
        if (arch, positions) not in cache:
            model, tokenizer = reference_model(arch)
            cache[arch, positions] = reference_attribution(model, tokenizer, safety_pairs, utility_pairs,
                                                           positions=positions)
        return cache[arch, positions]

    return get


@pytest.fixture(scope="session")
def engine(loaded, safety_pairs, utility_pairs):
    cache: dict[tuple, object] = {}

    def get(arch: str, *, batch_size: int = 4, padding_side: str = "right", positions: str = "response",
            thresholds: Thresholds = DEFAULT):
        key = (arch, batch_size, padding_side, positions, thresholds)
        if key not in cache:
            cache[key] = attribute(loaded(arch), safety_pairs, utility_pairs, batch_size=batch_size,
                                   positions=positions, thresholds=thresholds, padding_side=padding_side)
        return cache[key]

    return get


# ---------------------------------------------------------------- comparisons

def assert_units_match(got: pd.DataFrame, want: pd.DataFrame, what: str, *, roles: bool = True) -> None:
    """Same units in the same (canonical) order, identical params and roles, scores and z within tolerance."""
    assert list(got.columns[:9]) == ["layer", "module", "unit", "params", "score_safety", "score_utility",
                                     "z_safety", "z_utility", "role"], f"{what}: columns {list(got.columns)}"
    assert len(got) == len(want), f"{what}: {len(got)} units, reference has {len(want)}"
    for col in KEYS:
        assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), f"{what}: {col} order differs"
    bad = np.nonzero(got.params.to_numpy() != want.params.to_numpy())[0]
    assert len(bad) == 0, (f"{what}: params differ on {len(bad)} units, first "
                           f"{want.iloc[bad[0]][KEYS].to_dict()}: {got.params.iloc[bad[0]]} vs {want.params.iloc[bad[0]]}")
    for col, atol in (("score_safety", 0.0), ("score_utility", 0.0), ("z_safety", Z_ATOL), ("z_utility", Z_ATOL)):
        np.testing.assert_allclose(got[col].to_numpy(np.float64), want[col].to_numpy(np.float64), rtol=RTOL,
                                   atol=atol, err_msg=f"{what}: {col}")
    if roles:
        differ = np.nonzero(got.role.astype(str).to_numpy() != want.role.astype(str).to_numpy())[0]
        assert len(differ) == 0, (
            f"{what}: roles differ on {len(differ)} units: "
            + "; ".join(f"{want.iloc[i][KEYS].to_dict()} {got.role.iloc[i]} vs {want.role.iloc[i]}" for i in differ[:5]))


def assert_means_match(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: mean keys {sorted(set(got) ^ set(want))} differ"
    for key in sorted(want):
        np.testing.assert_allclose(torch.as_tensor(got[key]).double().numpy(), want[key].numpy(), rtol=RTOL,
                                   atol=MEAN_ATOL, err_msg=f"{what}: means {key}")


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("arch", archs())
def test_engine_matches_reference(arch, engine, reference):
    """Scores, z-scores, params, roles and means of a batched, padded engine run equal the one-by-one reference."""
    got = engine(arch)
    want_units, want_means = reference(arch)
    assert_units_match(got.units, want_units, arch)
    assert_means_match(got.means, want_means, arch)


@pytest.mark.parametrize("arch", archs())
def test_parameter_accounting(arch, reference_model, engine):
    """Units' parameters plus the parameters no unit owns add up to the model; the engine counts the same."""
    model, _ = reference_model(arch)
    acc = parameter_accounting(model)
    assert acc["unit"] + acc["non_unit"] == acc["total"], f"{arch}: {acc}"
    got = engine(arch).units
    assert int(got.params.sum()) == acc["unit"], f"{arch}: engine unit params {got.params.sum()} vs {acc['unit']}"
    assert (got.params > 0).all()


@pytest.mark.parametrize("arch", archs(["llama-gqa", "qwen3", "gemma2", "phi3", "gpt2", "gpt_neox"]))
@pytest.mark.parametrize("batch_size,padding_side", [(1, "right"), (3, "right"), (8, "right"),
                                                     (1, "left"), (3, "left"), (8, "left")])
def test_batch_size_and_padding_do_not_change_scores(arch, batch_size, padding_side, engine, reference):
    """GPT-2's learned positions and Gemma-2's sliding window make left padding a real test, not a formality."""
    got = engine(arch, batch_size=batch_size, padding_side=padding_side)
    want_units, want_means = reference(arch)
    assert_units_match(got.units, want_units, f"{arch} batch_size={batch_size} padding_side={padding_side}")
    assert_means_match(got.means, want_means, f"{arch} batch_size={batch_size} padding_side={padding_side}")


@pytest.mark.parametrize("arch,positions", [("qwen2", "prompt"), ("qwen2", "all"), ("gpt_neox", "prompt"),
                                            ("gpt2", "all")])
def test_positions_match_reference(arch, positions, engine, reference):
    got = engine(arch, positions=positions)
    want_units, want_means = reference(arch, positions)
    assert_units_match(got.units, want_units, f"{arch} positions={positions}")
    assert_means_match(got.means, want_means, f"{arch} positions={positions}")
    # a different set of tokens must give different statistics, or the knob is not wired through
    response = reference(arch)[0]
    assert not np.allclose(response.score_safety, want_units.score_safety, rtol=1e-3)


@pytest.mark.parametrize("arch", archs())
def test_role_masses_are_within_one_unit_of_thresholds(arch, engine):
    """Each selection holds at least h of the unit parameters and overshoots by less than its largest unit."""
    units = engine(arch).units
    params = units.params.to_numpy(np.int64)
    total = int(params.sum())
    zs, zu = units.z_safety.to_numpy(np.float64), units.z_utility.to_numpy(np.float64)
    role = units.role.astype(str).to_numpy()
    selections = {"RU": select(params, zs + zu, DEFAULT.h_ru), "SCU": select(params, zs - zu, DEFAULT.h_scu, top=True),
                  "UCU": select(params, zs - zu, DEFAULT.h_ucu)}
    for name, chosen in selections.items():
        h = getattr(DEFAULT, f"h_{name.lower()}")
        mass = int(params[chosen].sum())
        assert h * total <= mass < h * total + params[chosen].max(), f"{arch} {name}: {mass} of {total}"
    assert not (selections["SCU"] & selections["UCU"]).any(), f"{arch}: SCU and UCU overlap"
    for name in ("SCU", "UCU"):  # final: nothing overrides them
        assert (role == name).tolist() == selections[name].tolist(), f"{arch}: {name} is not its selection"
    ru = selections["RU"]
    assert np.isin(role[ru], ["RU", "SCU", "UCU"]).all(), f"{arch}: part of the RU selection ended up CU"
    assert ((role == "RU") == (ru & ~selections["SCU"] & ~selections["UCU"])).all(), f"{arch}: RU beyond its selection"
    assert (role[~(ru | selections["SCU"] | selections["UCU"])] == "CU").all()


@pytest.mark.parametrize("thresholds", [Thresholds(h_ru=0.30, h_scu=0.04, h_ucu=0.12),
                                        Thresholds(h_ru=0.0, h_scu=0.0, h_ucu=0.2)])
def test_other_thresholds_match_reference(thresholds, engine, reference):
    arch = "llama-gqa"
    got = engine(arch, thresholds=thresholds).units
    want = reference(arch)[0].copy()
    want["role"] = classify(want, thresholds.h_ru, thresholds.h_scu, thresholds.h_ucu)
    assert_units_match(got, want, f"{arch} {thresholds}")
    if thresholds.h_scu == 0:
        assert not (got.role == "SCU").any() and not (got.role == "RU").any()


def test_two_runs_save_identical_files(loaded, safety_pairs, utility_pairs, tmp_path):
    outs = []
    for i in range(2):
        result = attribute(loaded("gemma"), safety_pairs, utility_pairs, batch_size=4)
        outs.append(Path(result.save(tmp_path / f"run{i}")))
    a, b = outs
    for name in ("units.parquet", "means.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two identical runs"
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in outs)
    ma.pop("timings"), mb.pop("timings")
    assert ma == mb


def test_a_saved_run_reads_back_the_same_units(engine, tmp_path):
    out = engine("qwen3").save(tmp_path / "run")
    saved = pd.read_parquet(Path(out) / "units.parquet")
    assert_units_match(saved, engine("qwen3").units, "saved units.parquet")


def test_a_saved_run_passes_the_contract_checker(engine, tmp_path):
    check_run_folder(engine("qwen3").save(tmp_path / "run"))
