"""One unit up close (engine/inspect.py) against independent computations: top tokens by hand through the final
norm and the unembedding (Llama's RMSNorm, GPT-2's LayerNorm), peak contexts against a hook on the plain
transformers model run one sample at a time, percentiles against pandas, role boundaries against the reference
classifier, and the per-channel variances a run now saves."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from reference import blocks, channel_rows, select
from reference import classify as reference_classify
from transformers import AutoModelForCausalLM

from backend.engine import Thresholds, load_model
from backend.engine.attribution import attribute, calibration_sets, load_run
from backend.engine.chat import count_mask, encode_pairs
from backend.engine.data import CalibrationSet
from backend.engine.inspect import (
    NoSuchUnit,
    inspect_unit,
    top_tokens,
    unit_activations,
    unit_block,
    unit_channels,
    unit_numbers,
    write_direction,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tiny_model_path, safety_pairs, utility_pairs, tmp_path_factory):
    """`runs(arch)` -> (loaded model, saved and re-read run folder, the plain transformers model)."""
    made = {}

    def get(arch: str):
        if arch not in made:
            path = tiny_model_path(arch)
            loaded = load_model(str(path), device="cpu", dtype="float32")
            safety = CalibrationSet("safety", tuple(safety_pairs), "tests")
            utility = CalibrationSet("utility", tuple(utility_pairs), "tests")
            folder = attribute(loaded, safety, utility, batch_size=4).save(tmp_path_factory.mktemp(arch))
            plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            made[arch] = loaded, load_run(folder), plain, {"safety": safety, "utility": utility}
        return made[arch]

    return get


def hand_logits(plain, arch: str, module: str, layer: int, unit: int, means=None, tokens=None) -> torch.Tensor:
    """The unit's write direction through the final norm and the unembedding, spelled out per layout."""
    with torch.no_grad():
        if arch == "gpt2":
            h = plain.transformer.h[layer]
            if module == "mlp":
                direction = h.mlp.c_proj.weight[unit, :]  # Conv1D: in x out, so channel j is row j
            else:
                d = plain.config.n_embd // plain.config.n_head
                pooled = (tokens["safety"] * means[f"safety.attn.{layer}"] + tokens["utility"]
                          * means[f"utility.attn.{layer}"]) / (tokens["safety"] + tokens["utility"])
                direction = pooled[unit * d:(unit + 1) * d] @ h.attn.c_proj.weight[unit * d:(unit + 1) * d, :]
            centred = direction - direction.mean()  # LayerNorm centres, then scales
            return plain.lm_head.weight @ (centred * plain.transformer.ln_f.weight)
        layer_ = plain.model.layers[layer]
        if module == "mlp":
            direction = layer_.mlp.down_proj.weight[:, unit]
        else:
            d = layer_.self_attn.o_proj.in_features // plain.config.num_attention_heads
            pooled = (tokens["safety"] * means[f"safety.attn.{layer}"] + tokens["utility"]
                      * means[f"utility.attn.{layer}"]) / (tokens["safety"] + tokens["utility"])
            direction = layer_.self_attn.o_proj.weight[:, unit * d:(unit + 1) * d] @ pooled[unit * d:(unit + 1) * d]
        scale = plain.model.norm.weight + (1 if arch == "gemma" else 0)  # Gemma's RMSNorm scales by 1 + w
        return plain.lm_head.weight @ (scale * direction)  # RMSNorm: an elementwise scale only


@pytest.mark.parametrize("arch", ["llama", "gpt2", pytest.param("gemma", marks=pytest.mark.slow)])
@pytest.mark.parametrize("module", ["mlp", "attn"])
def test_top_tokens_are_the_units_direction_read_through_the_final_norm_and_the_unembedding(runs, arch, module):
    loaded, run, plain, _ = runs(arch)
    layer, unit = 1, 2
    block = unit_block(loaded, module, layer)
    found = top_tokens(loaded, write_direction(loaded, block, unit, run.means, run.tokens), k=5)
    logits = hand_logits(plain, arch, module, layer, unit, run.means, run.tokens).double()
    order = torch.argsort(logits, descending=True)
    for name, ids in (("promoted", order[:5]), ("suppressed", order.flip(0)[:5])):
        assert [t["id"] for t in found[name]] == ids.tolist(), name
        np.testing.assert_allclose([t["logit"] for t in found[name]], logits[ids].numpy(), rtol=1e-4, atol=1e-5)
        assert [t["token"] for t in found[name]] == [loaded.tokenizer.decode([i]) for i in ids.tolist()]
    assert found["promoted"][0]["logit"] > 0 > found["suppressed"][0]["logit"]


def direct_activations(plain, arch: str, module: str, layer: int, unit: int, ids: tuple[int, ...]) -> np.ndarray:
    """The unit's B-input value at every token of one unpadded sample, from a hook on the whole model's forward."""
    if arch == "gpt2":
        b = plain.transformer.h[layer].mlp.c_proj if module == "mlp" else plain.transformer.h[layer].attn.c_proj
        d = 1 if module == "mlp" else plain.config.n_embd // plain.config.n_head
    else:
        b = plain.model.layers[layer].mlp.down_proj if module == "mlp" else plain.model.layers[layer].self_attn.o_proj
        d = 1 if module == "mlp" else b.in_features // plain.config.num_attention_heads
    seen = {}
    handle = b.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0][0].detach()))
    try:
        with torch.no_grad():
            plain(input_ids=torch.tensor([list(ids)]), use_cache=False)
    finally:
        handle.remove()
    x = seen["x"][:, unit * d:(unit + 1) * d].double()
    return (x[:, 0] if module == "mlp" else x.norm(dim=-1)).numpy()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("module", ["mlp", "attn"])
def test_peak_contexts_hold_the_activations_a_direct_hook_reads(runs, arch, module):
    loaded, run, plain, sets = runs(arch)
    layer, unit = 0, 1  # layer 0 of 2: the engine's forward stops there, the direct one runs the whole model
    found = inspect_unit(loaded, sets, module, layer, unit, means=run.means, tokens=run.tokens, contexts=4,
                         left=3, right=2, batch_size=5)
    for split, calibration in sets.items():
        encoded = encode_pairs(loaded.tokenizer, calibration.pairs)
        direct = [direct_activations(plain, arch, module, layer, unit, e.input_ids) for e in encoded]
        peaks = sorted(((float(a[np.asarray(count_mask(e, "response"))].max()), i)
                        for i, (a, e) in enumerate(zip(direct, encoded)) if e.response_len), key=lambda p: -p[0])
        contexts = found.contexts[split]
        assert [c["sample"] for c in contexts] == [i for _, i in peaks[:4]]
        for c in contexts:
            values = direct[c["sample"]]
            lo = c["position"] - c["focus"]
            np.testing.assert_allclose(c["activations"], values[lo:lo + len(c["activations"])], rtol=1e-4,
                                       atol=1e-5)
            assert c["activation"] == pytest.approx(values[c["position"]], rel=1e-4, abs=1e-5)
            assert c["activations"][c["focus"]] == c["activation"]
            assert not c["in_prompt"] and c["focus"] <= 3 and len(c["tokens"]) == len(c["activations"])
            ids = encoded[c["sample"]].input_ids
            assert c["tokens"] == [loaded.tokenizer.decode([t]) for t in ids[lo:lo + len(c["tokens"])]]
            prompt = encoded[c["sample"]].prompt_len
            assert c["response_start"] == sum(lo + i < prompt for i in range(len(c["tokens"])))
    assert found.top_tokens["promoted"] and found.settings["positions"] == "response"


def test_the_calibration_sets_are_rebuilt_as_the_manifest_records_them(tmp_path, tiny_model_path, safety_pairs):
    from backend.engine.data import DataError
    from backend.verbs import AttributeRequest
    from backend.verbs import attribute as attribute_verb

    rows = "".join(json.dumps({"prompt": p.prompt, "response": p.response}) + "\n" for p in safety_pairs)
    data = tmp_path / "pairs.jsonl"
    data.write_text(rows)
    folder = tmp_path / "run"
    attribute_verb(AttributeRequest(str(tiny_model_path("llama")), safety=str(data), utility=str(data), samples=5,
                                    seed=3, device="cpu", dtype="float32"), folder)
    sets = calibration_sets(load_run(folder))
    assert [len(s.pairs) for s in sets.values()] == [5, 5]
    data.write_text(rows.replace('"}', ' (edited)"}'))  # every response changed after the run
    with pytest.raises(DataError, match="changed"):
        calibration_sets(load_run(folder))


def test_a_run_saves_channel_variances_and_old_runs_without_them_still_read(runs, tmp_path):
    loaded, run, plain, sets = runs("llama")
    bl = blocks(plain)
    encoded = encode_pairs(loaded.tokenizer, sets["safety"].pairs)
    for b, x in zip(bl, channel_rows(plain, bl, encoded, "response")):
        np.testing.assert_allclose(run.variances[f"safety.{b.module}.{b.layer}"].double().numpy(),
                                   x.var(dim=0, correction=1).numpy(), rtol=1e-4, atol=1e-6)
    n_heads = int(((run.units.layer == 1) & (run.units.module == "attn")).sum())
    channels = unit_channels(run.folder, "attn", 1, 2, n_heads)
    d = len(channels["safety"]["mean"])
    assert d == run.means["safety.attn.1"].numel() // n_heads
    np.testing.assert_allclose(channels["utility"]["variance"], run.variances["utility.attn.1"][2 * d:3 * d])
    np.testing.assert_allclose(channels["safety"]["mean"], run.means["safety.attn.1"][2 * d:3 * d])
    old = tmp_path / "old"
    old.mkdir()
    for name in ("units.parquet", "means.safetensors", "manifest.json"):
        (old / name).write_bytes((run.folder / name).read_bytes())
    assert load_run(old).variances is None
    assert unit_channels(old, "mlp", 0, 3, 48)["safety"]["variance"] is None


def synthetic_units(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([pd.DataFrame({
        "layer": layer, "module": module, "unit": np.arange(n), "params": np.full(n, size, dtype=np.int64),
        "score_safety": rng.random(n).round(2), "score_utility": rng.random(n).round(2),
        "z_safety": rng.standard_normal(n).round(1), "z_utility": rng.standard_normal(n).round(1), "role": "CU"})
        for layer in range(4) for module, n, size in (("attn", 4, 97), ("mlp", 60, 13))], ignore_index=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_numbers_percentiles_and_role_boundaries_against_pandas_and_the_reference(seed):
    units = synthetic_units(seed)
    zs, zu, params = units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy()
    thresholds = Thresholds(h_ru=0.2, h_scu=0.05, h_ucu=0.1)
    roles = reference_classify(units, 0.2, 0.05, 0.1)
    inside = {"RU": select(params, zs + zu, 0.2), "SCU": select(params, zs - zu, 0.05, top=True),
              "UCU": select(params, zs - zu, 0.1)}
    cutoffs = {"RU": (zs + zu)[inside["RU"]].max(), "SCU": (zs - zu)[inside["SCU"]].min(),
               "UCU": (zs - zu)[inside["UCU"]].max()}
    table = units.assign(sum=zs + zu, diff=zs - zu)
    ranked = {"model": table[["score_safety", "z_safety", "diff"]].rank(method="max", pct=True) * 100}
    for row in range(0, len(units), 7):
        layer, module, unit = int(units.layer[row]), units.module[row], int(units.unit[row])
        got = unit_numbers(units, module, layer, unit, thresholds)
        assert got.role == roles[row] and got.params == params[row]
        assert got.values["diff"] == pytest.approx(zs[row] - zu[row])
        block = table[(table.layer == layer) & (table.module == module)]
        in_block = block[["z_utility", "sum"]].rank(method="max", pct=True) * 100
        assert got.percentiles["layer"]["z_utility"] == pytest.approx(in_block.z_utility[row])
        assert got.percentiles["layer"]["sum"] == pytest.approx(in_block["sum"][row])
        for name in ("score_safety", "z_safety", "diff"):
            assert got.percentiles["model"][name] == pytest.approx(ranked["model"][name][row])
        for role, boundary in got.boundaries.items():
            assert boundary["cutoff"] == pytest.approx(cutoffs[role])
            key = zs[row] + zu[row] if role == "RU" else zs[row] - zu[row]
            assert boundary["distance"] == pytest.approx(key - cutoffs[role] if role == "SCU" else cutoffs[role] - key)
            if inside[role][row]:
                assert boundary["inside"]  # every unit a role's prefix takes is inside its boundary
            elif boundary["distance"] != 0:  # (a unit tied with the cutoff may fall outside)
                assert not boundary["inside"]
    with pytest.raises(NoSuchUnit, match="60 mlp channels"):
        unit_numbers(units, "mlp", 1, 60, thresholds)
    with pytest.raises(NoSuchUnit, match="no layer 9"):
        unit_numbers(units, "attn", 9, 0, thresholds)
    assert unit_numbers(units, "mlp", 0, 0, Thresholds(0, 0, 0)).boundaries["SCU"]["cutoff"] is None


def test_the_contexts_forward_stops_at_the_units_layer(runs):
    loaded, run, plain, sets = runs("llama")
    encoded = encode_pairs(loaded.tokenizer, sets["safety"].pairs[:3])
    reached = []
    handles = [loaded.model.model.layers[1].register_forward_pre_hook(lambda _m, _a: reached.append("layer 1")),
               loaded.model.model.norm.register_forward_pre_hook(lambda _m, _a: reached.append("final norm"))]
    try:
        unit_activations(loaded, encoded, unit_block(loaded, "mlp", 0), 1)
        assert reached == []  # nothing after layer 0's down_proj ran
        unit_activations(loaded, encoded, unit_block(loaded, "attn", 1), 1)
        assert reached == ["layer 1"]  # layer 1 began, its o_proj was the end
    finally:
        for handle in handles:
            handle.remove()
