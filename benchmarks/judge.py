"""What judging adds to a preview: generating the replies vs judging them with v2 (encoder loaded or not yet) and
with the keyword judge, on the built-in model, measured in one run. Writes a section of docs/benchmarks.md.

    python benchmarks/judge.py --prompts 16 --new-tokens 48
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attribution import replace_section  # noqa: E402

from backend.engine import load_model  # noqa: E402
from backend.engine.data import prompt_sets  # noqa: E402
from backend.engine.evaluation import generate, make_judge  # noqa: E402
from backend.engine.judge import V2Judge  # noqa: E402
from backend.engine.relevance import Encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-safe")
    parser.add_argument("--prompts", type=int, default=16, help="of each kind (harmful, benign)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu", dtype="float32")
    harmful = prompt_sets(["advbench-eval"], args.prompts)["advbench-eval"]
    benign = prompt_sets(["benign-prompts"], args.prompts)["benign-prompts"]
    prompts, kinds = harmful + benign, ["harmful"] * len(harmful) + ["benign"] * len(benign)

    t0 = time.perf_counter()
    replies = generate(loaded, prompts, max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    t_generate = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder = Encoder()
    t_load = time.perf_counter() - t0
    v2 = V2Judge(encoder=encoder)
    t0 = time.perf_counter()
    v2.judge(prompts, replies, kinds)
    t_v2 = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_judge("keyword").judge(prompts, replies, kinds)
    t_keyword = time.perf_counter() - t0

    n = len(prompts)
    lines = [
        "## Judging (issue: measurement)",
        "",
        f"Command: `python benchmarks/judge.py --prompts {args.prompts} --new-tokens {args.new_tokens}` on "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU, float32; "
        f"model `{args.model}`, {n} prompts ({args.prompts} AdvBench #1-{args.prompts} + {args.prompts} "
        f"benign-prompts), greedy, batch {args.batch_size}; measured once each, in one process.",
        "",
        "| step | seconds | share of generating |",
        "|---|---:|---:|",
        f"| generating {n} replies ({args.new_tokens} new tokens) | {t_generate:.2f} | 1.00 |",
        f"| judge v2 ({n} replies; sentence encoder already loaded, as in a worker after its first job) | "
        f"{t_v2:.2f} | **{t_v2 / t_generate:.3f}** (target <= 0.15) |",
        f"| loading the sentence encoder (once per worker process) | {t_load:.2f} | {t_load / t_generate:.3f} |",
        f"| keyword judge ({n} replies) | {t_keyword:.4f} | {t_keyword / t_generate:.4f} |",
        "",
        "A preview judges baseline and pruned replies: twice the judging and twice the generating, so the share "
        "is the same.",
    ]
    text = "\n".join(lines)
    print(text)
    replace_section(args.out, "## Judging (issue: measurement)", text)


if __name__ == "__main__":
    main()
