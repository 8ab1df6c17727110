"""`ssah attribute`: score and classify every unit of a model; `ssah compare`: role transfer between two runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.constants import POSITIONS, RESPONSES, ROLES

from .common import PARENTS, fraction, positive, progress_bar


def register(sub) -> None:
    p = sub.add_parser("attribute", help="score and classify every unit of a model",
                       parents=[PARENTS.run_on, PARENTS.seed, PARENTS.quiet])
    p.add_argument("--model", required=True, help="built-in name, local HF folder, .gguf file or cached hub id")
    p.add_argument("--safety", required=True, help="built-in set name or .jsonl/.csv/.parquet file")
    p.add_argument("--utility", required=True, help="built-in set name or .jsonl/.csv/.parquet file")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--samples", type=positive("--samples", 1_000_000), default=128,
                   help="pairs drawn from each set (seeded); default 128")
    p.add_argument("--max-length", type=positive("--max-length", 1_000_000), default=None,
                   help="longest pair in tokens; longer rows are refused, not cut (default: model context)")
    p.add_argument("--batch-size", type=positive("--batch-size", 4096), default=8)
    p.add_argument("--positions", default="response", choices=POSITIONS,
                   help="which tokens count: the response (default), the prompt, or all")
    p.add_argument("--responses", default="given", choices=RESPONSES,
                   help="score the sets' responses (given) or the model's own greedy replies (self)")
    p.add_argument("--self-max-new-tokens", type=positive("--self-max-new-tokens", 4096), default=64,
                   help="length of the model's own replies with --responses self")
    p.add_argument("--h-ru", type=fraction("--h-ru"), default=0.10)
    p.add_argument("--h-scu", type=fraction("--h-scu"), default=0.01)
    p.add_argument("--h-ucu", type=fraction("--h-ucu"), default=0.05)
    p.set_defaults(handler=cmd_attribute)

    c = sub.add_parser("compare", help="role transfer between two runs of one architecture",
                       parents=[PARENTS.output])
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.set_defaults(handler=cmd_compare)


def cmd_attribute(args: argparse.Namespace) -> int:
    from backend.engine.roles import Thresholds
    from backend.verbs import AttributeRequest, attribute

    request = AttributeRequest(model=args.model, safety=args.safety, utility=args.utility, samples=args.samples,
                               max_length=args.max_length, batch_size=args.batch_size, device=args.device,
                               dtype=args.dtype, seed=args.seed, positions=args.positions, responses=args.responses,
                               self_max_new_tokens=args.self_max_new_tokens,
                               thresholds=Thresholds(h_ru=args.h_ru, h_scu=args.h_scu, h_ucu=args.h_ucu))
    with progress_bar(args.quiet) as progress:
        result = attribute(request, args.out, progress=progress)
    roles = result.manifest["roles"]
    shares = result.units.groupby("role").params.sum() / int(result.units.params.sum())
    print(f"wrote {Path(args.out) / 'units.parquet'}: {len(result.units)} units; "
          + ", ".join(f"{r} {roles[r]} ({shares.get(r, 0):.1%} of params)" for r in ROLES))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from backend.verbs import compare

    transfer = compare(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(transfer.to_dict(), indent=2))
        return 0
    print(f"roles of {args.run_a} (rows) -> {args.run_b} (columns), units:")
    print(transfer.transitions_units.to_string())
    print("\nparameters:")
    print(transfer.transitions_params.to_string())
    print(f"\nSCU Jaccard overlap: {transfer.scu_jaccard:.3f} (by parameters {transfer.scu_jaccard_params:.3f})")
    return 0
