"""Attribution speed and memory, as ratios taken in one run. Writes a section of docs/benchmarks.md.

    python benchmarks/attribution.py [--samples 128] [--batch-size 8] [--repeats 3] [--write docs/benchmarks.md]

1. ours / a bare batched no-grad forward of the full model over the same tokens and batches (target <= 1.15);
2. the reference way (one sample at a time, full forward, hooks that keep each sample's activations, as the
   research code does) / ours;
3. memory beyond the model for few vs many tokens (peak RSS of child processes);
4. writing units.parquet for a Llama-3-8B-sized synthetic run (459,776 units).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine import attribute, load_model  # noqa: E402
from backend.engine.attribution import write_units  # noqa: E402
from backend.engine.chat import count_mask
from backend.engine.data import load_pairs  # noqa: E402
from backend.engine.scoring import batches, encode_sets, pad_batch  # noqa: E402

MODEL = "smollm2-135m-instruct"


@torch.no_grad()
def bare_forward(loaded, encoded, batch_size: int) -> None:
    """The full model (with logits), no hooks, same batches and padding as attribution."""
    pad = loaded.tokenizer.pad_token_id or 0
    for split in encoded.values():
        for idx in batches(split, batch_size):
            rows = [split[i].input_ids for i in idx]
            ids, attention, pos, _ = pad_batch(rows, [[True] * len(r) for r in rows], pad, "right", loaded.device)
            loaded.model(input_ids=ids, attention_mask=attention, position_ids=pos, use_cache=False)


@torch.no_grad()
def reference_way(loaded, encoded) -> dict:
    """One sample at a time, full forward, activations kept per sample and reduced at the end."""
    modules = dict(loaded.model.named_modules())
    out = {}
    for name, split in encoded.items():
        kept: dict[str, list[torch.Tensor]] = {b.key: [] for b in loaded.units.blocks}
        current: dict = {}

        def hook_for(key):
            def hook(_m, args):
                kept[key].append(args[0][0][current["mask"]].double())
            return hook

        handles = [modules[b.b_module].register_forward_pre_hook(hook_for(b.key)) for b in loaded.units.blocks]
        try:
            for e in split:
                current["mask"] = torch.tensor(count_mask(e, "response"))
                loaded.model(input_ids=torch.tensor([e.input_ids]), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        out[name] = {k: torch.cat(v).var(0) for k, v in kept.items()}
    return out


def best_of(repeats: int, fn, *args, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_rss_child(samples: int, batch_size: int) -> dict:
    """Run attribution in a fresh process; report RSS after loading and peak RSS (MiB)."""
    code = f"""
import json, resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from backend.engine import attribute, load_model
from backend.engine.data import load_pairs
loaded = load_model({MODEL!r}, device="cpu", dtype="float32")
s, u = load_pairs("advbench-refusals", samples={samples}), load_pairs("benign-answers", samples={samples})
import torch; torch.manual_seed(0)
after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = attribute(loaded, s, u, batch_size={batch_size})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"after_load": after_load / 1024, "peak": peak / 1024,
                  "tokens": sum(d["tokens_counted"] for d in r.manifest["datasets"].values())}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_8b_units() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    layers, channels, heads = 32, 14336, 32
    rows = []
    for layer in range(layers):
        rows.append(pd.DataFrame({"layer": layer, "module": "attn", "unit": np.arange(heads), "params": 4096 * 128 * 2 + 4096 * 128 * 2 // 4}))
        rows.append(pd.DataFrame({"layer": layer, "module": "mlp", "unit": np.arange(channels), "params": 3 * 4096}))
    units = pd.concat(rows, ignore_index=True)
    for col in ("score_safety", "score_utility", "z_safety", "z_utility"):
        units[col] = rng.standard_normal(len(units))
    units["role"] = rng.choice(["SCU", "UCU", "CU", "RU"], len(units))
    return units


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None, help="replace the attribution section of this file")
    args = parser.parse_args()
    torch.manual_seed(0)

    loaded = load_model(MODEL, device="cpu", dtype="float32")
    safety = load_pairs("advbench-refusals", samples=args.samples)
    utility = load_pairs("benign-answers", samples=args.samples)
    encoded = encode_sets(loaded, {"safety": safety.pairs, "utility": utility.pairs}, None)
    tokens = sum(len(e.input_ids) for split in encoded.values() for e in split)

    bare_forward(loaded, encoded, args.batch_size)  # warm-up
    ours_t, bare_t = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        bare_t.append(best_of(1, bare_forward, loaded, encoded, args.batch_size))
        ours_t.append(best_of(1, attribute, loaded, safety, utility, batch_size=args.batch_size))
    ours, bare = min(ours_t), min(bare_t)
    reference = best_of(1, reference_way, loaded, encoded)

    print(f"bare {bare:.2f} s, ours {ours:.2f} s ({ours / bare:.2f}), reference {reference:.2f} s", flush=True)
    few = peak_rss_child(max(8, args.samples // 8), args.batch_size)
    many = peak_rss_child(args.samples, args.batch_size)
    state_mib = sum(b.channels for b in loaded.units.blocks) * 2 * 2 * 8 / 2**20  # 2 sets x (sum, sum_sq) float64

    units = synthetic_8b_units()
    with tempfile.TemporaryDirectory() as tmp:
        write_s = best_of(3, write_units, units, Path(tmp) / "units.parquet")

    cmd = f"python benchmarks/attribution.py --samples {args.samples} --batch-size {args.batch_size} --repeats {args.repeats}"
    lines = [
        "## Attribution (issue: engine)",
        "",
        f"Command: `{cmd}` on {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"CPU, float32. Model `{MODEL}` ({loaded.units.n_units} units); {args.samples} safety + {args.samples} "
        f"utility pairs ({tokens} tokens), batch size {args.batch_size}. Times are the best of {args.repeats}, "
        "measured interleaved in one process.",
        "",
        "| measure | seconds | ratio |",
        "|---|---|---|",
        f"| bare batched no-grad forward (full model, logits) | {bare:.2f} | 1.00 |",
        f"| `attribute` (both sets: forward with hooks, scoring, roles) | {ours:.2f} | **{ours / bare:.2f}** of bare (target <= 1.15) |",
        f"| reference way: one sample at a time, activations kept | {reference:.2f} | ours is **{reference / ours:.1f}x** faster |",
        "",
        "Attribution runs the decoder stack without the LM head (no logits are needed), which is why it can come in "
        "under the bare forward of the full model.",
        "",
        "Memory beyond the model (fresh process each; peak RSS minus RSS after loading):",
        "",
        "| pairs per set | tokens | extra MiB |",
        "|---|---|---|",
        f"| {max(8, args.samples // 8)} | {few['tokens']} counted | {few['peak'] - few['after_load']:.0f} |",
        f"| {args.samples} | {many['tokens']} counted | {many['peak'] - many['after_load']:.0f} |",
        "",
        f"The statistics themselves are {state_mib:.2f} MiB (float64 sums and sums of squares per channel and set): "
        "they grow with the number of units, not with tokens; the rest is one batch's activations.",
        "",
        f"Writing `units.parquet` for a Llama-3-8B-sized synthetic run ({len(units):,} units): **{write_s:.2f} s** "
        "(target < 1 s).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(args.write, "## Attribution (issue: engine)", text)


def replace_section(path: Path, heading: str, text: str) -> None:
    """Replace one `## ` section of a markdown file (or append it), keeping the others."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\nEach section names the command that produced it.\n\n"
    start = old.find(heading)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text.rstrip("\n") + ("\n\n" + old[end + 1:] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
