"""`ssah judge`: verdicts and reasons for your own generations (a .jsonl of prompt, reply and optional kind)."""
from __future__ import annotations

import argparse
import json

from .common import PARENTS, progress_bar


def register(sub) -> None:
    p = sub.add_parser("judge", help="judge your own (prompt, reply) rows: refused, complied, off-topic or "
                                     "degenerate, each with a reason", parents=[PARENTS.output])
    p.add_argument("--in", dest="input", required=True, metavar="FILE.jsonl",
                   help="rows with prompt, reply and optionally kind (harmful or benign)")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="the same rows with verdict and reason added")
    p.add_argument("--judge", default=None, metavar="v2|keyword|hf:PATH",
                   help="v2 (default): refusals, relevance and degenerate text; keyword: the research judge (31 "
                        "keywords, 20-word minimum); hf:PATH: a local guard or classifier model folder")
    p.set_defaults(handler=cmd_judge)


def cmd_judge(args: argparse.Namespace) -> int:
    from backend.engine.stats import Rate
    from backend.verbs import JudgeRequest, judge

    with progress_bar(args.quiet) as progress:
        report = judge(JudgeRequest(args.input, args.out, args.judge), progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"wrote {report.output}: {report.rows} rows judged by {report.judge['judge']}")
    for kind, counts in report.verdicts.items():
        print(f"  {kind:<8} " + "  ".join(f"{v} {n}" for v, n in counts.items()))
    for name, rate in report.rates.items():
        label = {"asr": "ASR (complied, harmful)", "over_refusal": "over-refusal (refused, benign)"}[name]
        print(f"  {label}: {Rate(rate['k'], rate['n'])}")
    return 0
