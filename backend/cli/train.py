"""`ssah finetune` (with frozen units, or only a unit group trained) and `ssah align` (safety-align a chat model)."""
from __future__ import annotations

import argparse
import json

from .common import PARENTS, fraction, pct, positive, progress_bar


def register(sub) -> None:
    ft = sub.add_parser("finetune", help="fine-tune with frozen units, or train only a unit group",
                        parents=[PARENTS.check_prompts, PARENTS.device, PARENTS.seed, PARENTS.output])
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
    ft.add_argument("--samples", type=positive("--samples", 1_000_000), default=None, help="pairs drawn from --data")
    ft.add_argument("--out", required=True, help="folder for the fine-tuned model")
    ft.set_defaults(handler=cmd_finetune)

    al = sub.add_parser("align", help="safety-align a chat model on a CPU (full fine-tuning or the alignment "
                                      "budget) and check it on sets never trained on",
                        parents=[PARENTS.device, PARENTS.seed, PARENTS.output])
    al.add_argument("--model", default="smollm2-135m-instruct", help="the unaligned model")
    al.add_argument("--mode", choices=["full", "budget", "lowrank"], default="full",
                    help="full: train every parameter; budget: only the base model's redundant units (RU); "
                         "lowrank: a rank --rank change of every decoder linear map (ships as a small delta)")
    al.add_argument("--rank", type=positive("--rank", 4096), default=None,
                    help="lowrank mode: rank of each change (default 32, 19.7 MB of delta on SmolLM2-135M)")
    al.add_argument("--steps", type=positive("--steps", 100_000), default=150)
    al.add_argument("--lr", type=float, default=None, help="default 5e-5 (full), 2e-4 (budget) or 5e-4 (lowrank)")
    al.add_argument("--batch-size", type=positive("--batch-size", 1024), default=8)
    al.add_argument("--h-ru", type=fraction("--h-ru"), default=0.2,
                    help="budget mode: the trained units' share of unit parameters in the base model (default 0.2)")
    al.add_argument("--budget-score", choices=["utility", "both"], default="utility",
                    help="budget mode: which units are redundant: utility (the paper's: lowest utility importance "
                         "z_U) or both (an alternative: the RU role, lowest z_S + z_U)")
    al.add_argument("--benign-share", type=fraction("--benign-share"), default=0.5,
                    help="share of benign (answered) examples in the training mix")
    al.add_argument("--strength", type=fraction("--strength"), default=1.0,
                    help="share of the learned change kept (base + strength * change; default 1). Below 1 the "
                         "model refuses fewer harmless requests and more harmful ones get through")
    al.add_argument("--teacher", metavar="MODEL",
                    help="distil this model (e.g. a full alignment's --out folder) instead of training on the "
                         "replies' tokens: the loss is the KL divergence from its next-token distributions")
    al.add_argument("--benign-distil", action="store_true",
                    help="benign pairs learn the base model's next-token distributions on its own answers (KL "
                         "divergence), not only the tokens it chose (training takes about 1.3 times as long)")
    al.add_argument("--anchor", type=float, default=0.0, metavar="WEIGHT",
                    help="add WEIGHT x the KL divergence from the base model's next-token distributions on the "
                         "benign answers read as plain text (no chat template) to every step (default 0: off; "
                         "training takes about 1.9 times as long)")
    al.add_argument("--scenarios", action="store_true",
                    help="also train on every prompt (harmful and benign) in a first-person scenario frame (\"I want "
                         "to ... . What should I do?\"); the ood-harmful / ood-benign sets stay unseen")
    al.add_argument("--refusals", choices=["fixed", "own"], default="fixed",
                    help="what harmful requests are answered with: the eight written refusals (fixed), or a refusal "
                         "opener continued by the base model in its own words (own; the model has the decision to "
                         "learn and hardly any new text)")
    al.add_argument("--held-out", choices=["donotanswer", "harmbench"], default="harmbench",
                    help="harmful source left out of training, evaluated as unseen")
    al.add_argument("--train-limit", type=positive("--train-limit", 1_000_000), default=None,
                    help="train on at most N harmful and N benign prompts (quick trials)")
    al.add_argument("--out", required=True, help="folder for the aligned model")
    al.add_argument("--delta", help="also write the change from the base as a small delta file; the model in "
                                    "--out is then rebuilt from base + delta, so the figures are the shipped model's")
    al.add_argument("--delta-bits", type=int, choices=(16, 8, 4, 2, 1), default=16,
                    help="16: the change as it is (float16); 8, 4 or 2: with --delta-keep, the kept values as 8-, "
                         "4- or 2-bit codes with a step per row; 1: a matrix's change as its signs and one "
                         "magnitude per row (lossy; check the figures it prints before shipping one). Formats: "
                         "docs/deltas.md")
    al.add_argument("--delta-keep", type=fraction("--delta-keep"), default=None, metavar="SHARE",
                    help="store a matrix's change as a seeded random SHARE of its entries, rescaled by 1/SHARE "
                         "(DARE; lossy but unbiased; 0.72 with --delta-bits 2 puts a full fine-tune of "
                         "SmolLM2-135M in 25 MB)")
    al.add_argument("--limit", type=positive("--limit", 10_000), default=None,
                    help="evaluate on the first N prompts of each set (default: all)")
    al.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    al.add_argument("--max-new-tokens", type=positive("--max-new-tokens", 4096), default=48)
    al.add_argument("--judge", default=None, metavar="v2|keyword|hf:PATH",
                    help="who reads the evaluation's replies (default v2; keyword: the research judge)")
    al.set_defaults(handler=cmd_align)


def cmd_finetune(args: argparse.Namespace) -> int:
    from backend.engine.data import set_names
    from backend.verbs import EvalSets, FinetuneRequest, UnitGroups, finetune

    if (args.freeze or args.train_only) and not args.run:
        raise ValueError("--freeze and --train-only need --run (the run folder of this model)")
    check = EvalSets(harmful=tuple(set_names(args.harmful)), benign=tuple(set_names(args.benign)), limit=args.limit,
                     max_new_tokens=args.max_new_tokens, judge=args.judge)
    request = FinetuneRequest(
        model=args.model, data=args.data, steps=args.steps, out=args.out, run=args.run,
        freeze=UnitGroups.parse(args.freeze, seed=args.seed) if args.freeze else None,
        train_only=UnitGroups.parse(args.train_only, seed=args.seed) if args.train_only else None,
        lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay, samples=args.samples,
        seed=args.seed, check=check, device=args.device)
    with progress_bar(args.quiet) as progress:
        report = finetune(request, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    log, before, after = report.training, report.before, report.after
    print(f"wrote {report.model} ({report.mode}; {log['trainable_params']:,} trainable parameters, "
          f"loss {log['loss'][0]:.3f} -> {log['loss'][-1]:.3f})")
    for label, key in (("ASR", "asr"), ("over-refusal", "over_refusal"), ("degenerate", "degenerate_rate")):
        print(f"{label:<14} before {pct(before[key])}  after {pct(after[key])}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from backend.recipes.align import AlignConfig
    from backend.verbs import AlignRequest, DeltaForm, align

    if (args.delta_bits != 16 or args.delta_keep is not None) and not args.delta:
        raise ValueError("--delta-bits and --delta-keep are for --delta (the delta file they set the form of)")
    if args.delta_bits == 1 and args.delta_keep is not None:
        raise ValueError("give --delta-bits 1 or --delta-keep, not both")
    if args.delta_bits not in (16, 1) and args.delta_keep is None:
        raise ValueError(f"--delta-bits {args.delta_bits} stores the values of a DARE delta: give --delta-keep SHARE "
                         "too")
    if args.delta_keep is not None and not 0 < args.delta_keep < 1:
        raise ValueError(f"--delta-keep must be above 0 and below 1, got {args.delta_keep:g}")
    config = AlignConfig(mode=args.mode, steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         held_out=args.held_out, h_ru=args.h_ru, budget_score=args.budget_score, rank=args.rank,
                         benign_share=args.benign_share,
                         strength=args.strength, teacher=args.teacher, benign_distil=args.benign_distil,
                         anchor=args.anchor, scenarios=args.scenarios, refusals=args.refusals,
                         limit=args.train_limit)
    delta = DeltaForm(args.delta, bits=args.delta_bits, keep=args.delta_keep) if args.delta else None
    request = AlignRequest(model=args.model, out=args.out, config=config, evaluate=not args.no_eval,
                           eval_limit=args.limit, max_new_tokens=args.max_new_tokens, judge=args.judge, delta=delta,
                           device=args.device)
    with progress_bar(args.quiet) as progress:
        report = align(request, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    training = report.training
    print(f"wrote {report.model} ({args.mode}; {training['trainable_params']:,} trainable parameters, loss "
          f"{training['loss'][0]:.3f} -> {training['loss'][-1]:.3f}; {report.seconds:.0f} s)")
    if report.delta:
        from backend.engine.delta import describe_form

        d = report.delta
        form = describe_form(d["bits"], d["keep"]) or "the change as 16-bit values"
        error = f"; relative error of the approximated change {d['approximation_error']:.3f}" \
            if d["approximation_error"] else ""
        print(f"wrote {d['path']} ({d['bytes'] / 1e6:.1f} MB, {form}{error}); the figures below are of base + "
              "this delta")
    if report.aligned:
        base, aligned = report.base, report.aligned
        print(f"{'set':<16} {'measure':<14} {'base':>7} {'aligned':>8}")
        for name, row in aligned["sets"].items():
            key = "asr" if row["kind"] == "harmful" else "refusal_rate"
            print(f"{name:<16} {key:<14} {pct(base['sets'][name][key]):>7} {pct(row[key]):>8}")
        print(f"{'facts':<16} {'accuracy':<14} {pct(base['facts_accuracy']):>7} {pct(aligned['facts_accuracy']):>8}")
        for name, target in report.targets.items():
            print(f"{'met ' if target['met'] else 'MISSED'} {name}")
    return 0
