"""`ssah evaluate`, `ssah finetune` and `ssah compare` on tiny models: outputs a user reads, and clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from backend.cli import main
from backend.engine import load_model


@pytest.fixture(scope="module")
def runs(tiny_model_path, tmp_path_factory, safety_pairs, utility_pairs):
    """Run folders of the tiny llama and gpt2 made with `ssah attribute`."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for arch in ("llama", "gpt2"):
        data = root / f"{arch}-data"
        data.mkdir()
        for name, pairs in (("safety", safety_pairs), ("utility", utility_pairs)):
            (data / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p.prompt, "response": p.response}) + "\n"
                                                        for p in pairs))
        assert main(["attribute", "--model", str(tiny_model_path(arch)), "--safety", str(data / "safety.jsonl"),
                     "--utility", str(data / "utility.jsonl"), "--out", str(root / arch), "--quiet",
                     "--device", "cpu"]) == 0
        out[arch] = root / arch
    return out


def evaluate(model, *extra):
    return main(["evaluate", "--model", str(model), "--limit", "3", "--max-new-tokens", "6", "--quiet",
                 "--device", "cpu", *map(str, extra)])


def test_evaluate_prints_baseline_and_pruned_side_by_side(tiny_model_path, runs, capsys):
    assert evaluate(tiny_model_path("llama"), "--run", runs["llama"], "--prune", "SCU,UCU", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["selection"]["label"] == "SCU,UCU"
    assert result["selection"]["references"] == {"safety": result["selection"]["by_role"]["UCU"],
                                                 "utility": result["selection"]["by_role"]["SCU"]}
    assert len(result["generations"]) == 6  # 3 harmful + 3 benign prompts
    for g in result["generations"]:
        assert {"baseline", "pruned"} <= set(g)
        assert g["baseline"]["verdict"] in ("refused", "complied", "off-topic", "degenerate")
    assert 0 <= result["pruned"]["asr"] <= 1

    assert evaluate(tiny_model_path("llama"), "--run", runs["llama"], "--prune", "random", "--seed", "3") == 0
    text = capsys.readouterr().out
    assert "random (seed 3)" in text and "ASR (complied, harmful)" in text and "baseline" in text


def test_evaluate_without_a_run_reports_the_baseline(tiny_model_path, capsys):
    assert evaluate(tiny_model_path("llama"), "--harmful", "harmbench", "--benign", "benign-edgy", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert "pruned" not in result and set(result["baseline"]["per_set"]) == {"harmbench", "benign-edgy"}


@pytest.mark.parametrize("extra, message", [
    (["--prune", "SCX"], "unknown unit group 'SCX'"),
    (["--prune", "CU:1.5"], "must be in [0, 1]"),
    (["--prune", "SCU", "--run", "OTHER"], "the run was made on another model"),
    (["--prune", "SCU"], "--prune and --cu-fraction need --run"),
    (["--harmful", "no-such-set"], "no-such-set"),
])
def test_evaluate_bad_input(extra, message, tiny_model_path, runs, capsys):
    extra = [str(runs["gpt2"]) if e == "OTHER" else e for e in extra]
    if "--run" not in extra and extra[0] == "--prune" and "need" not in message:
        extra += ["--run", str(runs["llama"])]
    assert evaluate(tiny_model_path("llama"), *extra) == 2
    assert message in capsys.readouterr().err


def test_finetune_with_frozen_units_keeps_them_and_reports_before_after(tiny_model_path, runs, tmp_path, capsys):
    out = tmp_path / "tuned"
    code = main(["finetune", "--model", str(tiny_model_path("llama")), "--run", str(runs["llama"]),
                 "--freeze", "SCU,CU:0.06", "--data", "benign-answers", "--samples", "16", "--steps", "3",
                 "--batch-size", "4", "--lr", "1e-3", "--limit", "2", "--max-new-tokens", "4", "--out", str(out),
                 "--quiet", "--device", "cpu"])
    assert code == 0
    assert "ASR" in capsys.readouterr().out
    report = json.loads((out / "finetune.json").read_text())
    assert report["mode"] == "freeze SCU,CU:0.06" and len(report["training"]["loss"]) == 3
    assert {"asr", "over_refusal"} <= set(report["before"]) and {"asr", "over_refusal"} <= set(report["after"])
    # the SCU down_proj columns did not move, the others did
    before = load_file(str(tiny_model_path("llama") / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    import pandas as pd
    units = pd.read_parquet(runs["llama"] / "units.parquet")
    scu = units[(units.role == "SCU") & (units.module == "mlp")]
    assert len(scu), "the tiny model has MLP SCU units"
    for layer, rows in scu.groupby("layer"):
        key = f"model.layers.{layer}.mlp.down_proj.weight"
        cols = torch.tensor(rows.unit.to_numpy())
        assert torch.equal(before[key][:, cols], after[key][:, cols])
        assert not torch.equal(before[key], after[key])
    load_model(str(out), device="cpu", dtype="float32")  # the output is a loadable model folder


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "steps must be"),
    (["--steps", "2", "--freeze", "XYZ"], "unknown unit group 'XYZ'"),
    (["--steps", "2", "--freeze", "SCU"], "need --run"),
    (["--steps", "2", "--train-only", "RU", "--run", "OTHER"], "the run was made on another model"),
])
def test_finetune_bad_input(extra, message, tiny_model_path, runs, tmp_path, capsys):
    extra = [str(runs["gpt2"]) if e == "OTHER" else e for e in extra]
    if "--freeze" in extra and "need" not in message:
        extra += ["--run", str(runs["llama"])]
    code = main(["finetune", "--model", str(tiny_model_path("llama")), "--data", "benign-answers",
                 "--out", str(tmp_path / "x"), "--quiet", "--device", "cpu", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compare_a_run_with_itself_and_with_other_thresholds(runs, tmp_path, capsys):
    assert main(["compare", str(runs["llama"]), str(runs["llama"]), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["scu_jaccard"] == 1.0
    assert main(["compare", str(runs["llama"]), str(runs["gpt2"])]) == 2
    assert main(["compare", str(runs["llama"]), str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
