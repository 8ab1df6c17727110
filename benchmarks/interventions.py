"""Intervention and evaluation speed, as ratios taken in one run. Writes a section of docs/benchmarks.md.

    python benchmarks/interventions.py [--run runs/demo] [--prompts 100] [--gen-prompts 32] [--new-tokens 32]

1. first-token refusal for N prompts / one batched forward of the full model over the same prompts (target <= 1.2);
2. greedy generation with SCU pruned by hooks / plain batched generation of the same prompts (target <= 1.3).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attribution import replace_section  # noqa: E402

from backend.engine import load_model  # noqa: E402
from backend.engine.attribution import load_run  # noqa: E402
from backend.engine.chat import encode_pairs
from backend.engine.data import Pair, load_pairs  # noqa: E402
from backend.engine.evaluation import _pad_id, first_token_refusal, generate  # noqa: E402
from backend.engine.interventions import prune, select  # noqa: E402
from backend.engine.scoring import batches, pad_batch  # noqa: E402
from backend.verbs import AttributeRequest, attribute  # noqa: E402

MODEL = "smollm2-135m-instruct"
HEADING = "## Interventions and evaluation (issue: interventions)"


@torch.no_grad()
def plain_forward(loaded, prompts, batch_size):
    encoded = encode_pairs(loaded.tokenizer, [Pair(p, "") for p in prompts])
    for idx in batches(encoded, batch_size):
        rows = [encoded[i].input_ids for i in idx]
        ids, attention, pos, _ = pad_batch(rows, [[True] * len(r) for r in rows], _pad_id(loaded.tokenizer),
                                           "left", loaded.device)
        loaded.model(input_ids=ids, attention_mask=attention, position_ids=pos, use_cache=False)


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=None, help="a run of the built-in model (made if absent)")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--gen-prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()

    loaded = load_model(MODEL, device="cpu", dtype="float32")
    if args.run and (args.run / "units.parquet").exists():
        run = load_run(args.run)
        units, means = run.units, run.means
    else:
        made = attribute(AttributeRequest(MODEL, samples=32), args.run)
        units, means = made.units, made.means
    prompts = [p.prompt for p in load_pairs("advbench-eval").pairs[:args.prompts]]
    gen_prompts = prompts[:args.gen_prompts]
    scu = select(units, ["SCU"])

    plain_forward(loaded, prompts[:8], args.batch_size)  # warm-up
    ft, fwd, hooked, plain = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both sides alike
        fwd.append(timed(plain_forward, loaded, prompts, args.batch_size))
        ft.append(timed(first_token_refusal, loaded, prompts, batch_size=args.batch_size))
        plain.append(timed(generate, loaded, gen_prompts, max_new_tokens=args.new_tokens, batch_size=args.batch_size))
        with prune(loaded, scu, means):
            hooked.append(timed(generate, loaded, gen_prompts, max_new_tokens=args.new_tokens,
                                batch_size=args.batch_size))
    ft_s, fwd_s, hooked_s, plain_s = min(ft), min(fwd), min(hooked), min(plain)

    cmd = (f"python benchmarks/interventions.py --prompts {args.prompts} --gen-prompts {args.gen_prompts} "
           f"--new-tokens {args.new_tokens} --batch-size {args.batch_size} --repeats {args.repeats}")
    text = "\n".join([
        HEADING,
        "",
        f"Command: `{cmd}` on {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"CPU, float32, model `{MODEL}`; best of {args.repeats}, measured interleaved in one process.",
        "",
        "| measure | seconds | ratio |",
        "|---|---|---|",
        f"| one batched forward of the full model over {args.prompts} AdvBench prompts | {fwd_s:.2f} | 1.00 |",
        f"| `first_token_refusal` over the same prompts | {ft_s:.2f} | **{ft_s / fwd_s:.2f}** (target <= 1.2) |",
        f"| plain batched greedy `generate`, {args.gen_prompts} prompts x {args.new_tokens} new tokens | {plain_s:.2f} | 1.00 |",
        f"| the same with SCU ({len(scu)} units) pruned by hooks | {hooked_s:.2f} | **{hooked_s / plain_s:.2f}** (target <= 1.3) |",
        "",
        "First-token refusal asks the model for only the last position's logits (`logits_to_keep=1`), which is why it "
        "can be cheaper than a forward that computes every position's logits.",
        "",
    ])
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
