"""Fine-tuning with frozen units and the alignment budget: frozen entries stay bit-identical, the rest trains."""
from __future__ import annotations

import json

import pytest
import torch
from tiny import archs
from transformers import AutoModelForCausalLM

from backend.engine import attribute, load_model
from backend.engine.chat import encode_pairs
from backend.engine.data import DataError, Pair
from backend.engine.interventions import GroupSpec, InterventionError, select
from backend.engine.masks import count_trainable, load_masks, mask_plan, trainable_masks
from backend.engine.models import skeleton
from backend.recipes.finetune import FinetuneConfig, finetune, response_loss, save_model

FREEZE = GroupSpec.parse("SCU,CU:0.06")
BUDGET = GroupSpec.parse("RU")
FAST = FinetuneConfig(steps=4, lr=1e-3, batch_size=4, weight_decay=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_of(tiny_model_path, safety_pairs, utility_pairs):
    """`run_of(arch)` -> units table of the tiny model of `arch` (attributed once per module)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            loaded = fresh(tiny_model_path, arch)
            cache[arch] = attribute(loaded, safety_pairs, utility_pairs, batch_size=4).units
        return cache[arch]
    return get


@pytest.fixture(scope="module")
def pairs(safety_pairs, utility_pairs):
    return list(safety_pairs) + list(utility_pairs)


def fresh(tiny_model_path, arch):
    return load_model(str(tiny_model_path(arch)), device="cpu", dtype="float32")


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def full(mask, p):
    return mask.expand(p.shape) if mask.dim() == 0 else mask


def check_frozen_and_moved(model, before, masks):
    """Frozen entries bit-identical; every parameter with trainable entries moved, and nearly all of its
    trainable entries did (weight decay moves even entries without gradient in matrices)."""
    for name, p in model.named_parameters():
        trainable = full(masks[name], p)
        assert torch.equal(p.detach()[~trainable], before[name][~trainable]), f"frozen entries of {name} moved"
        if trainable.any():
            moved = (p.detach() != before[name])[trainable].float().mean().item()
            assert moved > 0.95, f"only {moved:.0%} of the trainable entries of {name} moved"


# ---------------------------------------------------------------- masks along the right axes


def test_gpt2_masks_follow_conv1d_axes(tiny_model_path, run_of):
    """GPT-2's Conv1D weights are in x out: a channel's A entries are a column of c_fc, its B entries a row of
    c_proj; a head's q/k/v entries are columns of c_attn."""
    loaded, units = fresh(tiny_model_path, "gpt2"), run_of("gpt2")
    mlp = units[(units.module == "mlp") & (units.layer == 1) & (units.unit == 5)].assign(role="SCU")
    head = units[(units.module == "attn") & (units.layer == 0) & (units.unit == 2)].assign(role="SCU")
    table = units.assign(role="CU")
    table.loc[mlp.index, "role"] = "SCU"
    table.loc[head.index, "role"] = "SCU"
    masks = trainable_masks(loaded, table, freeze=GroupSpec(("SCU",)))
    p = "transformer.h.1.mlp"
    assert not masks[f"{p}.c_fc.weight"][:, 5].any() and masks[f"{p}.c_fc.weight"][:, 4].all()
    assert not masks[f"{p}.c_fc.bias"][5] and masks[f"{p}.c_fc.bias"][6]
    assert not masks[f"{p}.c_proj.weight"][5, :].any() and masks[f"{p}.c_proj.weight"][4, :].all()
    d, hidden = 8, 32
    c_attn = masks["transformer.h.0.attn.c_attn.weight"]
    for off in (0, hidden, 2 * hidden):  # q, k, v
        assert not c_attn[:, off + 2 * d:off + 3 * d].any()
    assert int((~c_attn).sum()) == 3 * d * hidden
    assert not masks["transformer.h.0.attn.c_proj.weight"][2 * d:3 * d, :].any()
    # wholly trainable parameters get a 0-dim mask; frozen entries add up to the units' parameters
    assert masks["transformer.wte.weight"].dim() == 0 and bool(masks["transformer.wte.weight"])
    trainable, frozen = count_trainable(loaded.model, masks)
    assert frozen == int(mlp.params.sum() + head.params.sum())
    assert trainable + frozen == sum(q.numel() for q in loaded.model.parameters())


# ---------------------------------------------------------------- freezing and the alignment budget


@pytest.mark.parametrize("arch", archs(["llama-gqa", "qwen2", "gpt2"]))
def test_frozen_units_stay_bit_identical_and_the_rest_trains(arch, tiny_model_path, run_of, pairs):
    loaded, units = fresh(tiny_model_path, arch), run_of(arch)
    masks = trainable_masks(loaded, units, freeze=FREEZE)
    chosen = select(units, FREEZE.groups, cu_fraction=FREEZE.cu_fraction)
    before = snapshot(loaded.model)
    log = finetune(loaded, pairs, masks, FAST)
    check_frozen_and_moved(loaded.model, before, masks)
    # GQA keys/values are frozen when any head of their group is: at least the selection's parameters
    frozen = log["frozen_params"]
    assert frozen == int(chosen.params.sum()) if arch == "gpt2" else frozen >= int(chosen.params.sum())
    assert log["trainable_params"] + frozen == sum(p.numel() for p in loaded.model.parameters())
    assert len(log["loss"]) == FAST.steps and log["tokens"] > 0
    # the model is handed back as it was given: eval mode, every parameter requiring grad, no hooks left
    assert not loaded.model.training
    assert all(p.requires_grad and not p._backward_hooks for p in loaded.model.parameters())


@pytest.mark.parametrize("arch", archs(["llama-gqa", "gpt2"]))
def test_alignment_budget_trains_only_ru(arch, tiny_model_path, run_of, pairs):
    loaded, units = fresh(tiny_model_path, arch), run_of(arch)
    masks = trainable_masks(loaded, units, train_only=BUDGET)
    ru = units[units.role == "RU"]
    before = snapshot(loaded.model)
    log = finetune(loaded, pairs, masks, FAST)
    check_frozen_and_moved(loaded.model, before, masks)
    # embeddings, norms and the LM head are wholly frozen
    for name, p in loaded.model.named_parameters():
        if "embed" in name or "wte" in name or "wpe" in name or "norm" in name or ".ln_" in name or "lm_head" in name:
            assert masks[name].dim() == 0 and not masks[name], name
            assert torch.equal(p, before[name])
    # GQA keys/values train only when every head of their group is RU: at most RU's parameters
    trainable = log["trainable_params"]
    assert trainable == int(ru.params.sum()) if arch == "gpt2" else 0 < trainable <= int(ru.params.sum())


def test_random_freeze_control_matches_mass_and_seed(tiny_model_path, run_of):
    loaded, units = fresh(tiny_model_path, "gpt2"), run_of("gpt2")
    spec = GroupSpec(("SCU",), 0.0, random=True)
    a, b, c = (trainable_masks(loaded, units, freeze=spec, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(a[n].shape != c[n].shape or not torch.equal(a[n], c[n]) for n in a)
    scu = int(units.params[units.role == "SCU"].sum())
    assert count_trainable(loaded.model, a)[1] >= scu
    # `random` alone is the paper's control for SCU: the same masks as SCU,random
    alone = trainable_masks(loaded, units, freeze=GroupSpec.parse("random"), seed=0)
    assert all(torch.equal(alone[n], a[n]) for n in a)


# ---------------------------------------------------------------- masks as files, for other training code


@pytest.mark.parametrize("arch", archs(["llama-gqa", "gpt2", "gpt_neox", "phi3"]))
def test_a_masks_file_loads_into_the_same_masks_and_needs_no_weights(arch, tiny_model_path, run_of, tmp_path):
    """What `GET /runs/{id}/masks` serves: made from the config alone (meta device), saved, and loaded back into
    another process's model, it gives exactly the masks the fine-tune uses."""
    loaded, units = fresh(tiny_model_path, arch), run_of(arch)
    unit_map, shapes = skeleton(str(tiny_model_path(arch)))
    assert shapes == {n: tuple(p.shape) for n, p in loaded.model.named_parameters()}
    assert unit_map.blocks == loaded.units.blocks and unit_map.total_params == loaded.units.total_params
    for mode, spec in (("freeze", FREEZE), ("train_only", BUDGET)):
        plan = mask_plan(unit_map, shapes, units, **{mode: spec})
        masks = load_masks(plan.save(tmp_path / f"{mode}.safetensors"), loaded.model)
        expected = trainable_masks(loaded, units, **{mode: spec})
        for name, p in loaded.model.named_parameters():
            assert torch.equal(full(masks[name], p), full(expected[name], p)), (mode, name)
        assert plan.counts() == count_trainable(loaded.model, expected)


def test_a_masks_file_for_another_model_or_no_masks_file_is_refused(tiny_model_path, run_of, tmp_path):
    loaded, units = fresh(tiny_model_path, "llama-gqa"), run_of("llama-gqa")
    unit_map, shapes = skeleton(str(tiny_model_path("llama-gqa")))
    path = mask_plan(unit_map, shapes, units, freeze=FREEZE).save(tmp_path / "masks.safetensors")
    other = fresh(tiny_model_path, "llama").model
    with pytest.raises(DataError, match="made for another model"):
        load_masks(path, other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a masks file"):
        load_masks(tmp_path / "junk.safetensors", loaded.model)
    with pytest.raises(DataError, match="no masks file"):
        load_masks(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- the loss and reproducibility


def test_loss_counts_response_tokens_only(tiny_model_path, pairs):
    """response_loss equals transformers' own loss with prompt tokens labelled -100, pair by pair."""
    loaded = fresh(tiny_model_path, "qwen2")
    for pair in pairs[:3]:
        enc = encode_pairs(loaded.tokenizer, [pair])[0]
        ids = torch.tensor([enc.input_ids])
        labels = ids.clone()
        labels[0, :enc.prompt_len] = -100
        with torch.no_grad():
            expected = loaded.model(input_ids=ids, labels=labels).loss.item()
        assert response_loss(loaded, [pair]) == pytest.approx(expected, rel=1e-5)


def test_loss_goes_down(tiny_model_path, run_of, pairs):
    loaded, units = fresh(tiny_model_path, "llama-gqa"), run_of("llama-gqa")
    masks = trainable_masks(loaded, units, freeze=FREEZE)
    start = response_loss(loaded, pairs)
    log = finetune(loaded, pairs, masks, FinetuneConfig(steps=20, lr=1e-3, batch_size=8))
    end = response_loss(loaded, pairs)
    assert end < 0.85 * start
    assert sum(log["loss"][-5:]) < sum(log["loss"][:5])


def test_same_seed_gives_identical_weights(tiny_model_path, run_of, pairs):
    """GPT-2 has dropout, so this also checks that dropout is seeded (and the caller's RNG left alone)."""
    units = run_of("gpt2")
    weights = []
    for seed in (0, 0, 1):
        loaded = fresh(tiny_model_path, "gpt2")
        masks = trainable_masks(loaded, units, freeze=FREEZE)
        rng = torch.random.get_rng_state()
        finetune(loaded, pairs, masks, FinetuneConfig(steps=3, lr=1e-3, batch_size=4, weight_decay=0.1, seed=seed))
        assert torch.equal(rng, torch.random.get_rng_state())
        weights.append(snapshot(loaded.model))
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert not all(torch.equal(weights[0][n], weights[2][n]) for n in weights[0])


def test_full_fine_tuning_without_masks(tiny_model_path, pairs):
    loaded = fresh(tiny_model_path, "llama")
    before = snapshot(loaded.model)
    log = finetune(loaded, pairs, None, FinetuneConfig(steps=2, lr=1e-3, batch_size=4))
    assert log["frozen_params"] == 0
    assert all(not torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())
    json.dumps(log)


def test_warmup_ramps_the_learning_rate(tiny_model_path, pairs):
    loaded = fresh(tiny_model_path, "llama")
    log = finetune(loaded, pairs, None, FinetuneConfig(steps=4, lr=1e-3, warmup_steps=3, batch_size=2))
    assert log["lr"] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, field", [
    (dict(steps=0), "steps"), (dict(steps=-3), "steps"), (dict(steps=1, lr=-1e-4), "lr"), (dict(steps=1, lr=0), "lr"),
    (dict(steps=1, batch_size=0), "batch_size"), (dict(steps=1, weight_decay=-0.1), "weight_decay"),
    (dict(steps=1, max_length=1), "max_length"), (dict(steps=1, warmup_steps=-1), "warmup_steps"),
    (dict(steps=1, lr=float("nan")), "lr"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        FinetuneConfig(**kwargs)


def test_empty_or_responseless_data_is_refused(tiny_model_path):
    loaded = fresh(tiny_model_path, "llama")
    with pytest.raises(DataError, match="empty"):
        finetune(loaded, [], None, FAST)
    with pytest.raises(DataError, match="no pair .* has a response token"):
        finetune(loaded, [Pair("hello", "")], None, FAST)


@pytest.mark.parametrize("model_arch, run_arch", [("llama", "gpt2"), ("llama", "llama-gqa"), ("qwen2", "mistral")])
def test_a_run_from_another_model_is_refused(model_arch, run_arch, tiny_model_path, run_of):
    loaded = fresh(tiny_model_path, model_arch)
    with pytest.raises(InterventionError, match="the run was made on another model"):
        trainable_masks(loaded, run_of(run_arch), freeze=FREEZE)


def test_masks_must_fit_and_leave_something_to_train(tiny_model_path, run_of, pairs):
    loaded, units = fresh(tiny_model_path, "llama"), run_of("llama")
    with pytest.raises(InterventionError, match="exactly one"):
        trainable_masks(loaded, units, freeze=FREEZE, train_only=BUDGET)
    with pytest.raises(InterventionError, match="exactly one"):
        trainable_masks(loaded, units)
    other = trainable_masks(fresh(tiny_model_path, "gpt2"), run_of("gpt2"), freeze=FREEZE)
    with pytest.raises(ValueError, match="masks do not fit this model"):
        finetune(loaded, pairs, other, FAST)
    no_ru = trainable_masks(loaded, units.assign(role="CU"), train_only=BUDGET)
    with pytest.raises(InterventionError, match="nothing to train"):
        finetune(loaded, pairs, no_ru, FAST)


# ---------------------------------------------------------------- saving


def test_save_model_round_trips_and_never_clobbers_other_folders(tiny_model_path, pairs, tmp_path):
    loaded = fresh(tiny_model_path, "gpt2")
    finetune(loaded, pairs, None, FinetuneConfig(steps=1, lr=1e-3, batch_size=4))
    out = save_model(loaded, tmp_path / "tuned")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    saved = dict(reloaded.named_parameters())
    assert all(torch.equal(p, saved[n]) for n, p in loaded.model.named_parameters())
    assert (out / "tokenizer.json").exists() and list(out.glob("*.safetensors"))
    untouched = fresh(tiny_model_path, "gpt2")
    save_model(untouched, out)  # a model folder is replaced whole
    replaced = dict(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).named_parameters())
    assert all(torch.equal(p, replaced[n]) for n, p in untouched.model.named_parameters())
    assert [p.name for p in tmp_path.iterdir()] == ["tuned"]  # no temp folders left behind
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a model folder"):
        save_model(loaded, precious)
    assert (precious / "thesis.txt").read_text() == "keep me"


def test_half_precision_warns_and_still_keeps_frozen_entries(tiny_model_path, run_of, pairs):
    loaded = load_model(str(tiny_model_path("qwen2")), device="cpu", dtype="bfloat16")
    masks = trainable_masks(loaded, run_of("qwen2"), freeze=FREEZE)
    before = snapshot(loaded.model)
    with pytest.warns(UserWarning, match="load the model in float32"):
        log = finetune(loaded, pairs, masks, FinetuneConfig(steps=2, lr=1e-2, batch_size=4, weight_decay=0.1))
    assert log["dtype"] == "bfloat16"
    for name, p in loaded.model.named_parameters():
        frozen = ~full(masks[name], p)
        assert torch.equal(p.detach()[frozen], before[name][frozen]), name


def _kl_from(teacher, student, loaded, pairs) -> float:
    """KL(teacher || student) per response token, written out: sum over the vocabulary of p (log p - log q)."""
    from backend.recipes.finetune import IGNORE, _batch, _encode

    encoded, _ = _encode(loaded, pairs, None)
    ids, attention, positions, labels = _batch(loaded, encoded)
    with torch.no_grad():
        p = torch.softmax(teacher(input_ids=ids, attention_mask=attention, position_ids=positions).logits.double(), -1)
        q = torch.softmax(student(input_ids=ids, attention_mask=attention, position_ids=positions).logits.double(), -1)
    scored = labels[:, 1:] != IGNORE
    p, q = p[:, :-1][scored], q[:, :-1][scored]
    return float((p * (p.log() - q.log())).sum(-1).mean())


def test_distillation_moves_the_model_toward_the_teachers_distributions(tiny_model_path, utility_pairs):
    student = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
    teacher = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32").model  # same tokenizer
    pairs = utility_pairs[:4]
    before = _kl_from(teacher, student.model, student, pairs)
    log = finetune(student, pairs, None, FinetuneConfig(steps=30, lr=3e-3, batch_size=4), teacher=teacher)
    assert log["loss_kind"] == "KL from the teacher"
    assert log["loss"][0] == pytest.approx(before, rel=1e-3)  # the first step's loss is that KL, as computed above
    assert _kl_from(teacher, student.model, student, pairs) < 0.5 * before

    teacher.resize_token_embeddings(teacher.get_input_embeddings().weight.shape[0] + 8)
    with pytest.raises(InterventionError, match="vocabulary"):
        finetune(student, pairs, None, FinetuneConfig(steps=1), teacher=teacher)
