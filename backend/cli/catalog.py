"""`ssah models` and `ssah data`: the built-in models and calibration / evaluation sets."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    models = sub.add_parser("models", help="built-in models")
    msub = models.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="list built-in models")
    path = msub.add_parser("path", help="print a folder that AutoModelForCausalLM.from_pretrained loads")
    path.add_argument("name")
    models.set_defaults(handler=cmd_models)

    data = sub.add_parser("data", help="built-in calibration and evaluation sets")
    dsub = data.add_subparsers(dest="action", required=True)
    dsub.add_parser("list", help="list built-in sets")
    data.set_defaults(handler=cmd_data)


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
