"""The `ssah` command: attribute units, list built-in models and data sets."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _progress_bar():
    """A tqdm bar on stderr that follows the engine's (phase, done, total) reports."""
    from tqdm import tqdm

    state: dict = {"bar": None, "phase": None}

    def report(phase: str, done: int, total: int) -> None:
        if state["phase"] != phase:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=phase, unit="step", file=sys.stderr, leave=True,
                                dynamic_ncols=True)
            state["phase"] = phase
        bar = state["bar"]
        bar.update(done - bar.n)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    report.close = close
    return report


def _fraction(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [0, 1], got {text!r}") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1], got {value:g}")
        return value
    return parse


def _positive(name: str, upper: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if not 1 <= value <= upper:
            raise argparse.ArgumentTypeError(f"{name} must be between 1 and {upper}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssah", description="Find where a language model keeps its safety.")
    sub = parser.add_subparsers(dest="command", required=True)

    att = sub.add_parser("attribute", help="score and classify every unit of a model")
    att.add_argument("--model", required=True, help="built-in name, local HF folder, .gguf file or cached hub id")
    att.add_argument("--safety", required=True, help="built-in set name or .jsonl/.csv/.parquet file")
    att.add_argument("--utility", required=True, help="built-in set name or .jsonl/.csv/.parquet file")
    att.add_argument("--out", required=True, help="run folder to write")
    att.add_argument("--samples", type=_positive("--samples", 1_000_000), default=128,
                     help="pairs drawn from each set (seeded); default 128")
    att.add_argument("--max-length", type=_positive("--max-length", 1_000_000), default=None,
                     help="longest pair in tokens; longer rows are refused, not cut (default: model context)")
    att.add_argument("--batch-size", type=_positive("--batch-size", 4096), default=8)
    att.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    att.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    att.add_argument("--seed", type=int, default=0)
    att.add_argument("--positions", default="response", choices=["response", "prompt", "all"],
                     help="which tokens count: the response (default), the prompt, or all")
    att.add_argument("--responses", default="given", choices=["given", "self"],
                     help="score the sets' responses (given) or the model's own greedy replies (self)")
    att.add_argument("--self-max-new-tokens", type=_positive("--self-max-new-tokens", 4096), default=64,
                     help="length of the model's own replies with --responses self")
    att.add_argument("--h-ru", type=_fraction("--h-ru"), default=0.10)
    att.add_argument("--h-scu", type=_fraction("--h-scu"), default=0.01)
    att.add_argument("--h-ucu", type=_fraction("--h-ucu"), default=0.05)
    att.add_argument("--quiet", action="store_true", help="no progress bar")

    models = sub.add_parser("models", help="built-in models")
    msub = models.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="list built-in models")
    path = msub.add_parser("path", help="print a folder that AutoModelForCausalLM.from_pretrained loads")
    path.add_argument("name")

    data = sub.add_parser("data", help="built-in calibration and evaluation sets")
    dsub = data.add_subparsers(dest="action", required=True)
    dsub.add_parser("list", help="list built-in sets")
    return parser


def cmd_attribute(args: argparse.Namespace) -> int:
    from backend.engine import Thresholds, run_attribution

    thresholds = Thresholds(h_ru=args.h_ru, h_scu=args.h_scu, h_ucu=args.h_ucu)
    progress = None if args.quiet else _progress_bar()
    try:
        result = run_attribution(args.model, args.safety, args.utility, args.out, samples=args.samples,
                                 max_length=args.max_length, batch_size=args.batch_size, device=args.device,
                                 dtype=args.dtype, seed=args.seed, positions=args.positions,
                                 responses=args.responses, self_max_new_tokens=args.self_max_new_tokens,
                                 thresholds=thresholds, progress=progress)
    finally:
        if progress:
            progress.close()
    roles = result.manifest["roles"]
    total = int(result.units.params.sum())
    shares = result.units.groupby("role").params.sum() / total
    print(f"wrote {Path(args.out) / 'units.parquet'}: {len(result.units)} units; "
          + ", ".join(f"{r} {roles[r]} ({shares.get(r, 0):.1%} of params)" for r in ("SCU", "UCU", "CU", "RU")))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from backend.engine import models

    if args.action == "list":
        for m in models.list_builtin():
            print(f"{m['name']:<26} {m['description']}  [{m['package']}]")
        return 0
    if args.name not in models.BUILTIN_MODELS:
        raise models.ModelError(f"unknown built-in model {args.name!r}; built-in models: "
                                f"{', '.join(models.BUILTIN_MODELS)}")
    print(models.resolve(args.name))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from backend.engine.data import list_datasets

    for d in list_datasets():
        print(f"{d.name:<22} {d.size:>5}  {d.description}  [{d.source}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from backend.engine.data import DataError
    from backend.engine.models import ModelError

    handlers = {"attribute": cmd_attribute, "models": cmd_models, "data": cmd_data}
    try:
        return handlers[args.command](args)
    except (DataError, ModelError, ValueError) as e:
        print(f"ssah {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
