"""What every command shares: argument types, the options several commands take (as parent parsers), the
progress bar, and how rates are printed."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_BAD_INPUT = 2


def fraction(name: str):
    """An argument type: a number in [0, 1]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [0, 1], got {text!r}") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1], got {value:g}")
        return value
    return parse


def positive(name: str, upper: int):
    """An argument type: a whole number in [1, upper]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if not 1 <= value <= upper:
            raise argparse.ArgumentTypeError(f"{name} must be between 1 and {upper}, got {value}")
        return value
    return parse


def _parent(*adders) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(parser)
    return parser


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")


def _seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)


def _prompts(default_tokens: int):
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--harmful", default="advbench-eval", help="harmful prompt set(s), comma-separated")
        p.add_argument("--benign", default="benign-prompts", help="benign prompt set(s), comma-separated")
        p.add_argument("--limit", type=positive("--limit", 10_000), default=20, help="first N prompts of each set")
        p.add_argument("--max-new-tokens", type=positive("--max-new-tokens", 4096), default=default_tokens)
        p.add_argument("--judge", default=None, metavar="v2|keyword|hf:PATH",
                       help="who reads the replies (default v2: refusal phrases, relevance to the prompt and "
                            "degenerate text; keyword: the research judge, to set figures beside the paper's; hf:PATH: "
                            "a local guard or classifier model folder)")
    return add


class Parents:
    """Options shared by several commands, declared once: `parents=[PARENTS.run_on, PARENTS.output]`."""

    def __init__(self):
        self.device = _parent(_device)
        self.run_on = _parent(_device, _dtype)  # where a model runs
        self.quiet = _parent(_quiet)
        self.output = _parent(_json, _quiet)  # what a command prints
        self.seed = _parent(_seed)
        self.preview_prompts = _parent(_prompts(64))
        self.check_prompts = _parent(_prompts(48))  # the before/after check of a fine-tune


PARENTS = Parents()


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator:
    """A tqdm bar on stderr that follows the engine's (phase, done, total) reports; None when `quiet`."""
    if quiet:
        yield None
        return
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

    try:
        yield report
    finally:
        if state["bar"] is not None:
            state["bar"].close()


def pct(x) -> str:
    return "  -  " if x is None else f"{x:6.1%}"
