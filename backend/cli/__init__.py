"""The `ssah` command. Each command group lives in its own module, which registers its parsers (sharing options
through `common.PARENTS`) and parses arguments into a request of `backend.verbs`; this module only dispatches and
turns bad input into one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys

from . import attribute, catalog, evaluate, judge, report, reproduce, service, train
from .common import EXIT_BAD_INPUT

GROUPS = (attribute, evaluate, judge, train, reproduce, report, catalog, service)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssah", description="Find where a language model keeps its safety.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:  # DataError, ModelError, InterventionError, DeltaError and bad values
        print(f"ssah {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
