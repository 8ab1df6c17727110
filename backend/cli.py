"""The `ssah` command: attribute units, list built-in models and data sets."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _progress_bar():
    """A tqdm bar on stderr that follows the engine's (phase, done, total) reports."""
    from tqdm import tqdm

    state: dict = {"bar": None, "phase": None}

    def report(phase: str, done: int, total: int) -> None:
        if state["phase"] != phase:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=phase, unit="step", file=sys.stderr, leave=True,
                                dynamic_ncols=True)
            state["phase"] = phase
        bar = state["bar"]
        bar.update(done - bar.n)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    report.close = close
    return report


def _fraction(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [0, 1], got {text!r}") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1], got {value:g}")
        return value
    return parse


def _positive(name: str, upper: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if not 1 <= value <= upper:
            raise argparse.ArgumentTypeError(f"{name} must be between 1 and {upper}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssah", description="Find where a language model keeps its safety.")
    sub = parser.add_subparsers(dest="command", required=True)

    att = sub.add_parser("attribute", help="score and classify every unit of a model")
    att.add_argument("--model", required=True, help="built-in name, local HF folder, .gguf file or cached hub id")
    att.add_argument("--safety", required=True, help="built-in set name or .jsonl/.csv/.parquet file")
    att.add_argument("--utility", required=True, help="built-in set name or .jsonl/.csv/.parquet file")
    att.add_argument("--out", required=True, help="run folder to write")
    att.add_argument("--samples", type=_positive("--samples", 1_000_000), default=128,
                     help="pairs drawn from each set (seeded); default 128")
    att.add_argument("--max-length", type=_positive("--max-length", 1_000_000), default=None,
                     help="longest pair in tokens; longer rows are refused, not cut (default: model context)")
    att.add_argument("--batch-size", type=_positive("--batch-size", 4096), default=8)
    att.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    att.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    att.add_argument("--seed", type=int, default=0)
    att.add_argument("--positions", default="response", choices=["response", "prompt", "all"],
                     help="which tokens count: the response (default), the prompt, or all")
    att.add_argument("--responses", default="given", choices=["given", "self"],
                     help="score the sets' responses (given) or the model's own greedy replies (self)")
    att.add_argument("--self-max-new-tokens", type=_positive("--self-max-new-tokens", 4096), default=64,
                     help="length of the model's own replies with --responses self")
    att.add_argument("--h-ru", type=_fraction("--h-ru"), default=0.10)
    att.add_argument("--h-scu", type=_fraction("--h-scu"), default=0.01)
    att.add_argument("--h-ucu", type=_fraction("--h-ucu"), default=0.05)
    att.add_argument("--quiet", action="store_true", help="no progress bar")

    models = sub.add_parser("models", help="built-in models")
    msub = models.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="list built-in models")
    path = msub.add_parser("path", help="print a folder that AutoModelForCausalLM.from_pretrained loads")
    path.add_argument("name")

    ev = sub.add_parser("evaluate", help="refusal, over-refusal and utility, optionally with a unit group pruned")
    ev.add_argument("--model", required=True)
    ev.add_argument("--run", help="run folder of this model (needed for --prune)")
    ev.add_argument("--prune", help="unit groups to prune: SCU, UCU, CU, RU (comma-separated), CU:FRACTION, "
                                    "or random (a seeded control with the parameter mass of SCU, or of the groups named)")
    ev.add_argument("--cu-fraction", type=_fraction("--cu-fraction"), default=0.0,
                    help="also prune the top fraction of CU (by parameters), ranked by z_safety - z_utility")
    ev.add_argument("--reference", choices=["safety", "utility", "pooled", "zero"], default=None,
                    help="what pruned channels are held at (default: the other attribute's mean: SCU -> utility, "
                         "UCU -> safety, CU/RU -> pooled)")
    ev.add_argument("--harmful", default="advbench-eval", help="harmful prompt set(s), comma-separated")
    ev.add_argument("--benign", default="benign-prompts", help="benign prompt set(s), comma-separated")
    ev.add_argument("--utility", default=None, help="utility set with reference answers, e.g. gsm8k")
    ev.add_argument("--limit", type=_positive("--limit", 10_000), default=20, help="first N prompts of each set")
    ev.add_argument("--max-new-tokens", type=_positive("--max-new-tokens", 4096), default=64)
    ev.add_argument("--batch-size", type=_positive("--batch-size", 4096), default=8)
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ev.add_argument("--seed", type=int, default=0, help="seed of the random control")
    ev.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    ft = sub.add_parser("finetune", help="fine-tune with frozen units, or train only a unit group")
    ft.add_argument("--model", required=True)
    ft.add_argument("--run", help="run folder of this model (needed for --freeze / --train-only)")
    mode = ft.add_mutually_exclusive_group()
    mode.add_argument("--freeze", help="unit groups kept fixed, e.g. SCU,CU:0.06")
    mode.add_argument("--train-only", help="train only these unit groups, e.g. RU (the alignment budget)")
    ft.add_argument("--data", required=True, help="training pairs: a built-in set or a .jsonl/.csv/.parquet file")
    ft.add_argument("--steps", type=int, required=True)
    ft.add_argument("--lr", type=float, default=1e-4)
    ft.add_argument("--batch-size", type=int, default=8)
    ft.add_argument("--weight-decay", type=float, default=0.0)
    ft.add_argument("--samples", type=_positive("--samples", 1_000_000), default=None, help="pairs drawn from --data")
    ft.add_argument("--out", required=True, help="folder for the fine-tuned model")
    ft.add_argument("--harmful", default="advbench-eval", help="harmful sets for the before/after check")
    ft.add_argument("--benign", default="benign-prompts", help="benign sets for the before/after check")
    ft.add_argument("--limit", type=_positive("--limit", 10_000), default=20)
    ft.add_argument("--max-new-tokens", type=_positive("--max-new-tokens", 4096), default=48)
    ft.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--json", action="store_true")
    ft.add_argument("--quiet", action="store_true")

    al = sub.add_parser("align", help="safety-align a chat model on a CPU (full fine-tuning or the alignment "
                                      "budget) and check it on sets never trained on")
    al.add_argument("--model", default="smollm2-135m-instruct", help="the unaligned model")
    al.add_argument("--mode", choices=["full", "budget", "lowrank"], default="full",
                    help="full: train every parameter; budget: only the base model's redundant units (RU); "
                         "lowrank: a rank --rank change of every decoder linear map (ships as a small delta)")
    al.add_argument("--rank", type=_positive("--rank", 4096), default=None,
                    help="lowrank mode: rank of each change (default 32, 19.7 MB of delta on SmolLM2-135M)")
    al.add_argument("--steps", type=_positive("--steps", 100_000), default=150)
    al.add_argument("--lr", type=float, default=None, help="default 5e-5 (full), 2e-4 (budget) or 5e-4 (lowrank)")
    al.add_argument("--batch-size", type=_positive("--batch-size", 1024), default=8)
    al.add_argument("--h-ru", type=_fraction("--h-ru"), default=0.1,
                    help="budget mode: RU's share of unit parameters in the base model's attribution")
    al.add_argument("--benign-share", type=_fraction("--benign-share"), default=0.5,
                    help="share of benign (answered) examples in the training mix")
    al.add_argument("--strength", type=_fraction("--strength"), default=1.0,
                    help="share of the learned change kept (base + strength * change; default 1). Below 1 the "
                         "model refuses fewer harmless requests and more harmful ones get through")
    al.add_argument("--teacher", metavar="MODEL",
                    help="distil this model (e.g. a full alignment's --out folder) instead of training on the "
                         "replies' tokens: the loss is the KL divergence from its next-token distributions")
    al.add_argument("--benign-distil", action="store_true",
                    help="benign pairs learn the base model's next-token distributions on its own answers (KL "
                         "divergence), not only the tokens it chose: the model is held to the base where it should "
                         "answer (training takes about 1.3 times as long)")
    al.add_argument("--anchor", type=float, default=0.0, metavar="WEIGHT",
                    help="add WEIGHT x the KL divergence from the base model's next-token distributions on the "
                         "benign answers read as plain text (no chat template) to every step: keeps the model's "
                         "plain-text language modelling, where knowledge is read, near the base (default 0: off; "
                         "training takes about 1.9 times as long)")
    al.add_argument("--held-out", choices=["donotanswer", "harmbench"], default="harmbench",
                    help="harmful source left out of training, evaluated as unseen")
    al.add_argument("--train-limit", type=_positive("--train-limit", 1_000_000), default=None,
                    help="train on at most N harmful and N benign prompts (quick trials)")
    al.add_argument("--out", required=True, help="folder for the aligned model")
    al.add_argument("--delta", help="also write the change from the base as a small delta file; the model in "
                                    "--out is then rebuilt from base + delta, so the figures are the shipped model's")
    al.add_argument("--delta-bits", type=int, choices=(16, 8, 4, 2, 1), default=16,
                    help="16: the change as it is (float16); 8, 4 or 2: with --delta-keep, the kept values as 8-, "
                         "4- or 2-bit codes with a step per row (a half, a quarter or an eighth of the bytes, so "
                         "two, four or eight times the share fits); 1: a matrix's change as its signs "
                         "and one magnitude per row (lossy, about 1/16 of the size; check the figures it prints "
                         "before shipping one)")
    al.add_argument("--delta-keep", type=_fraction("--delta-keep"), default=None, metavar="SHARE",
                    help="store a matrix's change as a seeded random SHARE of its entries, rescaled by 1/SHARE "
                         "(DARE; lossy but unbiased, SHARE x the size; 0.09 puts a full fine-tune of SmolLM2-135M "
                         "in 24 MB, 0.72 with --delta-bits 2 in 25 MB); check the figures it prints before shipping "
                         "one")
    al.add_argument("--limit", type=_positive("--limit", 10_000), default=None,
                    help="evaluate on the first N prompts of each set (default: all)")
    al.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    al.add_argument("--max-new-tokens", type=_positive("--max-new-tokens", 4096), default=48)
    al.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--json", action="store_true")
    al.add_argument("--quiet", action="store_true")

    rp = sub.add_parser("reproduce", help="the paper's experiments on an aligned model, written as markdown "
                                          "(docs/results.md); steps are cached in --work and resume")
    rp.add_argument("--aligned", default="smollm2-135m-safe", help="the aligned model the tables are about")
    rp.add_argument("--full-report", type=Path, help="alignment.json of `ssah align --mode full`")
    rp.add_argument("--budget-report", type=Path, help="alignment.json of `ssah align --mode budget`")
    rp.add_argument("--lowrank-report", type=Path, help="alignment.json of `ssah align --mode lowrank`")
    rp.add_argument("--work", type=Path, required=True, help="folder for runs, models and cached step results")
    rp.add_argument("--out", type=Path, default=Path("docs/results.md"))
    rp.add_argument("--samples", type=_positive("--samples", 100_000), default=128)
    rp.add_argument("--harmful-limit", type=_positive("--harmful-limit", 10_000), default=100)
    rp.add_argument("--benign-limit", type=_positive("--benign-limit", 10_000), default=80)
    rp.add_argument("--max-new-tokens", type=_positive("--max-new-tokens", 4096), default=48)
    rp.add_argument("--finetune-steps", type=_positive("--finetune-steps", 100_000), default=100)
    rp.add_argument("--finetune-lr", type=float, default=1e-4)
    rp.add_argument("--quiet", action="store_true")

    cmp_ = sub.add_parser("compare", help="role transfer between two runs of one architecture")
    cmp_.add_argument("run_a")
    cmp_.add_argument("run_b")
    cmp_.add_argument("--json", action="store_true")

    data = sub.add_parser("data", help="built-in calibration and evaluation sets")
    dsub = data.add_subparsers(dest="action", required=True)
    dsub.add_parser("list", help="list built-in sets")

    serve = sub.add_parser("serve", help="the REST API with a local worker (settings from SSAH_* variables)")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1); on an address that is not "
                                                    "loopback every request needs a token (ssah tokens create)")
    serve.add_argument("--port", type=_positive("--port", 65535), default=None, help="default 8000")

    tokens = sub.add_parser("tokens", help="bearer tokens of the service")
    tsub = tokens.add_subparsers(dest="action", required=True)
    tcreate = tsub.add_parser("create", help="make a write token; it is printed once and stored hashed")
    tcreate.add_argument("--name", required=True, help="who or what uses it")
    tcreate.add_argument("--expires-in-days", type=float, default=None, help="default: no expiry")
    tsub.add_parser("list", help="list tokens (names, scopes, expiry; never the tokens)")
    trevoke = tsub.add_parser("revoke", help="revoke tokens by id or name")
    trevoke.add_argument("token", help="id or name")
    return parser


def cmd_attribute(args: argparse.Namespace) -> int:
    from backend.engine import Thresholds, run_attribution

    thresholds = Thresholds(h_ru=args.h_ru, h_scu=args.h_scu, h_ucu=args.h_ucu)
    progress = None if args.quiet else _progress_bar()
    try:
        result = run_attribution(args.model, args.safety, args.utility, args.out, samples=args.samples,
                                 max_length=args.max_length, batch_size=args.batch_size, device=args.device,
                                 dtype=args.dtype, seed=args.seed, positions=args.positions,
                                 responses=args.responses, self_max_new_tokens=args.self_max_new_tokens,
                                 thresholds=thresholds, progress=progress)
    finally:
        if progress:
            progress.close()
    roles = result.manifest["roles"]
    total = int(result.units.params.sum())
    shares = result.units.groupby("role").params.sum() / total
    print(f"wrote {Path(args.out) / 'units.parquet'}: {len(result.units)} units; "
          + ", ".join(f"{r} {roles[r]} ({shares.get(r, 0):.1%} of params)" for r in ("SCU", "UCU", "CU", "RU")))
    return 0


def _prompt_sets(spec: str, limit: int) -> dict[str, list[str]]:
    from backend.engine.data import load_pairs

    sets = {}
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        sets[name] = [p.prompt for p in load_pairs(name).pairs[:limit]]
    return sets


def _pct(x) -> str:
    return "  -  " if x is None else f"{x:6.1%}"


def _print_preview(result: dict) -> None:
    columns = [("baseline", result["baseline"])] + ([("pruned", result["pruned"])] if "pruned" in result else [])
    if "selection" in result:
        s = result["selection"]
        print(f"pruned: {s['label']}: {s['units']} units, {s['param_fraction']:.2%} of unit parameters, "
              f"references {s['references']}")
    if "warning" in result:
        print(f"warning: {result['warning']}")
    print(f"{'metric':<28}" + "".join(f"{name:>12}" for name, _ in columns))
    rows = [("ASR (coherent compliance)", "asr"), ("over-refusal (benign)", "over_refusal"),
            ("degenerate replies", "degenerate_rate"), ("utility exact match", "utility_exact_match")]
    for label, key in rows:
        print(f"{label:<28}" + "".join(f"{_pct(m[key]):>12}" for _, m in columns))
    nll = [m["utility_nll"] for _, m in columns]
    if any(v is not None for v in nll):
        print(f"{'utility NLL / token':<28}" + "".join(f"{v:>12.3f}" if v is not None else f"{'-':>12}" for v in nll))
    print()
    for g in result["generations"]:
        print(f"[{g['set']}] {g['prompt']}")
        for name in ("baseline", "pruned"):
            if name in g:
                reply = " ".join(g[name]["reply"].split())
                print(f"  {name:>8} {g[name]['verdict'].upper():<10} {reply[:160]}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from backend.engine import load_model
    from backend.engine.attribution import load_run
    from backend.engine.data import load_pairs
    from backend.engine.interventions import GroupSpec, choose
    from backend.engine.preview import preview

    if (args.prune or args.cu_fraction) and not args.run:
        raise ValueError("--prune and --cu-fraction need --run (the run folder of this model)")
    run = load_run(args.run) if args.run else None
    harmful, benign = _prompt_sets(args.harmful, args.limit), _prompt_sets(args.benign, args.limit)
    utility_pairs = list(load_pairs(args.utility).pairs[:args.limit]) if args.utility else []
    selection, label = None, ""
    if run is not None and (args.prune or args.cu_fraction):
        if args.prune:
            spec = GroupSpec.parse(args.prune)
            spec = GroupSpec(spec.groups, max(spec.cu_fraction, args.cu_fraction), spec.random)
        else:
            spec = GroupSpec((), args.cu_fraction, False)
        selection = choose(run.units, spec, seed=args.seed, reference=args.reference)
        label = args.prune or f"CU:{args.cu_fraction:g}"
        if spec.random:
            label += f" (seed {args.seed})"
    progress = None if args.quiet else _progress_bar()
    try:
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        result = preview(loaded, harmful, benign, run=run, selection=selection, label=label,
                         utility_pairs=utility_pairs, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, progress=progress)
    finally:
        if progress:
            progress.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_preview(result)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from backend.engine import load_model
    from backend.engine.attribution import load_run
    from backend.engine.data import load_pairs
    from backend.recipes.finetune import FinetuneConfig, finetune, save_model
    from backend.engine.masks import trainable_masks
    from backend.engine.interventions import GroupSpec
    from backend.engine.preview import preview

    config = FinetuneConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            weight_decay=args.weight_decay, seed=args.seed)
    if (args.freeze or args.train_only) and not args.run:
        raise ValueError("--freeze and --train-only need --run (the run folder of this model)")
    run = load_run(args.run) if args.run else None
    data = load_pairs(args.data, samples=args.samples, seed=args.seed)
    harmful, benign = _prompt_sets(args.harmful, args.limit), _prompt_sets(args.benign, args.limit)
    progress = None if args.quiet else _progress_bar()
    try:
        # fine-tuning is done in float32: AdamW steps at lr ~1e-4 vanish in bfloat16 weights
        loaded = load_model(args.model, device=args.device, dtype="float32")
        masks = None
        if run is not None and (args.freeze or args.train_only):
            masks = trainable_masks(loaded, run.units,
                                    freeze=GroupSpec.parse(args.freeze) if args.freeze else None,
                                    train_only=GroupSpec.parse(args.train_only) if args.train_only else None,
                                    seed=args.seed)
        check = dict(max_new_tokens=args.max_new_tokens, progress=progress)
        before = preview(loaded, harmful, benign, **check)["baseline"]
        log = finetune(loaded, data.pairs, masks, config, progress=progress)
        after = preview(loaded, harmful, benign, **check)["baseline"]
        out = save_model(loaded, args.out)
    finally:
        if progress:
            progress.close()
    report = {"model": args.model, "out": str(out), "data": data.name, "mode": (
        f"freeze {args.freeze}" if args.freeze else f"train only {args.train_only}" if args.train_only else "full"),
        "training": log, "before": before, "after": after}
    (Path(out) / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {out} ({report['mode']}; {log['trainable_params']:,} trainable parameters, "
              f"loss {log['loss'][0]:.3f} -> {log['loss'][-1]:.3f})")
        for label, key in (("ASR", "asr"), ("over-refusal", "over_refusal"), ("degenerate", "degenerate_rate")):
            print(f"{label:<14} before {_pct(before[key])}  after {_pct(after[key])}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    import time

    from backend.engine import load_model
    from backend.recipes.align import AlignConfig, align, evaluate_alignment, report_path, targets
    from backend.engine.delta import DARE_BITS
    from backend.recipes.finetune import save_model

    if (args.delta_bits != 16 or args.delta_keep is not None) and not args.delta:
        raise ValueError("--delta-bits and --delta-keep are for --delta (the delta file they set the form of)")
    if args.delta_bits == 1 and args.delta_keep is not None:
        raise ValueError("give --delta-bits 1 or --delta-keep, not both")
    if args.delta_bits in DARE_BITS and args.delta_keep is None:
        raise ValueError(f"--delta-bits {args.delta_bits} stores the values of a DARE delta: give --delta-keep SHARE too")
    if args.delta_keep is not None and not 0 < args.delta_keep < 1:
        raise ValueError(f"--delta-keep must be above 0 and below 1, got {args.delta_keep:g}")
    if args.teacher:
        from backend.engine.models import resolve

        resolve(args.teacher)  # a wrong --teacher is named before any evaluation or training
    config = AlignConfig(mode=args.mode, steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         held_out=args.held_out, h_ru=args.h_ru, rank=args.rank,
                         benign_share=args.benign_share, strength=args.strength, teacher=args.teacher,
                         benign_distil=args.benign_distil, anchor=args.anchor, limit=args.train_limit)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").exists())):
        raise ValueError(f"--out {out} exists and is not a model folder; give a new folder")
    progress = None if args.quiet else _progress_bar()
    timings = {}
    try:
        t0 = time.perf_counter()
        loaded = load_model(args.model, device=args.device, dtype="float32")  # AdamW steps vanish in bf16
        base_folder = loaded.folder
        base_eval = None
        if not args.no_eval:
            base_eval = evaluate_alignment(loaded, args.held_out, limit=args.limit,
                                           max_new_tokens=args.max_new_tokens, progress=progress, cache=True)
        timings["base evaluation"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        log = align(loaded, config, progress=progress)
        timings["alignment (data, attribution, training)"] = round(time.perf_counter() - t0, 1)
        save_model(loaded, out)
        delta = None
        if args.delta:
            loaded, meta = _rebuild_from_delta(base_folder, out, Path(args.delta), args.device, args.delta_bits,
                                               args.delta_keep, args.seed)
            delta = {"path": args.delta, "bits": args.delta_bits, "keep": args.delta_keep,
                     "bytes": Path(args.delta).stat().st_size,
                     "approximation_error": float(meta.get("approximation_error", 0))}
        aligned_eval = None
        if not args.no_eval:
            t0 = time.perf_counter()
            aligned_eval = evaluate_alignment(loaded, args.held_out, limit=args.limit,
                                              max_new_tokens=args.max_new_tokens, progress=progress)
            timings["aligned evaluation"] = round(time.perf_counter() - t0, 1)
    finally:
        if progress:
            progress.close()
    report = {"model": args.model, "out": str(out), "delta": delta, **log, "timings": timings,
              "base": base_eval, "aligned": aligned_eval,
              "targets": targets(aligned_eval, base_eval, args.held_out) if aligned_eval else None}
    report_path(out).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"wrote {out} ({args.mode}; {log['training']['trainable_params']:,} trainable parameters, loss "
          f"{log['training']['loss'][0]:.3f} -> {log['training']['loss'][-1]:.3f}; {log['seconds']:.0f} s)")
    if delta:
        from backend.engine.delta import describe_form

        form = describe_form(delta["bits"], delta["keep"]) or "the change as 16-bit values"
        print(f"wrote {delta['path']} ({delta['bytes'] / 1e6:.1f} MB, {form}"
              + (f"; relative error of the approximated change {delta['approximation_error']:.3f})"
                 if delta["approximation_error"] else ")") + "; the figures below are of base + this delta")
    if aligned_eval:
        print(f"{'set':<16} {'measure':<14} {'base':>7} {'aligned':>8}")
        for name, row in aligned_eval["sets"].items():
            key = "asr" if row["kind"] == "harmful" else "refusal_rate"
            print(f"{name:<16} {key:<14} {_pct(base_eval['sets'][name][key]):>7} {_pct(row[key]):>8}")
        print(f"{'facts':<16} {'accuracy':<14} {_pct(base_eval['facts_accuracy']):>7} "
              f"{_pct(aligned_eval['facts_accuracy']):>8}")
        for name, target in report["targets"].items():
            print(f"{'met ' if target['met'] else 'MISSED'} {name}")
    return 0


def _rebuild_from_delta(base: Path, out: Path, delta: Path, device: str, bits: int = 16, keep: float | None = None,
                        seed: int = 0):
    """Write the delta of `out` against `base`, rebuild `out` from base + delta, and load that model (with the
    delta's metadata)."""
    import shutil
    import tempfile

    from safetensors.torch import load_file

    from backend.engine import load_model
    from backend.engine.delta import derive_folder, make_delta, save_delta

    tensors, meta = make_delta(load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors")),
                               base_name=base.name, bits=bits, keep=keep, seed=seed)
    save_delta(delta, tensors, meta)
    rebuilt = Path(tempfile.mkdtemp(prefix=".rebuilt-", dir=out.parent)) / "model"
    derive_folder(base, delta, rebuilt)
    shutil.copy2(rebuilt / "model.safetensors", out / "model.safetensors")
    shutil.rmtree(rebuilt.parent, ignore_errors=True)
    return load_model(str(out), device=device, dtype="float32"), meta


def cmd_reproduce(args: argparse.Namespace) -> int:
    from backend.recipes.reproduce import ReproConfig, Steps, budget_section, freeze_table, markdown, pruning_table, \
        transfer_section

    config = ReproConfig(aligned=args.aligned, samples=args.samples, harmful_limit=args.harmful_limit,
                         benign_limit=args.benign_limit, max_new_tokens=args.max_new_tokens,
                         finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr)
    # read first: a bad report is named before the work folder is made
    budget = budget_section({"full": args.full_report, "budget": args.budget_report, "lowrank": args.lowrank_report})
    from dataclasses import asdict

    from backend.engine.models import content_hash, resolve
    from backend.engine import atomic

    progress = None if args.quiet else _progress_bar()
    from backend.recipes.align import EVALUATION_CACHE_VERSION

    identity = {"model": content_hash(resolve(config.aligned)), "settings": asdict(config),
                "evaluation": EVALUATION_CACHE_VERSION}  # a judge or knowledge set changed since: measure again
    steps = Steps(args.work, progress, identity)
    command = "ssah " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("ssah") else "ssah reproduce"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    def write(sections: dict) -> None:  # after every section, so a long run shows what it has so far
        text = markdown(sections, config, command, steps.timings)
        old = args.out.read_text() if args.out.is_file() else ""  # read now: it may be edited during a long run
        discussion = old[old.index("\n## Discussion") + 1:] if "\n## Discussion" in old else ""
        atomic.write_text(args.out, text.rstrip("\n") + ("\n\n" + discussion if discussion else "\n"))

    sections: dict = {"budget": budget}
    try:
        for name, compute in (("pruning", pruning_table), ("freezing", freeze_table),
                              ("transfer", transfer_section)):
            sections[name] = compute(steps, config)
            write(sections)
    finally:
        if progress:
            progress.close()
    write(sections)
    print(f"wrote {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from backend.engine.attribution import load_run
    from backend.recipes.transfer import compare

    transfer = compare(load_run(args.run_a).units, load_run(args.run_b).units)
    if args.json:
        print(json.dumps(transfer.to_dict(), indent=2))
        return 0
    print(f"roles of {args.run_a} (rows) -> {args.run_b} (columns), units:")
    print(transfer.transitions_units.to_string())
    print("\nparameters:")
    print(transfer.transitions_params.to_string())
    print(f"\nSCU Jaccard overlap: {transfer.scu_jaccard:.3f} (by parameters {transfer.scu_jaccard_params:.3f})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from backend.engine import models

    if args.action == "list":
        for m in models.list_builtin():
            print(f"{m['name']:<26} {m['description']}  [{m['package']}]")
        return 0
    if args.name not in models.BUILTIN_MODELS:
        raise models.ModelError(f"unknown built-in model {args.name!r}; built-in models: "
                                f"{', '.join(models.BUILTIN_MODELS)}")
    print(models.resolve(args.name))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from backend.engine.data import list_datasets

    for d in list_datasets():
        print(f"{d.name:<22} {d.size:>5}  {d.description}  [{d.source}]")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from backend.api.app import create_app
    from backend.settings import Settings

    settings = Settings(**{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    print(f"ssah: serving {url}  (API {url}/api/v1, docs {url}/docs; default model {settings.default_model}; "
          f"database {settings.database_url}; runs in {settings.runs_dir})", flush=True)
    if not settings.loopback:
        print("ssah: not a loopback address, so every request needs a token: ssah tokens create --name NAME",
              flush=True)
    from app import mounts_for

    app = create_app(settings, mounts=mounts_for(settings.host, settings.port))  # the dashboard at /
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from backend.settings import Settings
    from backend.store import tokens
    from backend.store.db import make_engine, session_factory
    from backend.store.tables import utcnow

    sessions = session_factory(make_engine(Settings().database_url))
    with sessions.begin() as session:
        if args.action == "create":
            expires = utcnow() + timedelta(days=args.expires_in_days) if args.expires_in_days else None
            token, plain = tokens.create_token(session, args.name, scope="write", expires_at=expires)
            print(plain)
            print(f"token {token.id} ({args.name}): shown once, stored hashed; send it as "
                  "'Authorization: Bearer <token>'", file=sys.stderr)
        elif args.action == "list":
            for t in tokens.list_tokens(session):
                state = "revoked" if t.revoked else ("expired" if t.expires_at and t.expires_at <= utcnow()
                                                     else "active")
                scope = f"read run {t.run_id}" if t.run_id else t.scope
                expires = t.expires_at.isoformat(timespec="seconds") if t.expires_at else "never"
                print(f"{t.id}  {state:<8} {scope:<42} expires {expires:<25} {t.name}")
        else:
            count = tokens.revoke(session, args.token)
            if not count:
                raise ValueError(f"no active token with id or name {args.token!r}")
            print(f"revoked {count} token(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from backend.engine.data import DataError
    from backend.engine.models import ModelError

    handlers = {"attribute": cmd_attribute, "evaluate": cmd_evaluate, "finetune": cmd_finetune, "align": cmd_align,
                "reproduce": cmd_reproduce,
                "compare": cmd_compare, "models": cmd_models, "data": cmd_data, "serve": cmd_serve,
                "tokens": cmd_tokens}
    try:
        return handlers[args.command](args)
    except (DataError, ModelError, ValueError) as e:
        print(f"ssah {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
