"""Runs as experiments, the parts that need no browser: how a run, its model and its jobs are put in words, what
Compare marks as different, which settings a stored preview brings back to the intervene page, and the Python that
"copy as Python" gives (run against a run folder)."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import save_file
from uikit import synthetic_units

import backend.verbs
from app.experiments import (
    groups_label,
    job_link,
    job_summary,
    model_label,
    preview_settings,
    run_label,
    settings_rows,
    short_path,
    thresholds_label,
)
from app.snippets import intervene_code, overview_code
from backend.engine.roles import RoleIndex, Thresholds

BASE = {"id": "0123456789abcdef", "name": None, "model": "/srv/models/llama-3-8b-instruct/",
        "origin": {"kind": "base"}, "created_at": "2026-01-02T03:04:05", "tags": [],
        "settings": {"safety": "/data/safety.jsonl", "utility": "benign-answers", "samples": 128,
                     "thresholds": {"h_ru": 0.1, "h_scu": 0.01, "h_ucu": 0.05}, "seed": 0, "positions": "response"}}
TUNED = {**BASE, "id": "fedcba9876543210", "name": "tuned", "model": "/srv/runs/finetunes/9f8e7d6c5b4a39281706/",
         "parent_run": BASE["id"], "origin": {"kind": "finetune", "job": "9f8e7d6c5b4a39281706", "how": "freeze SCU"},
         "settings": {**BASE["settings"], "samples": 64, "thresholds": {"h_ru": 0.1, "h_scu": 0.02, "h_ucu": 0.05}}}


def test_a_run_and_its_model_are_named_as_a_person_would_name_them():
    assert run_label(BASE) == "01234567" and run_label(TUNED) == "tuned"
    assert model_label(BASE) == "llama-3-8b-instruct"  # a folder's name, not its path
    names = {BASE["id"]: "base 128"}
    assert model_label(TUNED, names) == "fine-tune of base 128 (freeze SCU)"  # not the hex folder of the job
    assert model_label(TUNED) == "fine-tune of 01234567 (freeze SCU)"
    assert model_label({"model": "x", "origin": {"kind": "align", "how": "budget", "from": "/m/smol/"}}) == \
        "alignment of smol (budget)"
    assert short_path("smollm2-135m-safe") == "smollm2-135m-safe" and short_path("C:\\m\\q.gguf") == "q.gguf"
    assert thresholds_label({"h_scu": 0.02}) == "0.1 / 0.02 / 0.05"


def test_a_job_is_summed_up_in_one_line_with_a_link_that_reopens_it():
    sets = {"harmful": ["advbench-eval"], "benign": ["/data/benign.jsonl"], "limit": 10, "max_new_tokens": 48}
    preview = {"id": "p1", "kind": "preview", "request": {
        "prune": {"groups": ["SCU"], "cu_fraction": 0.06, "random": False, "seed": 0, "reference": "safety",
                  "thresholds": {"h_ru": 0.1, "h_scu": 0.02, "h_ucu": 0.05}}, "sets": sets, "controls": 5}}
    assert job_summary(preview) == ("prune SCU,CU:0.06 · safety mean · roles at 0.1 / 0.02 / 0.05 · advbench-eval + "
                                    "benign.jsonl · 10 prompts each · 48 new tokens · 5 random controls")
    sweep = {"id": "s1", "kind": "sweep", "request": {"group": "SCU", "fractions": [0.005, 0.01], "controls": 5,
                                                      "sets": sets}}
    assert job_summary(sweep).startswith("SCU at 0.50%, 1.00% · 5 random controls per point")
    older = {**sweep, "request": {**sweep["request"], "controls": True}}  # one random set per point, before bands
    assert job_summary(older).startswith("SCU at 0.50%, 1.00% · with random controls")
    finetune = {"id": "f1", "kind": "finetune", "request": {"freeze": {"groups": ["SCU"], "cu_fraction": 0},
                                                            "data": "benign-answers", "steps": 20}}
    assert job_summary(finetune) == "freeze SCU · benign-answers · 20 steps"
    assert groups_label({"groups": [], "random": True, "seed": 3}) == "random (seed 3)"
    assert job_link("r1", preview, "tok") == "/runs/r1/intervene?job=p1&token=tok"
    assert job_link("r1", sweep) == "/runs/r1/intervene?sweep=s1"
    assert job_link("r1", finetune) == "/runs/r1/intervene?ft_job=f1"
    assert job_link("r1", {"id": "e1", "kind": "estimate", "request": {}}) == "/runs/r1/intervene?estimate=e1"
    inspect = {"id": "i1", "kind": "inspect", "request": {"module": "mlp", "layer": 3, "unit": 17}}
    assert job_link("r1", inspect, "tok") == "/runs/r1/units/mlp/3/17?token=tok"
    assert job_summary(inspect) == "mlp layer 3 unit 17"


def test_compare_marks_the_settings_that_differ():
    rows = {label: (a, b, differs) for label, a, b, differs in settings_rows(BASE, TUNED, {BASE["id"]: "base"})}
    assert rows["samples"] == ("128", "64", True)
    assert rows["h_RU / h_SCU / h_UCU"] == ("0.1 / 0.01 / 0.05", "0.1 / 0.02 / 0.05", True)
    assert rows["model"] == ("llama-3-8b-instruct", "fine-tune of base (freeze SCU)", True)
    assert rows["safety set"] == ("safety.jsonl", "safety.jsonl", False)
    assert rows["name"][2] is False  # names always differ: not marked


def test_a_stored_preview_brings_back_the_settings_it_was_made_with():
    request = {"prune": {"groups": ["SCU", "UCU"], "cu_fraction": 0.0, "random": False, "seed": 0,
                         "reference": None, "thresholds": {"h_ru": 0.1, "h_scu": 0.02, "h_ucu": 0.05}},
               "sets": {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"], "utility": None, "limit": 2,
                        "max_new_tokens": 8}, "controls": 0}
    assert preview_settings(request) == {"groups": ["SCU", "UCU"], "cu": 0.0, "random": False,
                                         "reference": "default", "controls": 0, "harmful": "harmful.jsonl",
                                         "benign": "benign.jsonl", "utility": "", "limit": 2, "tokens": 8,
                                         "units": "", "layers": "", "h_ru": 0.1, "h_scu": 0.02, "h_ucu": 0.05}
    single = {**request, "prune": {**request["prune"], "groups": [], "layers": [3, 5],
                                   "units": [{"module": "mlp", "layer": 3, "unit": 17}, {"module": "attn", "layer": 5,
                                                                                         "unit": 2}]}}
    assert (preview_settings(single)["units"], preview_settings(single)["layers"]) == ("mlp.3.17,attn.5.2", "3,5")
    unpruned = preview_settings({"prune": None, "sets": request["sets"], "controls": 0})
    assert unpruned["groups"] == [] and unpruned["h_scu"] is None


@pytest.fixture()
def run_folder(tmp_path, monkeypatch):
    """A run folder (synthetic units, a stand-in means file) under a results dir that Settings() finds."""
    units = synthetic_units(layers=3, channels=256, heads=4, hidden=64, head_dim=16, kv_heads=2, seed=5)
    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    units.to_parquet(folder / "units.parquet", index=False)
    save_file({"safety.mlp.0": torch.zeros(256)}, str(folder / "means.safetensors"))
    (folder / "manifest.json").write_text(json.dumps({"model": {"folder": "/models/tiny"}, "thresholds": {}}))
    monkeypatch.setenv("SSAH_RESULTS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SSAH_HOME", str(tmp_path / "home"))
    return units


def run_code(code: str) -> tuple[dict, str]:
    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<copy as Python>", "exec"), scope)  # noqa: S102  (our own generated code)
    return scope, out.getvalue()


def test_copy_as_python_gives_the_roles_of_the_overview(run_folder):
    at = {"h_ru": 0.2, "h_scu": 0.03, "h_ucu": 0.05}
    scope, printed = run_code(overview_code({"id": "r1", "model": "tiny"}, at))
    expected = RoleIndex.from_units(run_folder).roles(Thresholds(**at))
    assert (scope["units"].role.to_numpy() == expected).all()
    assert "SCU" in printed


def test_copy_as_python_gives_the_selection_and_the_preview_of_the_intervene_page(run_folder, monkeypatch):
    asked = []
    monkeypatch.setattr(backend.verbs, "evaluate", lambda request: asked.append(request) or
                        type("Preview", (), {"baseline": type("M", (), {"counts": {}})(), "pruned": None})())
    view = {"groups": ["SCU"], "cu": 0.05, "random": False, "reference": "zero", "harmful": "a.jsonl, b.jsonl",
            "benign": "benign-prompts", "utility": "", "limit": 3, "tokens": 16, "h_scu": 0.02, "controls": 5}
    scope, _ = run_code(intervene_code({"id": "r1", "model": "tiny",
                                        "manifest": {"model": {"folder": "/models/tiny"}}}, view))
    (request,) = asked
    assert request.model == "/models/tiny" and request.run.endswith("runs/r1") and request.controls == 5
    assert request.prune.groups == ("SCU",) and request.prune.cu_fraction == 0.05 and request.prune.reference == "zero"
    assert request.prune.thresholds == Thresholds(h_ru=0.1, h_scu=0.02, h_ucu=0.05)  # as the API fills a partial set
    assert request.sets.harmful == ("a.jsonl", "b.jsonl") and request.sets.limit == 3
    assert request.sets.max_new_tokens == 16
    chosen = request.prune.choose(run_folder)
    assert len(scope["selection"]) == len(chosen) and set(chosen.reference) == {"zero"}
