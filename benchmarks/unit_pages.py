"""Unit pages: the cost of one unit's resource and of its inspect job, as ratios taken in one run. Prints (and with
--write replaces) a section of docs/benchmarks.md.

    python benchmarks/unit_pages.py [--samples 128] [--batch-size 8] [--repeats 2] [--write docs/benchmarks.md]

1. `GET /runs/{id}/units/{module}/{layer}/{unit}` on a Llama-3-8B-sized synthetic run (459,776 units, means and
   variances of that shape): server time of the numbers part (the app in this process, no network), the first
   request (reads the table, sorts the role index) and then random units at random thresholds (target <= 300 ms);
2. the inspect job's work for one unit (`verbs.inspect` on a warm model: the run's calibration pairs read again,
   top tokens, one forward stopped at the unit's layer, contexts, the cached file written) against one bare
   batched no-grad forward of the full model over the same tokens and batches, on SmolLM2-135M-Instruct with
   128 + 128 pairs (target <= 1.5x), for units in the last layer (the worst case) and in the middle.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attribution import bare_forward, replace_section  # noqa: E402

HEADING = "## Unit pages (issue 22, part A)"
MODEL = "smollm2-135m-instruct"


def numbers_part(requests: int) -> dict:
    """Server time of the unit resource on a 459,776-unit run."""
    from dashboard import register_run, synthetic_units
    from fastapi.testclient import TestClient
    from safetensors.numpy import save_file

    from backend.api.app import create_app
    from backend.settings import Settings

    units = synthetic_units()
    with tempfile.TemporaryDirectory(prefix="ssah-bench-units-") as folder:
        settings = Settings(home=Path(folder) / "home", database_url=f"sqlite:///{folder}/ssah.db",
                            results_dir=Path(folder) / "runs", runner="none", preload_engine=False)
        app = create_app(settings)
        run_id = register_run(settings, units)
        rng = np.random.default_rng(0)
        channels = {f"{split}.{module}.{layer}": rng.standard_normal(14336 if module == "mlp" else 4096)
                    .astype(np.float32) for split in ("safety", "utility") for module in ("mlp", "attn")
                    for layer in range(32)}
        for name in ("means", "variances"):
            save_file(channels, str(settings.runs_dir / run_id / f"{name}.safetensors"))
        with TestClient(app) as client:
            def timed(path: str, **params) -> float:
                t0 = time.perf_counter()
                response = client.get(path, params=params)
                elapsed = time.perf_counter() - t0
                assert response.status_code == 200, response.text
                return elapsed

            first = timed(f"/api/v1/runs/{run_id}/units/mlp/16/7000")
            warm = []
            for _ in range(requests):
                module = "mlp" if rng.random() < 0.8 else "attn"
                unit = int(rng.integers(14336 if module == "mlp" else 32))
                thresholds = {"h_ru": round(float(rng.uniform(0.05, 0.2)), 3),
                              "h_scu": round(float(rng.uniform(0.005, 0.05)), 4), "h_ucu": 0.05}
                warm.append(timed(f"/api/v1/runs/{run_id}/units/{module}/{int(rng.integers(32))}/{unit}",
                                  **thresholds))
            layer = [timed(f"/api/v1/runs/{run_id}/layers/{int(rng.integers(32))}") for _ in range(5)]
    return {"units": len(units), "first": first, "median": statistics.median(warm),
            "p95": float(np.quantile(warm, 0.95)), "max": max(warm), "n": len(warm),
            "layer_median": statistics.median(layer)}


class Warm:
    """`verbs.Models` that hands out an already loaded model, as a worker's model cache does after its first job."""

    def __init__(self, loaded):
        self.loaded = loaded

    def get(self, spec: str, **_):
        return self.loaded


def job_part(samples: int, batch_size: int, repeats: int) -> dict:
    """The inspect job's work for three units against a bare forward over the same tokens."""
    from backend.engine import attribute, load_model
    from backend.engine.data import load_pairs
    from backend.engine.scoring import encode_sets
    from backend.verbs import InspectRequest, inspect

    loaded = load_model(MODEL, device="cpu", dtype="float32")
    safety = load_pairs("advbench-refusals", samples=samples, seed=0)
    utility = load_pairs("benign-answers", samples=samples, seed=0)
    encoded = encode_sets(loaded, {"safety": list(safety.pairs), "utility": list(utility.pairs)}, None)
    tokens = sum(len(e.input_ids) for rows in encoded.values() for e in rows)
    last = loaded.units.blocks[-1].layer
    cases = {"bare": None, f"MLP channel, layer {last} (last)": ("mlp", last, 5),
             f"head, layer {last} (last)": ("attn", last, 3), f"MLP channel, layer {last // 2}": ("mlp", last // 2, 5)}
    with tempfile.TemporaryDirectory(prefix="ssah-bench-inspect-") as folder:
        t0 = time.perf_counter()
        attribute(loaded, safety, utility, batch_size=batch_size).save(folder)
        attribution = time.perf_counter() - t0
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):  # interleaved, so that load on the machine hits every case alike
            for name, unit in cases.items():
                t0 = time.perf_counter()
                if unit is None:
                    bare_forward(loaded, encoded, batch_size)
                else:
                    inspect(InspectRequest(MODEL, folder, *unit, batch_size=batch_size), models=Warm(loaded))
                times[name].append(time.perf_counter() - t0)
    return {"tokens": tokens, "units": loaded.units.n_units, "attribution": attribution,
            "best": {name: min(values) for name, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path, default=None, help="replace this benchmark's section of that file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    numbers = numbers_part(args.requests)
    job = job_part(args.samples, args.batch_size, args.repeats)
    bare = job["best"]["bare"]
    command = (f"python benchmarks/unit_pages.py --samples {args.samples} --batch-size {args.batch_size} "
               f"--repeats {args.repeats} --requests {args.requests}")
    lines = [
        HEADING, "",
        f"Command: `{command}` on {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, CPU, "
        f"float32 (the machine shared with other work).", "",
        f"**The unit resource's numbers** on a synthetic Llama-3-8B-sized run ({numbers['units']:,} units, means "
        "and variances of that shape), server time in this process (FastAPI app, no network):", "",
        "| request | ms | target |", "|---|---:|---|",
        f"| first request (reads units.parquet, sorts the role index once) | {1000 * numbers['first']:.0f} | |",
        f"| then, {numbers['n']} random units at random thresholds: median | {1000 * numbers['median']:.0f} "
        "| <= 300 |",
        f"| p95 / max | {1000 * numbers['p95']:.0f} / {1000 * numbers['max']:.0f} | |",
        f"| `GET /runs/{{id}}/layers/{{layer}}` (14,368 units), median of 5 | {1000 * numbers['layer_median']:.0f} "
        "| |", "",
        f"**The inspect job** (`verbs.inspect` on a warm model) against one bare batched no-grad forward of the full "
        f"model (with logits) over the same {args.samples} + {args.samples} pairs ({job['tokens']:,} tokens), "
        f"batch size {args.batch_size}, `{MODEL}` ({job['units']:,} units); best of {args.repeats}, interleaved:",
        "", "| work | seconds | ratio to bare |", "|---|---:|---:|",
        f"| bare forward | {bare:.2f} | 1.00 |",
        *[f"| inspect {name} | {seconds:.2f} | **{seconds / bare:.2f}** (target <= 1.5) |"
          for name, seconds in job["best"].items() if name != "bare"], "",
        "The job's forward stops at the unit's B module (a hook raises once it has read the unit's input), so "
        "a unit in layer L costs about (L + 1) / layers of a forward; the last layer's units come closest to a "
        "whole forward, still without the LM head. Loading the model is not counted: a worker keeps its models "
        f"loaded. (Making the run folder first, `attribute` on both sets: {job['attribution']:.1f} s.)", "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
