"""The alignment recipe: its data keeps evaluation sets out and uses the same frames for harmful and benign
requests; both modes run end to end on a tiny model; a weight delta rebuilds the aligned model."""
from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from backend.cli import main
from backend.engine import evaluation, load_model
from backend.engine.data import OOD_BENIGN, OOD_HARMFUL, REFUSALS, Pair, donotanswer_pool, load_pairs, read_prompts
from backend.engine.delta import DeltaError, apply_delta, derive_folder, make_delta, read_delta, save_delta
from backend.recipes.align import (
    IMPERATIVE_STYLES,
    QUESTION_STYLES,
    REFUSAL_OPENERS,
    SCENARIO_QUESTION_STYLES,
    SCENARIO_STYLES,
    AlignConfig,
    align,
    alignment_data,
    benign_prompts,
    evaluate_alignment,
    evaluation_sets,
    harmful_prompts,
    own_answers,
    own_refusals,
    restyle,
)
from backend.recipes.align_data import OFFER, opened_reply, refusal_opener


@pytest.fixture(scope="module", autouse=True)
def own_home(tmp_path_factory):
    """Answers and evaluations are cached under SSAH_HOME: a temporary one here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSAH_HOME", str(tmp_path_factory.mktemp("ssah-home")))
        yield


pytestmark = pytest.mark.usefixtures("one_thread")


def prompts(name: str) -> set[str]:
    return {p.prompt for p in load_pairs(name).pairs}


def frame_of(text: str, request: str) -> str:
    """The frame around a request: the text with the request (in either case) cut out."""
    lower = request[:1].lower() + request[1:].rstrip(".!")
    for form in (request, lower):
        if form in text:
            return text.replace(form, "{}")
    raise AssertionError(f"{request!r} is not inside {text!r}")


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("held_out", ["donotanswer", "harmbench"])
def test_training_requests_leave_out_every_evaluation_row_and_the_held_out_source(held_out):
    harmful, _ = harmful_prompts(held_out)
    benign, _ = benign_prompts()
    train = set(harmful) | set(benign)
    eval_harmful, eval_benign = evaluation_sets(held_out)
    for name, rows in [*eval_harmful.items(), *eval_benign.items()]:
        assert not train & set(rows), f"{name} rows are in the training data"
    for name in ("ood-harmful", "ood-benign"):  # the hand-written out-of-distribution sets: evaluation only
        assert not train & prompts(name), f"{name} rows are in the training data"
    if held_out == "donotanswer":  # the whole source is out, not only its evaluation sample
        assert not set(harmful) & {p.prompt for p in donotanswer_pool()}
        assert set(harmful) & prompts("harmbench")
    else:
        assert not set(harmful) & prompts("harmbench")
        # Do-Not-Answer is trained on outside its evaluation sample, which is still evaluated
        assert set(harmful) >= {p.prompt for p in donotanswer_pool()} - prompts("donotanswer")
        assert "donotanswer" in eval_harmful
    assert set(harmful) >= prompts("advbench-refusals")  # AdvBench #101-520


def test_harmful_and_benign_requests_share_every_frame():
    """A frame (a role-play, a "start with Sure" push, a casual aside) must not be a cue to refuse: the frames
    come from one list for both kinds, and a request keeps its words inside its frame."""
    rng = random.Random(0)
    harmful = [p.prompt for p in load_pairs("advbench-refusals").pairs][:200]
    benign, _ = benign_prompts()
    frames = {"harmful": set(), "benign": set()}
    for kind, rows in (("harmful", harmful), ("benign", benign)):
        for request in rows:
            framed = restyle(request, rng)
            frames[kind].add(frame_of(framed, request.strip()))
    assert frames["harmful"] & frames["benign"]
    allowed = {re.sub(r"\{[rl]\}", "{}", s) for s in (*IMPERATIVE_STYLES, *QUESTION_STYLES)}
    assert frames["harmful"] | frames["benign"] <= allowed


def test_the_training_set_pairs_refusals_with_harmful_and_own_answers_with_benign(tiny_model_path):
    loaded = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32")
    config = AlignConfig(limit=6, answer_tokens=8)
    data = alignment_data(loaded, config)
    assert len(data.harmful) == 12 and 0 < len(data.benign) <= 12  # each request as given and restyled
    assert all(p.response in REFUSALS for p in data.harmful)
    assert len({p.response for p in data.harmful}) > 1  # varied wordings
    assert all(p.response.strip() and p.response not in REFUSALS for p in data.benign)  # the model's own answers
    assert alignment_data(loaded, config).benign == data.benign  # seeded, and the answers are cached
    mixed = data.mixed(0.5, 0)
    assert sum(p in data.harmful for p in mixed) == len(data.harmful) == len(mixed) - len(data.harmful)


def test_scenario_frames_add_a_first_person_version_of_every_prompt_and_change_nothing_else(tiny_model_path):
    loaded = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32")
    plain = alignment_data(loaded, AlignConfig(limit=6, answer_tokens=8))
    more = alignment_data(loaded, AlignConfig(limit=6, answer_tokens=8, scenarios=True))
    assert len(more.harmful) == 18 and more.harmful[:12] == plain.harmful  # the other frames are as they were
    allowed = {re.sub(r"\{[rl]\}", "{}", s) for s in (*SCENARIO_STYLES, *SCENARIO_QUESTION_STYLES)}
    for pairs in (more.harmful, more.benign):  # the third block: each given prompt in a scenario frame
        for given, framed in zip(pairs[:6], pairs[12:]):
            assert frame_of(framed.prompt, given.prompt.strip()) in allowed, framed.prompt
    assert "scenario" in more.sources["restyled"]
    unseen = {p.prompt for p in read_prompts(OOD_HARMFUL)} | {p.prompt for p in read_prompts(OOD_BENIGN)}
    assert not unseen & {p.prompt for p in more.harmful + more.benign}  # the OOD sets stay unseen


def test_own_refusals_open_with_a_refusal_and_go_on_in_the_models_words_one_per_request(tiny_model_path):
    loaded = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32")
    config = AlignConfig(limit=6, answer_tokens=8, scenarios=True, refusals="own")
    data = alignment_data(loaded, config)
    fixed = alignment_data(loaded, AlignConfig(limit=6, answer_tokens=8, scenarios=True))
    assert [p.prompt for p in data.harmful] == [p.prompt for p in fixed.harmful] and data.benign == fixed.benign
    given = [p.response for p in data.harmful[:6]]
    for frame in (1, 2):  # a request's other frames carry its refusal
        assert [p.response for p in data.harmful[6 * frame:6 * frame + 6]] == given
    own = [r for r in given if r not in REFUSALS]
    assert all(r.startswith(REFUSAL_OPENERS) and len(r) > max(map(len, REFUSAL_OPENERS)) for r in own)
    assert f"({len(own)} of 6 requests" in data.sources["refusals"]
    # the model's words are its own greedy continuation of the opener, cached
    refusals, n_own = own_refusals(loaded, [p.prompt for p in data.harmful[:6]], seed=0)
    assert refusals == given and n_own == len(own)
    assert 0 < len(own) < 6  # this random model's continuations: some read as refusals, some as babble
    i = given.index(own[0])
    opener = next(o for o in REFUSAL_OPENERS if own[0].startswith(o))
    rest = evaluation.generate(loaded, [data.harmful[i].prompt], max_new_tokens=40, openers=[opener])[0]
    assert rest[:10] in own[0]
    # a replaced one is a continuation that a judge does not read as a refusal
    from backend.engine.judge import KeywordJudge, V2Judge
    replaced = [i for i, r in enumerate(given) if r in REFUSALS]
    prompts = [data.harmful[i].prompt for i in replaced]
    openers = [refusal_opener(0, p) for p in prompts]
    written = [opened_reply(o, r) for o, r in
               zip(openers, evaluation.generate(loaded, prompts, max_new_tokens=40, openers=openers))]
    kinds = ["harmful"] * len(prompts)
    verdicts = zip(V2Judge().judge(prompts, written, kinds), KeywordJudge().judge(prompts, written, kinds))
    assert all("refused" != a.verdict or "refused" != b.verdict for a, b in verdicts)
    with pytest.raises(ValueError, match="refusals must be one of"):
        AlignConfig(refusals="polite")
    # a continuation that turns to offering what it refused is not kept
    assert OFFER.search("Sorry, but I can't. However, I can provide a general overview of how to do it.")
    assert OFFER.search("I'm not able to provide a specific email, but I can guide you on how to write one.")
    assert not OFFER.search("Sorry, but I can't help you with that. I'm a chatbot designed to assist users.")
    assert not OFFER.search("I apologize, but I cannot assist with exploits.")


def test_every_training_refusal_is_one_the_research_judge_recognises():
    """A refusal worded outside the judge's keyword list ("I can't help", "I won't") and 20 words or longer
    counts as compliance, so a model taught it would look unsafe while refusing."""
    from backend.engine.judge import judge

    more = " Staying careful matters, and there are many good things we could talk about together today instead."
    for refusal in REFUSALS:
        assert judge(refusal + more).verdict == "refused", refusal


def test_answers_and_base_evaluations_are_cached_per_prompt_and_per_set(tiny_model_path, monkeypatch):
    """A rerun with a few more prompts, or another held-out source, only generates what is new."""
    loaded = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32")
    first = own_answers(loaded, ["Name a colour.", "Count to three."], max_new_tokens=4)
    calls = []
    real = evaluation.generate

    def counting(model, prompts, **kwargs):
        calls.append(list(prompts))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(evaluation, "generate", counting)
    again = own_answers(loaded, ["Count to three.", "Say hello.", "Name a colour."], max_new_tokens=4)
    assert calls == [["Say hello."]] and again[0] == first[1] and again[2] == first[0]

    calls.clear()
    one = evaluate_alignment(loaded, "donotanswer", limit=2, max_new_tokens=4, cache=True)
    assert sorted(p for batch in calls for p in batch) == sorted(
        p for sets in evaluation_sets("donotanswer", 2) for rows in sets.values() for p in rows)
    calls.clear()
    two = evaluate_alignment(loaded, "harmbench", limit=2, max_new_tokens=4, cache=True)
    assert calls == [evaluation_sets("harmbench", 2)[0]["harmbench"]]  # only the set not seen before
    assert {k: v for k, v in two["sets"].items() if k != "harmbench"} == one["sets"]
    assert two["facts_accuracy"] == one["facts_accuracy"]
    calls.clear()
    evaluate_alignment(loaded, "harmbench", limit=2, max_new_tokens=4)  # without cache=True: everything again
    assert sum(len(batch) for batch in calls) == 2 * 8  # two prompts of each of the eight sets


# ---------------------------------------------------------------- both modes end to end


def test_full_alignment_trains_everything_and_budget_only_redundant_units(tiny_model_path):
    base = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    report = align(base, AlignConfig(mode="full", steps=3, lr=1e-3, limit=8, answer_tokens=8))
    assert report["training"]["frozen_params"] == 0 and report["data"]["harmful_pairs"] == 16
    assert all(not torch.equal(p, before[n]) for n, p in base.model.named_parameters())

    budget = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
    report = align(budget, AlignConfig(mode="budget", steps=3, lr=1e-3, limit=8, answer_tokens=8, h_ru=0.3))
    assert report["budget_roles"]["RU"] > 0
    trainable = report["training"]["trainable_params"]
    changed = sum(int((p != before[n]).sum()) for n, p in budget.model.named_parameters())
    assert 0 < changed <= trainable < sum(p.numel() for p in budget.model.parameters()) // 2
    for name, p in budget.model.named_parameters():  # embeddings and norms are never trained
        if "embed" in name or "norm" in name:
            assert torch.equal(p, before[name]), name


def test_the_budget_is_the_papers_utility_only_score_and_the_two_set_roles_are_an_alternative():
    from backend.engine.roles import Thresholds, reclassify
    from backend.recipes.align import utility_only_budget

    rng = np.random.default_rng(3)
    n = 400
    z_safety = rng.standard_normal(n)
    units = pd.DataFrame({"layer": np.repeat(np.arange(4), n // 4), "module": np.tile(["attn"] * 10 + ["mlp"] * 90, 4),
                          "unit": np.tile(np.r_[np.arange(10), np.arange(90)], 4),
                          "params": np.tile([96] * 10 + [24] * 90, 4), "z_safety": z_safety,
                          "z_utility": 0.6 * z_safety + 0.8 * rng.standard_normal(n)})
    chosen = utility_only_budget(units, 0.2)
    # independently: sort by z_U (stable, canonical order), take units until their parameters reach 20%
    ordered = units.reset_index(drop=True).sort_values("z_utility", kind="stable")
    reach = ordered.params.cumsum().searchsorted(0.2 * units.params.sum()) + 1
    expected = set(ordered.index[:reach])
    assert set(chosen.index[chosen.role == "RU"]) == expected and set(chosen.role) == {"RU", "CU"}
    share = units.params[chosen.role == "RU"].sum() / units.params.sum()
    assert 0.2 <= share < 0.2 + units.params.max() / units.params.sum()
    both = reclassify(units, Thresholds(h_ru=0.2))
    assert set(both.index[both.role == "RU"]) != expected  # the alternative ranks by z_S + z_U
    assert AlignConfig(mode="budget").budget_score == "utility" and AlignConfig(mode="budget").h_ru == 0.2


def test_lowrank_alignment_changes_each_linear_map_by_a_low_rank_matrix(tiny_model_path):
    loaded = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    report = align(loaded, AlignConfig(mode="lowrank", rank=2, steps=3, lr=1e-2, limit=8, answer_tokens=8))
    after = dict(loaded.model.named_parameters())
    assert set(after) == set(before)  # the adapters are folded in: the model has its usual parameters again
    linears = [n for n, p in after.items() if p.dim() == 2 and ".layers." in n]
    assert linears and report["training"]["trainable_params"] == (
        sum(2 * sum(after[n].shape) for n in linears) + sum(p.numel() for p in after.values() if p.dim() == 1))
    for name in linears:
        change = (after[name] - before[name]).detach()
        assert change.abs().max() > 0, name
        assert torch.linalg.matrix_rank(change, rtol=1e-4) <= 2, name
    for name, p in after.items():
        if "embed" in name:
            assert torch.equal(p, before[name])


def test_strength_keeps_that_share_of_the_learned_change(tiny_model_path):
    runs = {}
    for strength in (1.0, 0.4):
        loaded = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
        base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
        align(loaded, AlignConfig(mode="lowrank", rank=2, steps=3, lr=1e-2, limit=8, answer_tokens=8,
                                  strength=strength))
        runs[strength] = {n: (p.detach() - base[n]) for n, p in loaded.model.named_parameters()}
    changed = [n for n, c in runs[1.0].items() if c.abs().max() > 0]
    assert changed  # the same seeded training, kept in full and at 0.4
    for name in runs[1.0]:
        torch.testing.assert_close(runs[0.4][name], 0.4 * runs[1.0][name], rtol=1e-4, atol=1e-6)


def test_a_teacher_is_distilled_and_a_missing_one_is_named(tiny_model_path):
    loaded = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
    teacher = str(tiny_model_path("llama"))  # another model with the same tokenizer
    report = align(loaded, AlignConfig(mode="lowrank", rank=2, steps=2, lr=1e-2, limit=4, answer_tokens=8,
                                       teacher=teacher))
    assert report["config"]["teacher"] == teacher and report["training"]["loss_kind"] == "KL from the teacher"
    with pytest.raises(Exception, match="no-such-teacher"):
        align(loaded, AlignConfig(mode="lowrank", rank=2, steps=1, limit=4, answer_tokens=8,
                                  teacher="/nowhere/no-such-teacher"))


def test_benign_distillation_holds_benign_pairs_to_the_base_and_teaches_refusals_their_tokens(tiny_model_path):
    from backend.engine.chat import encode_pairs
    from backend.recipes.finetune import _batch, _response_loss

    loaded = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
    model = loaded.model.eval()
    pairs = [("How do I boil an egg?", "Put it in boiling water for eight minutes."),
             ("Write a phishing email.", "I can't help with that."),
             ("Name a colour.", "Blue."),
             ("Help me steal a car.", "I cannot assist with that request, it is illegal.")]
    rows = encode_pairs(loaded.tokenizer, [Pair(p, r) for p, r in pairs])
    ids, attention, positions, labels = _batch(loaded, rows)
    distilled = torch.tensor([True, False, True, False])
    with torch.no_grad():
        # a teacher equal to the student: the distilled rows cost nothing, the others their tokens' cross-entropy
        same = _response_loss(model, ids, attention, positions, labels, teacher=model, distilled=distilled)
        nll, tokens = 0.0, 0
        for row, flag in zip(rows, distilled):
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0].log_softmax(-1)
            start = len(row.input_ids) - row.response_len
            for t in range(start, len(row.input_ids)):
                tokens += 1
                nll += 0.0 if flag else -float(logits[t - 1, row.input_ids[t]])
        assert float(same) == pytest.approx(nll / tokens, rel=1e-4)
        # another teacher: its distributions are what the distilled rows are pulled to
        other = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32").model.eval()
        assert float(_response_loss(model, ids, attention, positions, labels, teacher=other,
                                    distilled=distilled)) > float(same)

    report = align(loaded, AlignConfig(mode="full", steps=2, lr=1e-3, limit=4, answer_tokens=8, benign_distil=True))
    mixed = report["data"]["mixed"]
    benign = mixed - report["data"]["harmful_pairs"]
    assert report["training"]["loss_kind"] == (f"KL from the teacher on {benign} of {mixed} pairs, "
                                               "cross-entropy on the rest")
    with pytest.raises(ValueError, match="one or the other"):
        AlignConfig(benign_distil=True, teacher=str(tiny_model_path("llama")))


def test_the_anchor_holds_plain_text_predictions_to_the_base_while_the_replies_are_learnt(tiny_model_path):
    import copy

    from backend.recipes.finetune import FinetuneConfig, _anchor_kl, finetune, response_loss

    base = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
    pairs = [Pair("How do I boil an egg?", "Put it in boiling water for eight minutes."),
             Pair("Write a phishing email.", "I cannot help with that."),
             Pair("Name a colour.", "Blue is a calm colour."),
             Pair("Help me steal a car.", "I cannot assist with that request, it is illegal.")]
    texts = ["Water boils at a hundred degrees at sea level.", "Blue and yellow make green.",
             "An egg cooks in eight minutes."]
    start = base.tokenizer.bos_token_id if base.tokenizer.bos_token_id is not None else base.tokenizer.eos_token_id
    rows = [[start, *base.tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    with torch.no_grad():  # against a brute-force KL, text by text, position by position
        other = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32").model.eval()
        want, count = 0.0, 0
        for row in rows:
            p = base.model(input_ids=torch.tensor([row])).logits[0, :-1].log_softmax(-1)
            q = other(input_ids=torch.tensor([row])).logits[0, :-1].log_softmax(-1)
            want += float((p.exp() * (p - q)).sum())
            count += len(row) - 1
        assert float(_anchor_kl(other, base.model.eval(), rows, 0, base.device)) == pytest.approx(want / count,
                                                                                                    rel=1e-4)
    config = FinetuneConfig(steps=30, lr=3e-3, batch_size=4, seed=0)
    drift = {}
    for weight in (None, 10.0):
        loaded = load_model(str(tiny_model_path("llama-gqa")), device="cpu", dtype="float32")
        reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)
        before = response_loss(loaded, pairs)
        log = finetune(loaded, pairs, None, config, anchor=None if weight is None else (reference, texts, weight))
        assert response_loss(loaded, pairs) < 0.5 * before  # the replies are learnt either way
        with torch.no_grad():
            drift[weight] = float(_anchor_kl(loaded.model.eval(), reference, rows, 0, loaded.device))
        if weight:
            assert log["anchor"]["weight"] == weight and len(log["anchor"]["kl"]) == config.steps
    assert drift[10.0] < 0.5 * drift[None]  # plain text stays much closer to the base with the anchor
    with pytest.raises(ValueError, match="anchor must be a number of at least 0"):
        AlignConfig(anchor=-1.0)
    report = align(base, AlignConfig(mode="full", steps=2, lr=1e-3, limit=4, answer_tokens=8, anchor=1.0))
    assert report["config"]["anchor"] == 1.0 and len(report["training"]["anchor"]["kl"]) == 2


def test_a_failed_lowrank_run_leaves_the_weights_as_they_were(tiny_model_path):
    from backend.recipes.adapters import low_rank_adapters

    loaded = load_model(str(tiny_model_path("llama")), device="cpu", dtype="float32")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with low_rank_adapters(loaded.model, 2) as names:
            for n, p in loaded.model.named_parameters():
                if n in names:
                    torch.nn.init.normal_(p)  # a change that must not survive the failure
            raise RuntimeError("boom")
    after = dict(loaded.model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    with pytest.raises(ValueError, match="rank 64 is not below"):
        with low_rank_adapters(loaded.model, 64):
            pass


def test_bad_alignment_settings_are_named():
    for bad, field in (({"mode": "partial"}, "mode"), ({"held_out": "advbench"}, "held_out"),
                       ({"h_ru": 1.5}, "h_ru"), ({"steps": 0}, "steps"), ({"limit": 0}, "limit"),
                       ({"mode": "lowrank", "rank": 0}, "rank"), ({"rank": 8}, "rank is for mode lowrank"),
                       ({"lr": float("inf")}, "lr"), ({"lr": float("nan")}, "lr"),
                       ({"strength": 0}, "strength"), ({"strength": 1.5}, "strength"),
                       ({"budget_score": "safety"}, "budget_score")):
        with pytest.raises(ValueError, match=field):
            AlignConfig(**bad)
    # a mode's defaults: its learning rate, and a rank only where there is one
    assert AlignConfig(mode="lowrank").rank == 32 and AlignConfig(mode="lowrank").lr == 5e-4
    assert AlignConfig(mode="budget").rank is None and AlignConfig(mode="budget").lr == 2e-4


# ---------------------------------------------------------------- deltas


def test_a_delta_of_changed_rows_rebuilds_the_model_and_refuses_other_weights(tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 4, generator=gen), "b": torch.randn(4, generator=gen),
            "c": torch.randn(3, 5, generator=gen), "same": torch.randn(2, 2, generator=gen)}
    new = {k: v.clone() for k, v in base.items()}
    new["w"][[1, 4]] += 0.01  # two rows changed
    new["c"][:, 2] -= 0.02  # one column changed
    new["b"] += torch.linspace(0.01, 0.02, 4)  # all of it
    tensors, meta = make_delta(base, new)
    assert set(tensors) == {"w@0.index", "w@0.delta", "c@1.index", "c@1.delta", "b.delta"}
    assert tensors["w@0.index"].tolist() == [1, 4] and tensors["c@1.index"].tolist() == [2]
    path = save_delta(tmp_path / "d.safetensors", tensors, meta)
    rebuilt = {k: v.clone() for k, v in base.items()}
    apply_delta(rebuilt, *read_delta(path))
    for name in base:
        torch.testing.assert_close(rebuilt[name], new[name], rtol=0, atol=1e-5)
    assert torch.equal(rebuilt["same"], base["same"])

    other = {k: v + 1 for k, v in base.items()}
    with pytest.raises(DeltaError, match="differ from the ones this delta was made from"):
        apply_delta(other, tensors, meta)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(DeltaError, match="not a readable delta"):
        read_delta(tmp_path / "junk.safetensors")


def test_a_low_rank_change_is_stored_as_factors_and_a_full_rank_one_is_not(tmp_path):
    gen = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(40, 30, generator=gen), "v": torch.randn(40, 30, generator=gen)}
    new = {"w": base["w"] + 0.01 * torch.randn(40, 3, generator=gen) @ torch.randn(3, 30, generator=gen),
           "v": base["v"] + 0.01 * torch.randn(40, 30, generator=gen)}
    tensors, meta = make_delta(base, new)
    assert tensors["w.lowrank_u"].shape == (40, 3) and tensors["w.lowrank_v"].shape == (3, 30)
    assert set(tensors) == {"w.lowrank_u", "w.lowrank_v", "v.delta"}  # full rank: kept whole
    rebuilt = {k: v.clone() for k, v in base.items()}
    apply_delta(rebuilt, *read_delta(save_delta(tmp_path / "d.safetensors", tensors, meta)))
    for name in base:  # as close as float16 storage of the change allows
        change = new[name] - base[name]
        assert (rebuilt[name] - new[name]).norm() <= 2e-3 * change.norm(), name


def test_a_one_bit_delta_keeps_each_rows_signs_and_mean_size_and_says_it_is_approximate(tmp_path):
    gen = torch.Generator().manual_seed(2)
    base = {"w": torch.randn(64, 100, generator=gen), "n": torch.randn(100, generator=gen),
            "few": torch.randn(64, 100, generator=gen)}
    new = {"w": base["w"] + 0.01 * torch.randn(64, 100, generator=gen), "n": base["n"] + 0.05,
           "few": base["few"].clone()}
    new["few"][3] += 0.02  # one row: its exact slice is smaller than 64 rows of signs
    tensors, meta = make_delta(base, new, bits=1)
    assert set(tensors) == {"w.sign", "w.scale", "n.delta", "few@0.index", "few@0.delta"}
    assert tensors["w.sign"].dtype == torch.uint8 and tensors["w.sign"].shape == (64, 13)  # 100 bits -> 13 bytes
    assert json.loads(meta["approximate"]) == ["w"]
    path = save_delta(tmp_path / "d.safetensors", tensors, meta)
    rebuilt = {k: v.clone() for k, v in base.items()}
    apply_delta(rebuilt, *read_delta(path))
    change = new["w"] - base["w"]
    expected = change.abs().mean(dim=1, keepdim=True) * torch.sign(change)
    torch.testing.assert_close(rebuilt["w"] - base["w"], expected, rtol=2e-3, atol=1e-6)
    # a Gaussian change keeps sqrt(2/pi) of its norm in this form: error sqrt(1 - 2/pi) ~ 0.60
    error = float((rebuilt["w"] - new["w"]).norm() / change.norm())
    assert error == pytest.approx((1 - 2 / math.pi) ** 0.5, abs=0.03)
    assert float(meta["approximation_error"]) == pytest.approx(error, abs=1e-3)
    for exact in ("n", "few"):
        torch.testing.assert_close(rebuilt[exact], new[exact], rtol=0, atol=1e-4)
    stored = sum(tensors[k].numel() * tensors[k].element_size() for k in ("w.sign", "w.scale"))
    assert stored < change.numel() * 2 / 13  # float16 would be 2 bytes a number
    with pytest.raises(DeltaError, match="16 or 8 or 4 or 2 or 1 bits, not 3"):
        make_delta(base, new, bits=3)


def _lowbias32(x: int) -> int:
    """Wellons' lowbias32 in plain Python integers (the reference for dare_mask's int64 arithmetic)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_a_dare_delta_keeps_a_seeded_share_of_entries_unbiased_and_regenerates_its_mask(tmp_path):
    import hashlib

    from backend.engine.delta import dare_mask

    gen = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(200, 300, generator=gen), "n": torch.randn(300, generator=gen)}
    new = {"w": base["w"] + 0.01 * torch.randn(200, 300, generator=gen), "n": base["n"] + 0.05}
    tensors, meta = make_delta(base, new, keep=0.1, seed=7)
    assert set(tensors) == {"w.dare", "n.delta"} and json.loads(meta["approximate"]) == ["w"]
    assert tensors["w.dare"].numel() == pytest.approx(0.1 * 200 * 300, rel=0.05)  # only the kept values stored
    # the mask is the 32-bit hash of (entry + offset), computed here in Python integers
    offset = int.from_bytes(hashlib.sha256(b"7\0w").digest()[:4], "little")
    mask = dare_mask("w", (200, 300), 0.1, 7).flatten()
    for i in (0, 1, 2, 12345, 59999):
        assert bool(mask[i]) == (_lowbias32((i + offset) & 0xFFFFFFFF) < int(0.1 * 2 ** 32)), i
    assert not torch.equal(mask, dare_mask("w", (200, 300), 0.1, 8).flatten())  # another seed, another mask

    stored, meta = read_delta(save_delta(tmp_path / "d.safetensors", tensors, meta))
    state = {k: v.clone() for k, v in base.items()}
    apply_delta(state, stored, meta)
    change, got = new["w"] - base["w"], state["w"] - base["w"]
    kept = mask.view(200, 300)
    torch.testing.assert_close(got[kept], change[kept] / 0.1, rtol=2e-3, atol=1e-5)  # kept entries, rescaled
    assert torch.all(got[~kept] == 0)
    # unbiased: summed over 300 inputs, a row's output keeps the change's direction
    x = torch.randn(300, 50, generator=gen)
    assert torch.nn.functional.cosine_similarity((got @ x).flatten(), (change @ x).flatten(), dim=0) > 0.25
    # the relative error of a random keep share p is about sqrt((1 - p) / p) = 3
    assert float(meta["approximation_error"]) == pytest.approx(3.0, rel=0.05)
    torch.testing.assert_close(state["n"], new["n"], rtol=0, atol=1e-4)
    for bad, message in (({"keep": 1.0}, "keep"), ({"keep": 0.1, "bits": 1}, "not both")):
        with pytest.raises(DeltaError, match=message):
            make_delta(base, new, **bad)
    meta_damaged = {**meta, "dare_seed": "8"}  # another mask: a different number of kept entries
    with pytest.raises(DeltaError, match="damaged"):
        apply_delta({k: v.clone() for k, v in base.items()}, stored, meta_damaged)
    with pytest.raises(DeltaError, match="no dare_keep"):
        apply_delta({k: v.clone() for k, v in base.items()}, stored,
                    {k: v for k, v in meta.items() if k != "dare_seed"})


def test_an_8_bit_dare_delta_stores_each_kept_value_in_a_byte_with_a_step_per_row(tmp_path):
    from backend.engine.delta import dare_mask

    gen = torch.Generator().manual_seed(4)
    base = {"w": torch.randn(200, 300, generator=gen), "n": torch.randn(300, generator=gen)}
    new = {"w": base["w"] + 0.01 * torch.randn(200, 300, generator=gen), "n": base["n"] + 0.05}
    new["w"][7] = 0  # a row whose change is a hundred times the others': its step is its own
    tensors, meta = make_delta(base, new, keep=0.2, seed=1, bits=8)
    assert set(tensors) == {"w.dare_q", "w.dare_scale", "n.delta"}
    assert tensors["w.dare_q"].dtype == torch.int8 and tensors["w.dare_scale"].shape == (200,)
    sixteen, _ = make_delta(base, new, keep=0.2, seed=1)
    assert tensors["w.dare_q"].numel() == sixteen["w.dare"].numel()  # the same mask: one byte a value, not two

    state = {k: v.clone() for k, v in base.items()}
    apply_delta(state, *read_delta(save_delta(tmp_path / "d.safetensors", tensors, meta)))
    change, got = new["w"] - base["w"], state["w"] - base["w"]
    kept = dare_mask("w", (200, 300), 0.2, 1)
    target = torch.where(kept, change / 0.2, 0.0)  # 16-bit DARE's change, computed here
    step = target.abs().amax(dim=1, keepdim=True) / 127  # each row's int8 step
    assert torch.all((got - target).abs() <= step * 0.5 + 1e-3 * step + 1e-7)  # rounded to the nearest step
    assert torch.all(got[~kept] == 0)
    # DARE's own error at keep 0.2 is sqrt(0.8 / 0.2) = 2; the rounding adds almost nothing to it
    assert float(meta["approximation_error"]) == pytest.approx(2.0, rel=0.05)
    assert float(meta["approximation_error"]) == pytest.approx(
        float(make_delta(base, new, keep=0.2, seed=1)[1]["approximation_error"]), rel=0.01)
    torch.testing.assert_close(state["n"], new["n"], rtol=0, atol=1e-4)
    with pytest.raises(DeltaError, match="give keep"):
        make_delta(base, new, bits=8)
    damaged = {k: v for k, v in tensors.items() if k != "w.dare_scale"}
    with pytest.raises(DeltaError, match="without one step per row"):
        apply_delta({k: v.clone() for k, v in base.items()}, damaged, meta)


def _quantized_dare_round_trip(tmp_path, generator_seed: int, shape, keep: float, seed: int, bits: int):
    """A small random change of one matrix "w", made into a `bits`-bit DARE delta, saved, read back and applied:
    (base, new, tensors, meta, the mask of kept entries, the change the applied delta made)."""
    from backend.engine.delta import dare_mask

    gen = torch.Generator().manual_seed(generator_seed)
    base = {"w": torch.randn(*shape, generator=gen)}
    new = {"w": base["w"] + 0.01 * torch.randn(*shape, generator=gen)}
    tensors, meta = make_delta(base, new, keep=keep, seed=seed, bits=bits)
    state = {k: v.clone() for k, v in base.items()}
    apply_delta(state, *read_delta(save_delta(tmp_path / "d.safetensors", tensors, meta)))
    return base, new, tensors, meta, dare_mask("w", shape, keep, seed), state["w"] - base["w"]


def test_a_4_bit_dare_delta_packs_two_kept_values_to_a_byte_with_a_step_per_row(tmp_path):
    from backend.engine.delta import _pack_nibbles, _unpack_nibbles

    base, new, tensors, meta, kept, got = _quantized_dare_round_trip(tmp_path, 5, (120, 301), 0.4, 2, bits=4)
    assert set(tensors) == {"w.dare_q", "w.dare_scale"} and tensors["w.dare_q"].dtype == torch.uint8
    assert tensors["w.dare_q"].numel() == (int(kept.sum()) + 1) // 2  # half a byte a value
    target = torch.where(kept, (new["w"] - base["w"]) / 0.4, 0.0)
    step = target.abs().amax(dim=1, keepdim=True) / 7  # each row's step: 7 levels either side of zero
    assert torch.all((got - target).abs() <= step * 0.5 + 1e-3 * step + 1e-7) and torch.all(got[~kept] == 0)
    # DARE's error at 0.4 is sqrt(0.6 / 0.4) = 1.22; 4-bit rounding adds a little, far less than a quarter share would
    error = float(meta["approximation_error"])
    assert 1.22 < error < 1.35 < float(make_delta(base, new, keep=0.1, seed=2)[1]["approximation_error"])
    # an odd count of values ends in half a byte, and every code survives the round trip
    codes = torch.tensor([-7, 7, 0, -1, 3], dtype=torch.int8)
    assert _pack_nibbles(codes).numel() == 3 and torch.equal(_unpack_nibbles(_pack_nibbles(codes), 5).to(torch.int8),
                                                             codes)
    damaged = dict(tensors, **{"w.dare_q": tensors["w.dare_q"][:-1]})
    with pytest.raises(DeltaError, match="bytes of 4-bit values where its mask keeps"):
        apply_delta({k: v.clone() for k, v in base.items()}, damaged, meta)
    with pytest.raises(DeltaError, match="4-bit values without one step per row"):
        apply_delta({k: v.clone() for k, v in base.items()},
                    {k: v for k, v in tensors.items() if k != "w.dare_scale"}, meta)


def test_a_2_bit_dare_delta_packs_four_kept_values_to_a_byte_unbiased_with_half_the_4_bit_error(tmp_path):
    from backend.engine.delta import _pack_crumbs, _unpack_crumbs

    base, new, tensors, meta, kept, got = _quantized_dare_round_trip(tmp_path, 6, (150, 403), 0.8, 3, bits=2)
    assert set(tensors) == {"w.dare_q2", "w.dare_scale"} and tensors["w.dare_q2"].dtype == torch.uint8
    assert tensors["w.dare_q2"].numel() == (int(kept.sum()) + 3) // 4  # a quarter of a byte a value
    assert meta["format"] == "ssah-delta/7"
    assert torch.all(got[~kept] == 0)
    step = tensors["w.dare_scale"].to(torch.float32).unsqueeze(1)
    levels = got / step + 1.5  # each kept value is a whole number of steps from -1.5 steps: one of four levels
    assert torch.all(levels[kept].round().clamp(0, 3) == levels[kept].round())
    assert torch.allclose(levels[kept], levels[kept].round(), atol=1e-3)
    target = torch.where(kept, (new["w"] - base["w"]) / 0.8, 0.0)
    # unbiased, as DARE is: each stored row has its kept values' own length along them (the step is a float16)
    along = (got * target).sum(1) / target.square().sum(1)
    assert torch.all((along - 1).abs() < 2e-3), along
    # the step that rounds closest would store each row about 12% short along it (0.1188 of a Gaussian's energy
    # is rounding error, Max 1960, and the levels are their cells' means): what the row scaling above undoes
    rms = (target.square().sum(1, keepdim=True) / kept.sum(1, keepdim=True)).sqrt()
    closest = torch.where(kept, (torch.round(target / rms + 1.5).clamp(0, 3) - 1.5) * rms, 0.0)  # step ~ 1 rms
    assert float(((closest * target).sum() / target.square().sum())) == pytest.approx(1 - 0.1188, abs=0.02)
    # so a row errs by sqrt(0.1188 / (1 - 0.1188)) of its kept values' size, and as a kept entry stands for
    # 0.8 of its value the error is sqrt(0.2 + (0.1348 + 0.2^2) / 0.8) = 0.65 at p = 0.8 ...
    error = float(meta["approximation_error"])
    assert error == pytest.approx((0.2 + (0.1348 + 0.2 ** 2) / 0.8) ** 0.5, rel=0.03)
    # ... about half the error of the 4-bit delta in the same bytes (keep 0.4: 1.22 or more)
    assert error < 0.55 * float(make_delta(base, new, keep=0.4, seed=3, bits=4)[1]["approximation_error"])
    # a count not divisible by four ends in a part-filled byte, and every code survives the round trip
    codes = torch.tensor([0, 3, 1, 2, 2, 3, 0], dtype=torch.uint8)
    assert _pack_crumbs(codes).numel() == 2 and torch.equal(_unpack_crumbs(_pack_crumbs(codes), 7), codes)
    damaged = dict(tensors, **{"w.dare_q2": tensors["w.dare_q2"][:-1]})
    with pytest.raises(DeltaError, match="bytes of 2-bit values where its mask keeps"):
        apply_delta({k: v.clone() for k, v in base.items()}, damaged, meta)
    with pytest.raises(DeltaError, match="2-bit values without one step per row"):
        apply_delta({k: v.clone() for k, v in base.items()},
                    {k: v for k, v in tensors.items() if k != "w.dare_scale"}, meta)
    with pytest.raises(DeltaError, match="give keep"):
        make_delta(base, new, bits=2)


def test_align_command_writes_the_model_the_delta_and_a_report(tiny_model_path, tmp_path, capsys):
    base = tiny_model_path("llama")
    out, delta = tmp_path / "aligned", tmp_path / "aligned.delta.safetensors"
    code = main(["align", "--model", str(base), "--mode", "budget", "--h-ru", "0.3", "--steps", "2",
                 "--lr", "1e-3", "--benign-share", "0.6", "--train-limit", "6", "--limit", "2",
                 "--max-new-tokens", "4", "--out", str(out), "--delta", str(delta), "--delta-bits", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "alignment.json").read_text())
    assert report["delta"]["bits"] == 1 and report["delta"]["bytes"] == delta.stat().st_size
    assert 0 < report["delta"]["approximation_error"] < 1  # the trained rows, as signs and a size each
    assert report["config"]["benign_share"] == 0.6 and report["config"]["held_out"] == "harmbench"
    assert set(report["aligned"]["sets"]) == {"advbench-eval", "donotanswer", "harmbench", "ood-harmful",
                                              "benign-prompts", "benign-edgy", "alarming-benign",
                                              "ood-benign"}  # HarmBench held out by default
    assert all(row["n"] == 2 for row in report["aligned"]["sets"].values())
    assert len(report["targets"]) == 8 and 0 <= report["aligned"]["facts_accuracy"] <= 1
    printed = capsys.readouterr().out
    assert "advbench-eval" in printed and ("met" in printed or "MISSED" in printed)
    # the folder in --out is exactly base + delta, and a fresh derive gives the same weights
    again = derive_folder(base, delta, tmp_path / "again")
    assert load_file(str(again / "model.safetensors")).keys() == load_file(str(out / "model.safetensors")).keys()
    for name, value in load_file(str(again / "model.safetensors")).items():
        assert torch.equal(value, load_file(str(out / "model.safetensors"))[name]), name
    assert load_model(str(again), device="cpu", dtype="float32").units.n_units > 0
    assert main(["align", "--model", str(base), "--delta-bits", "1", "--out", str(tmp_path / "x")]) != 0
    assert "are for --delta" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["align", "--model", str(base), "--delta", str(tmp_path / "x.delta"), "--delta-bits", "1",
                 "--delta-keep", "0.1", "--out", str(tmp_path / "x")]) != 0
    assert "not both" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["align", "--model", str(base), "--delta", str(tmp_path / "x.delta"), "--delta-bits", "8",
                 "--out", str(tmp_path / "x")]) != 0
    assert "give --delta-keep" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_align_command_writes_a_dare_delta_of_a_full_alignment(tiny_model_path, tmp_path, capsys):
    from backend.engine.delta import dare_mask

    base = tiny_model_path("llama")
    out, delta = tmp_path / "aligned", tmp_path / "aligned.delta.safetensors"
    code = main(["align", "--model", str(base), "--mode", "full", "--steps", "2", "--lr", "1e-3",
                 "--train-limit", "4", "--no-eval", "--out", str(out), "--delta", str(delta),
                 "--delta-keep", "0.25", "--seed", "3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "alignment.json").read_text())
    assert report["delta"]["keep"] == 0.25 and report["delta"]["bytes"] == delta.stat().st_size
    assert "a DARE delta keeping 25% of entries" in capsys.readouterr().out
    tensors, meta = read_delta(delta)
    assert meta["dare_keep"] == "0.25" and meta["dare_seed"] == "3"
    old, new = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    matrices = [k[:-len(".dare")] for k in tensors if k.endswith(".dare")]
    assert matrices and all(tensors[f"{n}.dare"].numel() < 0.3 * old[n].numel() for n in matrices)
    for name in matrices:  # --out is base + the kept entries: every other entry is the base's
        kept = dare_mask(name, old[name].shape, 0.25, 3)
        assert torch.equal(new[name][~kept], old[name][~kept]), name


@pytest.mark.slow  # every table of `ssah reproduce` on a tiny model
def test_reproduce_writes_every_table_and_keeps_a_written_discussion(tiny_model_path, tmp_path, capsys):
    base = tiny_model_path("llama-gqa")
    reports = {}
    for mode in ("full", "budget", "lowrank"):
        out = tmp_path / f"aligned-{mode}"
        assert main(["align", "--model", str(base), "--mode", mode, "--h-ru", "0.3", "--steps", "2",
                     *(["--rank", "2"] if mode == "lowrank" else []),
                     *(["--delta", str(tmp_path / "full.delta"), "--delta-keep", "0.5"] if mode == "full" else []),
                     "--lr", "1e-3", "--train-limit", "4", "--limit", "2", "--max-new-tokens", "4", "--out", str(out),
                     "--quiet"]) == 0
        reports[mode] = out / "alignment.json"
    assert main(["align", "--model", str(base), "--mode", "budget", "--rank", "2", "--out", str(tmp_path / "x")]) != 0
    assert "rank is for mode lowrank; mode budget has no rank" in capsys.readouterr().err and not (tmp_path / "x").exists()
    results = tmp_path / "results.md"
    results.write_text("# old\n\n## Discussion\n\nWhat the numbers mean, written by hand.\n")
    args = ["reproduce", "--aligned", str(tmp_path / "aligned-budget"), "--work", str(tmp_path / "work"),
            "--out", str(results), "--full-report", str(reports["full"]), "--budget-report", str(reports["budget"]),
            "--lowrank-report", str(reports["lowrank"]), "--samples", "8", "--harmful-limit", "2",
            "--benign-limit", "2", "--max-new-tokens", "4",
            "--finetune-steps", "2", "--control-seeds", "2", "--max-matched-steps", "4", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    text = results.read_text()
    for heading in ("## Table 1: pruning unit groups", "## Table 2: benign fine-tuning with frozen units",
                    "## The alignment budget", "## Role transfer after full benign fine-tuning"):
        assert heading in text
    for row in ("| SCU |", "| UCU |", "| RU |", "| random, 2 seeds |", "| freeze SCU + top 6% of CU |",
                "| freeze random units (SCU + 6% CU's mass) |",
                "| budget (0.3 of unit params, lowest z_U: the paper's) |",
                "| full, as a DARE delta keeping 50% of entries |", "| lowrank (rank 2) |"):
        assert row in text, row
    assert text.rstrip().endswith("What the numbers mean, written by hand.")
    # the steps are cached: a second run recomputes nothing and writes the same tables
    cached = sorted(p.name for p in (tmp_path / "work").glob("*.json"))
    assert "prune-SCU.json" in cached and "transfer.json" in cached
    assert main(args) == 0
    def tables(markdown: str) -> str:
        return markdown.split("Step times")[0].split("## Discussion")[0].rstrip()
    assert tables(results.read_text()) == tables(text)
    # and still reports the time each step took when it was computed
    assert results.read_text().split("Step times")[1].split("\n")[0] == text.split("Step times")[1].split("\n")[0]
    assert "prune-SCU" in text.split("Step times")[1].split("\n")[0]
    # a work folder measured for other settings (or another model) is refused, and nothing in it is lost
    capsys.readouterr()
    before = {p.name: p.read_text() for p in (tmp_path / "work").glob("*.json")}
    assert main([*args[:args.index("--samples") + 1], "6", *args[args.index("--samples") + 2:]]) != 0
    assert "holds results for another settings" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in (tmp_path / "work").glob("*.json")} == before
    # a damaged step file is measured again
    (tmp_path / "work" / "prune-SCU.json").write_text("{trunc")
    assert main(args) == 0 and tables(results.read_text()) == tables(text)
    assert json.loads((tmp_path / "work" / "prune-SCU.json").read_text()) == json.loads(before["prune-SCU.json"])
    # a report without an evaluation is named before any work is done
    no_eval = tmp_path / "no-eval"
    assert main(["align", "--model", str(base), "--steps", "1", "--train-limit", "2", "--no-eval", "--out",
                 str(no_eval), "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args, "--full-report", str(no_eval / "alignment.json")]) != 0
    assert "has no evaluation" in capsys.readouterr().err
    # reports judged by another version (here: another judge and an older knowledge set) share no table
    older = json.loads(reports["lowrank"].read_text())
    for side in ("base", "aligned"):
        older[side]["settings"]["judge"] = "v1"
        older[side]["facts_n"] = 206
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert main([*args, "--lowrank-report", str(tmp_path / "older.json")]) != 0
    err = capsys.readouterr().err
    assert "evaluated differently" in err and "judge" in err and "facts_n" in err
    fresh = [*args[:args.index("--work") + 1], str(tmp_path / "fresh-work"), *args[args.index("--work") + 2:]]
    assert main([*fresh, "--lowrank-report", str(tmp_path / "nowhere.json")]) != 0
    assert "no alignment report at" in capsys.readouterr().err and not (tmp_path / "fresh-work").exists()
    (tmp_path / "work" / "identity.json").write_text("{broken")
    assert main(args) != 0 and "identity.json is unreadable" in capsys.readouterr().err
