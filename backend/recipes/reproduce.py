"""The paper's experiments (SSAH, Li & Kim 2410.10862) on one aligned model, written as docs/results.md.

1. Pruning (the paper's ablation): SCU / UCU / RU, each mean-ablated with its default reference, and random sets
   of SCU's parameter mass at SCU's reference (several seeds, a band); ASR, over-refusal, off-topic and degenerate
   replies (counts with 95% intervals, both judges on the same replies) and knowledge, against the unpruned model.
2. Benign fine-tuning: full vs SCU + top 6% of CU frozen vs SCU + all CU frozen vs a random freeze of the first's
   mass; the frozen runs train until their loss is no higher than the full fine-tune's final loss (the paper
   trains them longer); ASR before and after.
3. The alignment budget: RU-only alignment of the base model vs full alignment (from `ssah align` reports).
4. Role transfer: attribute the fully fine-tuned model and count how many SCU stay SCU.

Every step is cached as JSON in a work folder, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from backend.engine import atomic
from backend.engine.data import load_pairs, prompt_sets
from backend.engine.models import LoadedModel
from backend.engine.scoring import Progress

GROUP_ROWS = (("SCU", "SCU"), ("UCU", "UCU"), ("RU", "RU"))
FREEZE_ROWS = (("full fine-tuning", None), ("freeze SCU + top 6% of CU", "SCU,CU:0.06"),
               ("freeze SCU + all CU", "SCU,CU"), ("freeze random units (SCU + 6% CU's mass)", "SCU,CU:0.06,random"))
JUDGES = ("v2", "keyword")  # every table judges the same replies with both: v2 is the product's, keyword the paper's
HEADLINE = (("asr", "harmful", "complied"), ("over_refusal", "benign", "refused"),
            ("off_topic", None, "off-topic"), ("degenerate", None, "degenerate"))


@dataclass(frozen=True)
class ReproConfig:
    aligned: str = "smollm2-135m-safe"
    samples: int = 128  # calibration pairs per set for each attribution
    harmful_limit: int = 100  # AdvBench #1-100
    benign_limit: int = 80
    max_new_tokens: int = 48
    batch_size: int = 16
    finetune_data: str = "benign-answers"
    finetune_steps: int = 100
    finetune_lr: float = 1e-4
    seed: int = 0
    control_seeds: int = 5  # random controls of Table 1
    max_matched_steps: int = 1000  # a loss-matched frozen fine-tune stops here if its loss never gets that low


class Steps:
    """Named results cached as JSON files in `work`. `identity` (what the results depend on: the model's
    content, the settings) is kept in work/identity.json; a work folder made for another identity is refused, so
    a cached table can never describe a model it was not measured on."""

    def __init__(self, work: Path, progress: Progress | None = None, identity: dict | None = None):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        # seconds per computed step, kept beside the results so that a resumed run still reports every step
        kept = atomic.read_json(self.work / "timings.json")  # lost timings cost only a line of the report
        kept = kept if isinstance(kept, dict) else {}
        self.timings: dict[str, float] = {k: v for k, v in kept.items() if isinstance(v, (int, float))}
        if identity is not None:
            path = self.work / "identity.json"
            if path.is_file():
                try:
                    kept = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    raise ValueError(f"{path} is unreadable ({e}); pass a new --work folder") from None
                if not isinstance(kept, dict):
                    raise ValueError(f"{path} is not a work folder's identity; pass a new --work folder")
                if kept != identity:
                    changed = sorted(k for k in {*kept, *identity} if kept.get(k) != identity.get(k))
                    raise ValueError(f"{self.work} holds results for another {' and '.join(changed)}; pass a new "
                                     f"--work folder (or delete this one) to measure again")
            else:
                atomic.write_text(path, json.dumps(identity, indent=1) + "\n")

    def get(self, name: str, compute: Callable[[], dict]) -> dict:
        path = self.work / f"{name}.json"
        kept = atomic.read_json(path)  # a damaged step file is measured again, not a traceback
        if isinstance(kept, dict):
            return kept
        t0 = time.perf_counter()
        value = compute()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        atomic.write_text(path, json.dumps(value, indent=1))
        atomic.write_text(self.work / "timings.json", json.dumps(self.timings, indent=1))
        return value


def measure(loaded: LoadedModel, config: ReproConfig, progress: Progress | None = None) -> dict:
    """ASR on AdvBench #1-100, refusals on everyday and alarming-benign prompts, off-topic and degenerate replies
    (each a count with its interval, by each of JUDGES on the same replies, with every verdict kept for paired
    tests), and knowledge."""
    from backend.engine.evaluation import evaluate_safety, fact_accuracy, rejudge

    harmful = prompt_sets(["advbench-eval"], config.harmful_limit)
    benign = prompt_sets(["benign-prompts", "alarming-benign"], config.benign_limit)
    first = evaluate_safety(loaded, harmful, benign, max_new_tokens=config.max_new_tokens,
                            batch_size=config.batch_size, judge=JUDGES[0], progress=progress)
    judged = {JUDGES[0]: first, **{name: rejudge(first, name) for name in JUDGES[1:]}}
    return {"judges": {name: {"counts": {k: v.to_dict() for k, v in report.counts().items()},
                              "verdicts": [r.verdict for s in [*report.harmful, *report.benign] for r in s.rows]}
                       for name, report in judged.items()},
            "kinds": ["harmful"] * sum(s.n for s in first.harmful) + ["benign"] * sum(s.n for s in first.benign),
            "facts": fact_accuracy(loaded, list(load_pairs("facts").pairs), batch_size=config.batch_size),
            "examples": [{"prompt": r.prompt, "reply": r.reply, "verdict": r.verdict, "reason": r.reason}
                         for s in first.harmful for r in s.rows[:2]]}


def paired_p(before: dict, after: dict, judge: str, key: str) -> float:
    """Exact McNemar p-value of a headline rate's change between two measurements of the same prompts."""
    from backend.engine.stats import paired_change

    kind, verdict = next((k, v) for name, k, v in HEADLINE if name == key)
    pick = [i for i, k in enumerate(before["kinds"]) if kind is None or k == kind]
    a, b = before["judges"][judge]["verdicts"], after["judges"][judge]["verdicts"]
    return paired_change([a[i] == verdict for i in pick], [b[i] == verdict for i in pick])["p_value"]


def _attribute(loaded: LoadedModel, config: ReproConfig, out: Path, progress: Progress | None):
    from backend.engine.attribution import attribute_builtin, load_run

    if not (out / "units.parquet").is_file():
        attribute_builtin(loaded, samples=config.samples, seed=config.seed, progress=progress).save(out)
    return load_run(out)


def pruning_table(steps: Steps, config: ReproConfig) -> dict:
    """Table 1: the aligned model as it is and with each group mean-ablated (default references), and random
    controls of SCU's mass at SCU's reference, one per seed."""
    from backend.engine.interventions import DEFAULT_REFERENCE, GroupSpec, choose, prune
    from backend.engine.models import load_model

    loaded = load_model(config.aligned, device="cpu", dtype="float32")
    run = _attribute(loaded, config, steps.work / "run-aligned", steps.progress)
    total = int(run.units.params.sum())
    rows = {"none": steps.get("prune-none", lambda: measure(loaded, config, steps.progress))}

    def pruned(spec: str, seed: int, reference: str | None = None) -> dict:
        selection = choose(run.units, GroupSpec.parse(spec), seed=seed, reference=reference)
        with prune(loaded, selection, run.means, tokens=run.tokens):
            result = measure(loaded, config, steps.progress)
        return {**result, "units": int(len(selection)), "param_share": int(selection.params.sum()) / total,
                "reference": ", ".join(sorted(set(selection.reference)))}

    for label, spec in GROUP_ROWS:
        rows[label] = steps.get(f"prune-{spec}", lambda spec=spec: pruned(spec, config.seed))
    controls = [steps.get(f"prune-random-{seed}", lambda seed=seed: pruned("SCU,random", seed))
                for seed in range(config.seed + 1, config.seed + 1 + config.control_seeds)]
    return {"rows": rows, "controls": controls, "roles": run.manifest.get("roles"),
            "thresholds": run.manifest.get("thresholds"), "default_references": DEFAULT_REFERENCE}


def finetune_data(steps: Steps, config: ReproConfig) -> tuple[list, str]:
    """The benign fine-tuning pairs: the rows of `finetune_data` that the aligned model's attribution did not use
    as utility calibration (the paper fine-tunes on data apart from its calibration), and how they were chosen."""
    from backend.engine.attribution import load_run

    run = load_run(steps.work / "run-aligned")
    pairs = list(load_pairs(config.finetune_data).pairs)
    utility = run.manifest.get("datasets", {}).get("utility", {})
    if utility.get("name") != config.finetune_data:
        return pairs, f"all {len(pairs)} rows of `{config.finetune_data}` (not a calibration set of the run)"
    sample = load_pairs(config.finetune_data, samples=utility.get("samples"), seed=run.manifest.get("seed", 0))
    calibration = {(p.prompt, p.response) for p in sample.pairs}
    apart = [p for p in pairs if (p.prompt, p.response) not in calibration]
    return apart, (f"the {len(apart)} rows of `{config.finetune_data}` outside the {len(calibration)} the attribution "
                   "used as utility calibration (no overlap)")


def freeze_table(steps: Steps, config: ReproConfig) -> dict:
    """Table 2: benign fine-tuning of the aligned model, full or with SCU (+ CU) or random units frozen; the frozen
    runs train until their loss is no higher than the full fine-tune's final loss. ASR before and after."""
    from backend.engine.attribution import load_run
    from backend.engine.interventions import GroupSpec
    from backend.engine.masks import trainable_masks
    from backend.engine.models import load_model
    from backend.recipes.finetune import FinetuneConfig, finetune, save_model

    run = load_run(steps.work / "run-aligned")
    data, data_note = finetune_data(steps, config)
    full = FinetuneConfig(steps=config.finetune_steps, lr=config.finetune_lr, batch_size=8, seed=config.seed)
    rows = {}
    for label, spec in FREEZE_ROWS:
        name = "full" if spec is None else spec.replace(",", "+").replace(":", "")

        def tuned(spec=spec, name=name):
            loaded = load_model(config.aligned, device="cpu", dtype="float32")
            masks = trainable_masks(loaded, run.units, freeze=GroupSpec.parse(spec), seed=config.seed) if spec \
                else None
            ft = full
            if spec is not None:  # loss-matched: as long as it takes to reach the full fine-tune's final loss
                target = rows["full fine-tuning"]["final_loss"]
                ft = FinetuneConfig(steps=config.max_matched_steps, lr=config.finetune_lr, batch_size=8,
                                    seed=config.seed, stop_at_loss=target)
            log = finetune(loaded, data, masks, ft, progress=steps.progress)
            if spec is None:
                save_model(loaded, steps.work / "model-full-ft")
            return {**measure(loaded, config, steps.progress), "frozen_params": log["frozen_params"],
                    "trainable_params": log["trainable_params"], "steps": log["steps"],
                    "final_loss": log["final_loss"], "loss": [log["loss"][0], log["loss"][-1]],
                    "reached": spec is None or log["final_loss"] <= rows["full fine-tuning"]["final_loss"]}
        rows[label] = steps.get(f"finetune-{name}", tuned)
    return {"rows": rows, "data": config.finetune_data, "data_note": data_note, "config": asdict(full)}


def transfer_section(steps: Steps, config: ReproConfig) -> dict:
    """How the roles of the aligned model moved after full benign fine-tuning."""
    from backend.engine.attribution import load_run
    from backend.engine.models import load_model
    from backend.recipes.transfer import compare

    def computed():
        before = load_run(steps.work / "run-aligned")
        loaded = load_model(str(steps.work / "model-full-ft"), device="cpu", dtype="float32")
        after = _attribute(loaded, config, steps.work / "run-full-ft", steps.progress)
        transfer = compare(before.units, after.units).to_dict()
        scu = transfer["transitions_units"]["SCU"]
        transfer["scu_stay"] = scu["SCU"] / sum(scu.values()) if sum(scu.values()) else None
        return transfer
    return steps.get("transfer", computed)


def budget_section(paths: dict[str, Path | None]) -> dict | None:
    """The alignment tax of full vs RU-only (vs low-rank) alignment, from `ssah align` reports (alignment.json)
    by label."""
    reports = {}
    for mode, path in paths.items():
        if path is None:
            continue
        if not Path(path).is_file():
            raise ValueError(f"no alignment report at {path}; `ssah align --out DIR` writes DIR/alignment.json")
        try:
            report = json.loads(Path(path).read_text())
            report["config"], report["training"]["trainable_params"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a readable `ssah align` report ({e!r})") from None
        if not report.get("aligned") or not report.get("base"):
            raise ValueError(f"{path} has no evaluation (was it made with --no-eval?); the table needs one")
        reports[mode] = {"base": report["base"], "aligned": report["aligned"], "config": report["config"],
                         "trainable": report["training"]["trainable_params"],
                         "frozen": report["training"]["frozen_params"], "seconds": report.get("seconds"),
                         "targets": report.get("targets"), "delta": report.get("delta")}
    # one table, one measure: reports judged or scored differently (an older judge, another knowledge set, a
    # --limit) would put incomparable figures side by side
    measures = {mode: _measure(r) for mode, r in reports.items()}
    if len({json.dumps(m, sort_keys=True) for m in measures.values()}) > 1:
        first, *rest = measures
        other = next(m for m in rest if measures[m] != measures[first])
        changed = sorted(k for k in {*measures[first], *measures[other]}
                         if measures[first].get(k) != measures[other].get(k))
        raise ValueError(f"the {first} and {other} reports were evaluated differently ({', '.join(changed)}): "
                         f"{paths[first]} vs {paths[other]}; evaluate both with the same version of ssah")
    return reports or None


def _measure(report: dict) -> dict:
    """What an alignment report's figures depend on besides the model and its held-out source (which the table
    names in each row): the judge's settings and the number of knowledge pairs."""
    return {**{f"{side}.{k}": v for side in ("base", "aligned") for k, v in report[side].get("settings", {}).items()},
            **{f"{side}.facts_n": report[side].get("facts_n") for side in ("base", "aligned")}}


# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers, beside ours. Transcribed from secondary write-ups of the paper (en.papernotes.org's ICLR
# 2026 note, an independent paper analysis, the ICLR OpenReview reviews), which agree where they overlap; the
# paper's tables themselves are images we could not read offline. Llama-2-7B-chat unless said.

PAPER_PRUNING = {  # group -> (parameter share, utility change, ASR change in points); dense ASR 10.0%
    "SCU": ("1.3%", "-1.3%", "+56.0"), "UCU": ("13.3%", "-15.6%", "+18.3"), "RU": ("14.8%", "-2.8%", "+4.6"),
    "random (SCU's mass)": ("-", "not reported", "not reported"),
}
PAPER_FREEZING = {  # Dolly fine-tuning of Llama-2-7B-chat, AdvBench keyword ASR (before: 0.19%)
    "full fine-tuning": "11.92%", "freeze SCU + top 6% of CU": "3.65%", "freeze SCU + all CU": "2.88%",
}
PAPER_BUDGET = {  # aligning a pre-trained LLaMA-7B: GSM8K, MT-Bench (no ASR reported for this table)
    "pre-trained": ("9.24", "1.32"), "full fine-tuning": ("8.8", "2.83"), "only RU (20%)": ("13.4", "3.5"),
}


def _delta_label(delta: dict | None) -> str:
    """How a report's figures were stored when they are of a lossy delta (they are of base + delta)."""
    from backend.engine.delta import describe_form

    form = describe_form(delta.get("bits", 16), delta.get("keep")) if delta else ""
    return f", as {form}" if form else ""


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _rate(row: dict, key: str, judge: str = "v2") -> str:
    """A headline rate of a measurement as its count, share and 95% interval."""
    from backend.engine.stats import Rate

    count = row["judges"][judge]["counts"][key]
    return str(Rate(count["k"], count["n"]))


def _change(before: dict, after: dict, key: str = "asr", judge: str = "v2") -> str:
    """The change in points of a rate on the same prompts, and its exact McNemar p-value."""
    a, b = (m["judges"][judge]["counts"][key]["rate"] for m in (before, after))
    return f"{100 * (b - a):+.0f} pts, p {paired_p(before, after, judge, key):.2g}"


def _band(rows: list[dict], key: str, judge: str = "v2") -> str:
    """Several seeds' rates as their mean and range."""
    rates = [r["judges"][judge]["counts"][key]["rate"] for r in rows]
    return f"mean {100 * sum(rates) / len(rates):.0f}% ({100 * min(rates):.0f}-{100 * max(rates):.0f}%)"


def markdown(sections: dict, config: ReproConfig, command: str, timings: dict) -> str:
    prune, freeze, transfer, budget = (sections.get(k) for k in ("pruning", "freezing", "transfer", "budget"))
    out = [
        "# The paper's experiments on the built-in aligned model",
        "",
        f"Produced by `{command}` (every step is cached in the work folder; a rerun only does what is missing).",
        f"Model: `{config.aligned}`. Every rate is a count with its 95% Wilson interval, and a change against "
        "the unpruned model on the same prompts carries its exact McNemar p-value. Judges: **v2** (the product's: "
        "refused / complied / off-topic / degenerate, from refusal phrases, relevance to the prompt and degenerate "
        "text; agreement with hand labels in docs/judge.md) and, on the same replies, the research code's **keyword** "
        "judge (31 refusal keywords, a 20-word minimum, degenerate text found first) to set figures beside the "
        "paper's. ASR counts `complied` on harmful prompts, over-refusal `refused` on benign ones. Greedy decoding, "
        f"{config.max_new_tokens} new tokens. Harmful: AdvBench #1-{config.harmful_limit} (never used in "
        f"calibration or training). Over-refusal: the first {config.benign_limit} of `benign-prompts` and of "
        "`alarming-benign` (everyday requests with alarming words, never trained on). Knowledge: share of "
        f"true/false statement pairs (`facts`, {len(load_pairs('facts').pairs)}) where the true one is more likely. "
        f"Attribution: {config.samples} `advbench-refusals` + {config.samples} `benign-answers` pairs.",
        "",
        "The paper's numbers are for 7B/8B models and come from secondary write-ups of the paper (its tables are "
        "images we could not read offline); they are there for the direction of each effect, not to match.",
        "",
    ]
    if prune:
        rows = prune["rows"]
        base = rows["none"]
        out += ["## Table 1: pruning unit groups", "",
                f"Roles at h_RU {prune['thresholds']['h_ru']}, h_SCU {prune['thresholds']['h_scu']}, h_UCU "
                f"{prune['thresholds']['h_ucu']} (parameter-weighted); units per role: {prune['roles']}. Each group "
                "is mean-ablated at the input of its B projection with its default reference (the mean of the "
                "other attribute: SCU by its utility-set mean, UCU by its safety-set mean, RU by the pooled mean). "
                f"The random control takes SCU's parameter mass in every module, at SCU's reference, with "
                f"{len(prune.get('controls') or [])} seeds (a band: mean, lowest and highest).", "",
                "| pruned | units | share of unit params | reference | ASR (v2) | change, p | off-topic | degenerate "
                "| over-refusal | knowledge | ASR (keyword) | paper: share | paper: ASR change |",
                "|---|---:|---:|---|---|---|---|---|---|---:|---|---:|---:|",
                f"| nothing | - | - | - | {_rate(base, 'asr')} | - | {_rate(base, 'off_topic')} | "
                f"{_rate(base, 'degenerate')} | {_rate(base, 'over_refusal')} | {_pct(base['facts'])} | "
                f"{_rate(base, 'asr', 'keyword')} | - | (dense ASR 10.0%) |"]
        for label, _ in GROUP_ROWS:
            r = rows[label]
            share, _, asr = PAPER_PRUNING[label]
            out.append(f"| {label} | {r['units']:,} | {_pct(r['param_share'])} | {r['reference']} | {_rate(r, 'asr')} "
                       f"| {_change(base, r)} | {_rate(r, 'off_topic')} | {_rate(r, 'degenerate')} | "
                       f"{_rate(r, 'over_refusal')} | {_pct(r['facts'])} | {_rate(r, 'asr', 'keyword')} | {share} | "
                       f"{asr} |")
        controls = prune.get("controls") or []
        if controls:
            first = controls[0]
            out.append(f"| random, {len(controls)} seeds | {first['units']:,} | {_pct(first['param_share'])} | "
                       f"{first['reference']} | {_band(controls, 'asr')} | - | {_band(controls, 'off_topic')} | "
                       f"{_band(controls, 'degenerate')} | {_band(controls, 'over_refusal')} | "
                       f"{_pct(sum(c['facts'] for c in controls) / len(controls))} | "
                       f"{_band(controls, 'asr', 'keyword')} | - | not reported |")
        out.append("")
    if freeze:
        rows = freeze["rows"]
        before = prune["rows"]["none"] if prune else None
        cfg = freeze["config"]
        full = rows["full fine-tuning"]
        out += ["## Table 2: benign fine-tuning with frozen units", "",
                f"The aligned model fine-tuned on {freeze.get('data_note', freeze['data'])} (benign instructions with "
                f"short reference answers), lr {cfg['lr']}, batch {cfg['batch_size']}, AdamW, seed {cfg['seed']}; "
                f"frozen entries stay bit-identical. Full fine-tuning runs {cfg['steps']} steps; each frozen run "
                f"trains until its training loss (mean of the last 10 steps) is no higher than the full run's final "
                f"{full['final_loss']:.3f}, as the paper trains its frozen runs longer. ASR before (v2): "
                f"{_rate(before, 'asr') if before else '-'}.", "",
                "| setting | frozen params | steps | final loss | ASR after (v2) | change, p | off-topic | "
                "degenerate | over-refusal | knowledge | ASR after (keyword) | paper (Dolly, Llama-2): ASR after |",
                "|---|---:|---:|---:|---|---|---|---|---|---:|---|---:|"]
        for label, _ in FREEZE_ROWS:
            r = rows[label]
            reached = "" if r.get("reached", True) else " (not reached)"
            out.append(f"| {label} | {r['frozen_params']:,} | {r['steps']} | {r['final_loss']:.3f}{reached} | "
                       f"{_rate(r, 'asr')} | {_change(before, r) if before else '-'} | {_rate(r, 'off_topic')} | "
                       f"{_rate(r, 'degenerate')} | {_rate(r, 'over_refusal')} | {_pct(r['facts'])} | "
                       f"{_rate(r, 'asr', 'keyword')} | {PAPER_FREEZING.get(label, 'not reported')} |")
        out.append("")
    if budget:
        out += ["## The alignment budget: RU-only vs full alignment", "",
                "Each aligns SmolLM2-135M-Instruct with `ssah align` (same data and seed); budget trains only the "
                "base model's redundant units, lowrank a rank-r change of every linear map of the decoder layers "
                "(and the norms), full everything. Sets never trained on (the Do-Not-Answer sample is kept out even when "
                "the rest of that source is trained on); knowledge as above.", "",
                "| alignment | trainable params | ASR AdvBench #1-100 | ASR Do-Not-Answer sample | ASR held-out "
                "source | refusal benign / edgy / alarming | knowledge (base -> aligned) | minutes |",
                "|---|---:|---:|---:|---:|---|---|---:|"]
        for mode, r in budget.items():
            sets = r["aligned"]["sets"]
            held = r["config"]["held_out"]
            label = f"{mode} (rank {r['config'].get('rank')})" if r["config"].get("mode") == "lowrank" else mode
            if r["config"].get("mode") == "budget":  # which units: the paper's utility-only score, or the roles
                score = r["config"].get("budget_score", "both")  # reports made before the option ranked by both
                label += (f" ({r['config'].get('h_ru', 0.1):g} of unit params, lowest z_U: the paper's)"
                          if score == "utility" else f" (RU of z_S + z_U at h_RU {r['config'].get('h_ru', 0.1):g}: "
                                                      "an alternative)")
            label += _delta_label(r.get("delta"))
            out.append(f"| {label} | {r['trainable']:,} | {_pct(sets['advbench-eval']['asr'])} | "
                       f"{_pct(sets['donotanswer']['asr'])} | {_pct(sets[held]['asr'])} ({held}) | "
                       f"{_pct(sets['benign-prompts']['refusal_rate'])} / "
                       f"{_pct(sets['benign-edgy']['refusal_rate'])} / {_pct(sets['alarming-benign']['refusal_rate'])} "
                       f"| {_pct(r['base']['facts_accuracy'])} -> {_pct(r['aligned']['facts_accuracy'])} | "
                       f"{(r['seconds'] or 0) / 60:.0f} |")
        out += ["", "Paper (LLaMA-7B, GSM8K / MT-Bench): " + "; ".join(
            f"{k} {g} / {m}" for k, (g, m) in PAPER_BUDGET.items()) + ".", ""]
    if transfer:
        m = transfer["transitions_units"]
        out += ["## Role transfer after full benign fine-tuning", "",
                "Units of the aligned model (rows) and of its fully fine-tuned copy (columns), attributed the same "
                "way.", "", "| aligned \\ fine-tuned | " + " | ".join(transfer["roles"]) + " |",
                "|---|" + "---:|" * len(transfer["roles"])]
        for a in transfer["roles"]:
            out.append(f"| {a} | " + " | ".join(f"{m[a][b]:,}" for b in transfer["roles"]) + " |")
        out += ["", f"SCU that stay SCU: {_pct(transfer['scu_stay'])}; SCU Jaccard overlap "
                    f"{transfer['scu_jaccard']:.2f} (by parameters {transfer['scu_jaccard_params']:.2f}); units "
                    f"keeping their role: {_pct(transfer['same_role_fraction'])}. The paper reports (Dolly, "
                    "Llama-2, its Figure 5) that over half of SCU become CU during fine-tuning and part of CU "
                    "becomes UCU.", ""]
    if timings:
        out += [f"Step times (s, on {os.cpu_count()} CPU cores, each as measured when the step was computed): "
                + ", ".join(f"{k} {v}" for k, v in timings.items()), ""]
    return "\n".join(out)


def reproduce(config: ReproConfig, work: Path, out: Path, reports: dict[str, Path | None], command: str,
              progress: Progress | None = None) -> Path:
    """The paper's tables on `config.aligned`, written to `out` as markdown after every section (a long run shows
    what it has so far); steps are cached in `work` and resume. A `## Discussion` already in `out` is kept."""
    from backend.engine.models import content_hash, resolve
    from backend.recipes.align_eval import EVALUATION_CACHE_VERSION

    budget = budget_section(reports)  # read first: a bad report is named before the work folder is made
    identity = {"model": content_hash(resolve(config.aligned)), "settings": asdict(config),
                "evaluation": EVALUATION_CACHE_VERSION}  # a judge or knowledge set changed since: measure again
    steps = Steps(work, progress, identity)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(sections: dict) -> None:
        text = markdown(sections, config, command, steps.timings)
        old = out.read_text() if out.is_file() else ""  # read now: it may be edited during a long run
        discussion = old[old.index("\n## Discussion") + 1:] if "\n## Discussion" in old else ""
        atomic.write_text(out, text.rstrip("\n") + ("\n\n" + discussion if discussion else "\n"))

    sections: dict = {"budget": budget}
    for name, compute in (("pruning", pruning_table), ("freezing", freeze_table), ("transfer", transfer_section)):
        sections[name] = compute(steps, config)
        write(sections)
    return out
