"""`ssah evaluate`: refusal, over-refusal and utility of a model, optionally with a unit group pruned."""
from __future__ import annotations

import argparse
import json

from backend.constants import REFERENCES

from .common import PARENTS, fraction, positive, progress_bar


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="refusal, over-refusal and utility, optionally with a unit group pruned",
                       parents=[PARENTS.preview_prompts, PARENTS.run_on, PARENTS.output])
    p.add_argument("--model", required=True)
    p.add_argument("--run", help="run folder of this model (needed for --prune)")
    p.add_argument("--prune", help="unit groups to prune: SCU, UCU, CU, RU (comma-separated), CU:FRACTION, "
                                   "or random (a seeded control with the parameter mass of SCU, or of the groups "
                                   "named)")
    p.add_argument("--cu-fraction", type=fraction("--cu-fraction"), default=0.0,
                   help="also prune the top fraction of CU (by parameters), ranked by z_safety - z_utility")
    p.add_argument("--reference", choices=REFERENCES, default=None,
                   help="what pruned channels are held at (default: the other attribute's mean: SCU -> utility, "
                        "UCU -> safety, CU/RU -> pooled)")
    p.add_argument("--utility", default=None, help="utility set with reference answers, e.g. gsm8k")
    p.add_argument("--batch-size", type=positive("--batch-size", 4096), default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the random control")
    p.add_argument("--controls", type=int, default=0, metavar="N",
                   help="also prune N random sets of the pruned group's parameter mass, held at the same reference "
                        "(seeds after --seed), and show their rates as a band (5 is a fair control)")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from backend.engine.data import set_names
    from backend.verbs import EvalSets, EvaluateRequest, UnitGroups, evaluate

    if (args.prune or args.cu_fraction) and not args.run:
        raise ValueError("--prune and --cu-fraction need --run (the run folder of this model)")
    prune = None
    if args.prune:
        prune = UnitGroups.parse(args.prune, cu_fraction=args.cu_fraction, seed=args.seed, reference=args.reference)
    elif args.cu_fraction:
        prune = UnitGroups(cu_fraction=args.cu_fraction, seed=args.seed, reference=args.reference)
    sets = EvalSets(harmful=tuple(set_names(args.harmful)), benign=tuple(set_names(args.benign)),
                    utility=args.utility, limit=args.limit, max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size, judge=args.judge)
    if args.controls < 0:
        raise ValueError(f"--controls must be 0 or more, got {args.controls}")
    request = EvaluateRequest(model=args.model, run=args.run, prune=prune, sets=sets, controls=args.controls,
                              device=args.device, dtype=args.dtype)
    with progress_bar(args.quiet) as progress:
        result = evaluate(request, progress=progress).to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_preview(result)
    return 0


def print_preview(result: dict) -> None:
    """Each rate as a count with its 95% interval, the paired change's p-value, then every reply with its verdict
    and the reason for it."""
    from backend.engine.stats import Rate

    columns = [("baseline", result["baseline"])] + ([("pruned", result["pruned"])] if "pruned" in result else [])
    if "selection" in result:
        s = result["selection"]
        print(f"pruned: {s['label']}: {s['units']} units, {s['param_fraction']:.2%} of unit parameters, "
              f"references {s['references']}")
    if "warning" in result:
        print(f"warning: {result['warning']}")
    print(f"judge: {result['judge'].get('judge', '?')}")
    print(f"{'':<28}" + "".join(f"{name:<30}" for name, _ in columns) + ("paired change" if len(columns) > 1 else ""))
    rows = [("ASR (complied, harmful)", "asr"), ("over-refusal (refused, benign)", "over_refusal"),
            ("off-topic replies", "off_topic"), ("degenerate replies", "degenerate")]
    changes = result.get("changes") or {}
    for label, key in rows:
        cells = [str(Rate(m["counts"][key]["k"], m["counts"][key]["n"])) for _, m in columns]
        change = changes.get(key)
        note = f"McNemar p = {change['p_value']:.3g}" if change else ""
        print(f"{label:<28}" + "".join(f"{c:<30}" for c in cells) + note)
    if result.get("controls"):
        c = result["controls"]
        print(f"random control, {len(c['seeds'])} seeds ({c['selection']['param_fraction']:.2%} of unit parameters, "
              f"references {c['selection']['references']}):")
        for label, key in rows:
            b = c["band"][key]
            if b["mean"] is not None:
                print(f"  {label:<26}mean {b['mean']:.0%}, range {b['min']:.0%}-{b['max']:.0%}")
    for label, key in (("utility exact match", "utility_exact_match"), ("utility NLL / token", "utility_nll")):
        values = [m.get(key) for _, m in columns]
        if any(v is not None for v in values):
            print(f"{label:<28}" + "".join(f"{v:<30.3f}" if v is not None else f"{'-':<30}" for v in values))
    print()
    for g in result["generations"]:
        print(f"[{g['set']}] {g['prompt']}")
        for name in ("baseline", "pruned"):
            if name in g:
                side = g[name]
                reply = " ".join(side["reply"].split())
                print(f"  {name:>8} {side['verdict'].upper():<10} {reply[:140]}")
                print(f"  {'':>8} {'':<10} ({side.get('reason', '')})")
