"""Pruning (reversible hooks and exported weights), unit selection and random controls."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from tiny import archs
from transformers import AutoModelForCausalLM

from backend.engine import attribute, load_model
from backend.engine.interventions import (
    DEFAULT_REFERENCE,
    GroupSpec,
    InterventionError,
    export_pruned,
    prune,
    pruned_copy,
    random_like,
    reference_means,
    select,
    unit_masks,
)

EXPORTS_MEAN = {"llama", "llama-gqa", "mistral", "qwen2", "smollm3", "gpt2", "gpt_neox"}


@pytest.fixture(scope="module")
def attributed(tiny_model_path, safety_pairs, utility_pairs):
    cache = {}

    def get(arch):
        if arch not in cache:
            loaded = load_model(str(tiny_model_path(arch)), device="cpu", dtype="float32")
            cache[arch] = loaded, attribute(loaded, safety_pairs, utility_pairs, batch_size=4)
        return cache[arch]
    return get


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([list(range(5, 45)), list(range(60, 100))])


def manual_ablation_logits(loaded, selection, means):
    """The same intervention computed by hand: overwrite each selected channel of each B input."""
    modules = dict(loaded.model.named_modules())
    handles = []
    for block in loaded.units.blocks:
        rows = selection[(selection.layer == block.layer) & (selection.module == block.module)]
        if rows.empty:
            continue

        def hook(_m, args, block=block, rows=rows):
            x = args[0].clone()
            for unit, ref in zip(rows.unit, rows.reference):
                span = slice(unit * block.unit_size, (unit + 1) * block.unit_size)
                if ref == "zero":
                    x[..., span] = 0
                else:
                    s, u = means[f"safety.{block.key}"][span], means[f"utility.{block.key}"][span]
                    x[..., span] = {"safety": s, "utility": u, "pooled": (s + u) / 2}[ref]
            return (x,)
        handles.append(modules[block.b_module].register_forward_pre_hook(hook))
    try:
        return logits(loaded.model, IDS)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", archs())
def test_hooks_match_a_hand_ablation_and_leave_the_model_untouched(arch, attributed):
    loaded, run = attributed(arch)
    before = logits(loaded.model, IDS)
    selection = select(run.units, ["SCU", "UCU"], cu_fraction=0.2)
    with prune(loaded, selection, run.means, tokens={"safety": 1, "utility": 1}):
        hooked = logits(loaded.model, IDS)
    assert not torch.allclose(hooked, before, atol=1e-4)  # the intervention does something
    torch.testing.assert_close(hooked, manual_ablation_logits(loaded, selection, run.means), rtol=1e-5, atol=1e-5)
    assert torch.equal(logits(loaded.model, IDS), before)


def test_model_is_restored_even_when_the_block_raises(attributed):
    loaded, run = attributed("llama")
    before = logits(loaded.model, IDS)
    with pytest.raises(RuntimeError, match="boom"):
        with prune(loaded, select(run.units, ["SCU"]), run.means):
            raise RuntimeError("boom")
    assert torch.equal(logits(loaded.model, IDS), before)


@pytest.mark.parametrize("arch", archs())
@pytest.mark.parametrize("reference", [None, "zero"])
def test_exported_model_gives_the_hooked_logits(arch, reference, attributed, tmp_path):
    loaded, run = attributed(arch)
    selection = select(run.units, ["SCU", "UCU"], cu_fraction=0.2, reference=reference)
    if reference is None and arch not in EXPORTS_MEAN:
        with pytest.raises(InterventionError, match="reversible hooks or --reference zero"):
            pruned_copy(loaded, selection, run.means)
        return
    with prune(loaded, selection, run.means, tokens=run_tokens(run)):
        hooked = logits(loaded.model, IDS)
    folder = export_pruned(loaded, selection, run.means, tmp_path / "pruned", tokens=run_tokens(run))
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.testing.assert_close(logits(reloaded, IDS), hooked, rtol=1e-5, atol=2e-5)
    assert not list(tmp_path.glob(".pruned*")), "no temporary folder is left behind"


def run_tokens(run):
    return {k: v["tokens_counted"] for k, v in run.manifest["datasets"].items()}


def test_default_references_are_the_other_attribute(attributed):
    _, run = attributed("llama")
    selection = select(run.units, ["SCU", "UCU", "RU", "CU"])
    assert (selection.reference == selection.role.map(DEFAULT_REFERENCE)).all()
    assert DEFAULT_REFERENCE == {"SCU": "utility", "UCU": "safety", "CU": "pooled", "RU": "pooled"}
    assert set(select(run.units, ["SCU"], reference="safety").reference) == {"safety"}


def test_pooled_reference_weights_the_sets_by_tokens(attributed):
    _, run = attributed("llama")
    s, u = run.means["safety.mlp.0"], run.means["utility.mlp.0"]
    pooled = reference_means(run.means, "mlp.0", "pooled", {"safety": 30, "utility": 10})
    torch.testing.assert_close(pooled, (3 * s + u) / 4)


def test_cu_fraction_takes_the_cu_units_with_highest_diff(attributed):
    _, run = attributed("llama")
    units = run.units
    picked = select(units, cu_fraction=0.25)
    cu = units[units.role == "CU"]
    assert set(picked.role) == {"CU"}
    mass = picked.params.sum() / cu.params.sum()
    assert 0.25 <= mass <= 0.25 + cu.params.max() / cu.params.sum()
    diff = cu.z_safety - cu.z_utility
    assert (picked.z_safety - picked.z_utility).min() >= diff[~cu.index.isin(picked.index)].max()


def test_layer_ranges_and_explicit_units(attributed):
    _, run = attributed("llama")
    picked = select(run.units, ["CU"], layers=[1])
    assert set(picked.layer) == {1} and len(picked) == ((run.units.layer == 1) & (run.units.role == "CU")).sum()
    explicit = select(run.units, explicit=[(0, "attn", 1), (1, "mlp", 3)])
    assert list(zip(explicit.layer, explicit.module, explicit.unit)) == [(0, "attn", 1), (1, "mlp", 3)]
    with pytest.raises(InterventionError, match="no such units"):
        select(run.units, explicit=[(0, "mlp", 10_000)])
    with pytest.raises(InterventionError, match="no layer 99"):
        select(run.units, ["SCU"], layers=[99])


def test_random_control_has_the_same_mass_per_module_and_is_seeded(attributed):
    _, run = attributed("llama-gqa")
    scu = select(run.units, ["SCU", "UCU"])
    a, b, c = (random_like(run.units, scu, seed=s) for s in (0, 0, 1))
    pd.testing.assert_frame_equal(a, b)
    assert not a.index.equals(c.index)
    for module in ("attn", "mlp"):
        target = scu.params[scu.module == module].sum()
        got = a.params[a.module == module].sum()
        biggest = run.units.params[run.units.module == module].max()
        assert target <= got < target + biggest or target == got == 0


@pytest.mark.parametrize("text, message", [
    ("SCX", "unknown unit group 'SCX'"),
    ("CU:1.5", "must be in [0, 1]"),
    ("CU:-0.1", "must be in [0, 1]"),
    ("CU:abc", "must be a number"),
    ("SCU:0.5", "only CU takes a fraction"),
    ("", "no unit group"),
])
def test_bad_group_specs_are_named(text, message):
    with pytest.raises(InterventionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        GroupSpec.parse(text)


def test_group_spec_parses_the_cli_forms():
    assert GroupSpec.parse("SCU,CU:0.06") == GroupSpec(("SCU",), 0.06, False)
    assert GroupSpec.parse("scu, ucu") == GroupSpec(("SCU", "UCU"), 0.0, False)
    assert GroupSpec.parse("random").random


def test_a_run_from_another_model_is_refused(attributed):
    loaded, _ = attributed("llama")
    _, other = attributed("gpt2")  # different layer count / widths
    with pytest.raises(InterventionError, match="another model"):
        with prune(loaded, select(other.units, ["SCU", "UCU", "RU"]), other.means):
            pass


def test_unit_masks_cover_a_units_a_rows_and_b_columns(attributed):
    loaded, run = attributed("llama-gqa")
    units = run.units
    mlp_unit = units[(units.module == "mlp") & (units.layer == 0)].iloc[[2]]
    masks = unit_masks(loaded.model, loaded.units, mlp_unit.assign(reference="zero"))
    p = "model.layers.0.mlp"
    assert masks[f"{p}.down_proj.weight"][:, 2].all() and masks[f"{p}.down_proj.weight"].sum() == masks[f"{p}.down_proj.weight"].shape[0]
    assert masks[f"{p}.gate_proj.weight"][2].all() and masks[f"{p}.up_proj.weight"][2].all()
    owned = sum(int(m.sum()) for m in masks.values())
    assert owned == int(mlp_unit.params.iloc[0])
    # a head shares k/v with its group: "any" marks them, "all" does not unless the whole group is chosen
    head = units[(units.module == "attn") & (units.layer == 0) & (units.unit == 0)]
    any_masks = unit_masks(loaded.model, loaded.units, head, shared="any")
    all_masks = unit_masks(loaded.model, loaded.units, head, shared="all")
    assert any_masks["model.layers.0.self_attn.k_proj.weight"].any()
    assert "model.layers.0.self_attn.k_proj.weight" not in all_masks or not all_masks["model.layers.0.self_attn.k_proj.weight"].any()
