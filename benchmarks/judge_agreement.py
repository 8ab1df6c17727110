"""How often each judge agrees with the hand labels of tests/data/judge (the two fresh sets, labelled after v2 was
frozen, from models it never saw; the test half, never tuned on; the development half for reference), with
confusion matrices, written into docs/judge.md.

    python benchmarks/judge_agreement.py --write docs/judge.md     # every half, judges v2 and keyword
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend.engine.evaluation import make_judge  # noqa: E402
from backend.engine.judge import VERDICTS  # noqa: E402
from backend.engine.stats import Rate  # noqa: E402

LABELS = ROOT / "tests" / "data" / "judge"


def read(half: str) -> list[dict]:
    return [json.loads(line) for line in (LABELS / f"{half}.jsonl").read_text().splitlines() if line.strip()]


def agreement(rows: list[dict], spec: str) -> dict:
    judge = make_judge(spec)
    judge.judge([rows[0]["prompt"]], [rows[0]["reply"]], [rows[0]["kind"]])  # loads its encoder, if any, untimed
    t0 = time.perf_counter()
    verdicts = judge.judge([r["prompt"] for r in rows], [r["reply"] for r in rows], [r["kind"] for r in rows])
    seconds = time.perf_counter() - t0
    confusion = {label: dict.fromkeys(VERDICTS, 0) for label in VERDICTS}
    for row, verdict in zip(rows, verdicts):
        confusion[row["label"]][verdict.verdict] += 1
    agree = sum(confusion[v][v] for v in VERDICTS)
    by_condition: dict[str, list[int]] = {}
    for row, verdict in zip(rows, verdicts):
        hits = by_condition.setdefault(row["condition"], [0, 0])
        hits[0] += row["label"] == verdict.verdict
        hits[1] += 1
    return {"judge": spec, "agree": Rate(agree, len(rows)), "confusion": confusion, "seconds": seconds,
            "by_condition": {c: Rate(*h) for c, h in sorted(by_condition.items())},
            "misses": [(r, v) for r, v in zip(rows, verdicts) if r["label"] != v.verdict]}


HEADING = "## Agreement with the hand labels"


def markdown(results: dict[str, list[dict]], command: str) -> str:
    out = [HEADING, "", f"Command: `{command}`. Rows are the hand labels, columns the judge's verdicts; intervals "
           "are Wilson 95%.", ""]
    for half, per_judge in results.items():
        name = {"fresh": "fresh set", "fresh2": "second fresh set"}.get(half, f"{half} half")
        out.append(f"### {name} ({per_judge[0]['agree'].n} replies)")
        out.append("")
        for r in per_judge:
            out.append(f"**{r['judge']}**: agrees on {r['agree']}; {r['seconds']:.1f} s for the whole half.")
            out.append("")
            out.append("| hand label \\ verdict | " + " | ".join(VERDICTS) + " |")
            out.append("|---|" + "---:|" * len(VERDICTS))
            for label in VERDICTS:
                out.append(f"| {label} | " + " | ".join(str(r["confusion"][label][v]) for v in VERDICTS) + " |")
            out.append("")
            out.append("By condition: " + "; ".join(f"{c} {rate}" for c, rate in r["by_condition"].items()) + ".")
            out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judges", default="v2,keyword")
    parser.add_argument("--halves", default="fresh2,fresh,test,dev")
    parser.add_argument("--misses", action="store_true", help="print every disagreement")
    parser.add_argument("--write", type=Path, default=None, help="replace this section of that markdown file")
    args = parser.parse_args()
    results = {}
    for half in args.halves.split(","):
        rows = read(half)
        results[half] = [agreement(rows, spec) for spec in args.judges.split(",")]
        for r in results[half]:
            print(f"{half}: {r['judge']}: {r['agree']}")
            if args.misses:
                for row, verdict in r["misses"]:
                    print(f"  [{row['id']}] {row['kind']} label={row['label']} got={verdict.verdict} "
                          f"({verdict.reason})\n    P: {row['prompt'][:100]}\n    R: {row['reply'][:200]!r}")
    text = markdown(results, "python benchmarks/judge_agreement.py --write docs/judge.md")
    print(text)
    if args.write:
        from attribution import replace_section

        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
