"""`ssah reproduce`: the paper's experiments on an aligned model, written as markdown (docs/results.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import PARENTS, positive, progress_bar


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="the paper's experiments on an aligned model, written as markdown "
                                         "(docs/results.md); steps are cached in --work and resume",
                       parents=[PARENTS.quiet])
    p.add_argument("--aligned", default="smollm2-135m-safe", help="the aligned model the tables are about")
    p.add_argument("--full-report", type=Path, help="alignment.json of `ssah align --mode full`")
    p.add_argument("--budget-report", type=Path, help="alignment.json of `ssah align --mode budget`")
    p.add_argument("--lowrank-report", type=Path, help="alignment.json of `ssah align --mode lowrank`")
    p.add_argument("--work", type=Path, required=True, help="folder for runs, models and cached step results")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    p.add_argument("--samples", type=positive("--samples", 100_000), default=128)
    p.add_argument("--harmful-limit", type=positive("--harmful-limit", 10_000), default=100)
    p.add_argument("--benign-limit", type=positive("--benign-limit", 10_000), default=80)
    p.add_argument("--max-new-tokens", type=positive("--max-new-tokens", 4096), default=48)
    p.add_argument("--finetune-steps", type=positive("--finetune-steps", 100_000), default=100)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--control-seeds", type=positive("--control-seeds", 100), default=5,
                   help="random controls of SCU's mass in Table 1 (a band over this many seeds)")
    p.add_argument("--max-matched-steps", type=positive("--max-matched-steps", 100_000), default=1000,
                   help="Table 2: a frozen fine-tune trains until its loss reaches the full one's, at most this long")
    p.set_defaults(handler=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from backend.recipes.reproduce import ReproConfig, reproduce

    config = ReproConfig(aligned=args.aligned, samples=args.samples, harmful_limit=args.harmful_limit,
                         benign_limit=args.benign_limit, max_new_tokens=args.max_new_tokens,
                         finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
                         control_seeds=args.control_seeds, max_matched_steps=args.max_matched_steps)
    command = "ssah " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("ssah") else "ssah reproduce"
    reports = {"full": args.full_report, "budget": args.budget_report, "lowrank": args.lowrank_report}
    with progress_bar(args.quiet) as progress:
        out = reproduce(config, args.work, args.out, reports, command, progress)
    print(f"wrote {out}")
    return 0
