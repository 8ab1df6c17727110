"""`ssah` as a user runs it: the contract's files, progress on stderr, and clear errors that write nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from contract import check_run_folder

from backend.cli import main


def write_jsonl(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"prompt": p.prompt, "response": p.response}) + "\n" for p in pairs))
    return path


@pytest.fixture()
def files(tmp_path, safety_pairs, utility_pairs):
    return write_jsonl(tmp_path / "safety.jsonl", safety_pairs), write_jsonl(tmp_path / "utility.jsonl", utility_pairs)


def attribute(model, safety, utility, out, *extra) -> int:
    return main(["attribute", "--model", str(model), "--safety", str(safety), "--utility", str(utility),
                 "--out", str(out), "--quiet", "--device", "cpu", *map(str, extra)])


def test_attribute_writes_a_run_folder_with_the_units_and_manifest_asked_for(tiny_model_path, files, tmp_path, capsys):
    out = tmp_path / "run"
    assert attribute(tiny_model_path("llama-gqa"), *files, out, "--samples", 10, "--batch-size", 3) == 0
    assert "units" in capsys.readouterr().out
    units = pd.read_parquet(out / "units.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["datasets"]["safety"]["samples"] == 10
    assert manifest["model"]["architecture"] == "llama"
    assert manifest["positions"] == "response" and manifest["responses"] == "given"
    assert set(units.role) <= {"SCU", "UCU", "CU", "RU"}


def test_an_attributed_run_folder_passes_the_contract_checker(tiny_model_path, files, tmp_path):
    out = tmp_path / "run"
    assert attribute(tiny_model_path("llama-gqa"), *files, out, "--samples", 10, "--batch-size", 3) == 0
    check_run_folder(out)


def test_thresholds_from_the_command_line_reach_the_roles(tiny_model_path, files, tmp_path):
    out = tmp_path / "run"
    assert attribute(tiny_model_path("llama"), *files, out, "--h-scu", 0.2, "--h-ucu", 0, "--h-ru", 0) == 0
    units = pd.read_parquet(out / "units.parquet")
    share = units.params[units.role == "SCU"].sum() / units.params.sum()
    assert 0.2 <= share <= 0.2 + units.params.max() / units.params.sum()
    assert set(units.role) == {"SCU", "CU"}


@pytest.mark.slow  # generates the model's own replies
def test_self_responses_score_the_models_own_replies(tiny_model_path, files, tmp_path):
    out = tmp_path / "run"
    assert attribute(tiny_model_path("qwen2"), *files, out, "--samples", 4, "--responses", "self",
                     "--self-max-new-tokens", 6) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["responses"] == "self"
    assert manifest["datasets"]["safety"]["name"].endswith("+self")
    scored = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert [r["split"] for r in scored] == ["safety"] * 4 + ["utility"] * 4
    # each scored reply is the model's own greedy continuation, computed here without the engine's batching
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = tiny_model_path("qwen2")
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    for row in scored[:2] + scored[4:6]:
        ids = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                      return_tensors="pt")["input_ids"]
        new = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        assert row["response"] == tok.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("case, expected", [
    ("unknown-model", "built-in models: smollm2-135m-instruct"),
    ("missing-path", "no such model file or folder"),
    ("not-a-model-folder", "no config.json"),
    ("unsupported-arch", "not supported; supported: llama"),
    ("pickle-weights", "never unpickles"),
    ("missing-column", "response"),
    ("empty-file", "empty"),
    ("bad-encoding", "UTF-8"),
    ("too-long", "rows are refused, not cut"),
    ("bad-threshold", "--h-scu must be in [0, 1]"),
    ("zero-samples", "--samples must be between 1"),
])
def test_bad_input_gets_a_clear_error_and_writes_nothing(case, expected, tiny_model_path, files, tmp_path, capsys):
    model, (safety, utility) = tiny_model_path("llama"), files
    extra: list = []
    if case == "unknown-model":
        model = "llama-7b-nonexistent"
    elif case == "missing-path":
        model = tmp_path / "nowhere"
    elif case == "not-a-model-folder":
        model = tmp_path / "empty-folder"
        model.mkdir()
    elif case in ("unsupported-arch", "pickle-weights"):
        model = tmp_path / "odd-model"
        model.mkdir()
        config = json.loads((tiny_model_path("llama") / "config.json").read_text())
        if case == "unsupported-arch":
            config["model_type"] = "mamba"
            (model / "model.safetensors").write_bytes(b"")
        else:
            (model / "pytorch_model.bin").write_bytes(b"not unpickled")
        (model / "config.json").write_text(json.dumps(config))
    elif case == "missing-column":
        safety = tmp_path / "bad.csv"
        safety.write_text("prompt,answer\nhello,hi\n")
    elif case == "empty-file":
        safety = tmp_path / "bad.jsonl"
        safety.write_text("")
    elif case == "bad-encoding":
        safety = tmp_path / "bad.csv"
        safety.write_bytes("prompt,response\ncaf\xe9,ok\n".encode("latin-1"))
    elif case == "too-long":
        extra = ["--max-length", 8]
    elif case == "bad-threshold":
        extra = ["--h-scu", 1.5]
    elif case == "zero-samples":
        extra = ["--samples", 0]
    out = tmp_path / "run"
    try:
        code = attribute(model, safety, utility, out, *extra)
    except SystemExit as e:  # argparse rejects bad flag values itself
        code = e.code
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_run_keeps_the_previous_results(tiny_model_path, files, tmp_path):
    out = tmp_path / "run"
    assert attribute(tiny_model_path("llama"), *files, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert attribute(tiny_model_path("llama"), *files, out, "--max-length", 8) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_models_and_data_lists(capsys):
    assert main(["models", "list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "advbench-refusals" in listing and "benign-answers" in listing
    assert main(["models", "path", "gpt-5"]) == 2
    assert "unknown built-in model 'gpt-5'" in capsys.readouterr().err
