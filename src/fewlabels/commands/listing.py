"""`fewlabels list methods|datasets|backbones`: what there is, one line each."""

from __future__ import annotations

import re
from typing import Any


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser("list", help="list methods, datasets or backbones")
    parser.add_argument("what", choices=["methods", "datasets", "backbones"])


def run(args: Any) -> None:
    from fewlabels.data import DATASETS
    from fewlabels.methods import METHODS
    from fewlabels.models import BACKBONES
    from fewlabels.semi import SEMI_METHODS

    if args.what != "methods":
        _print({"datasets": DATASETS, "backbones": BACKBONES}[args.what], False)
        return
    width = max(len(name) for name in METHODS.names() + SEMI_METHODS.names())
    print("self-supervised (fewlabels pretrain --method NAME):")
    _print(METHODS, True, width)
    print("\nclassifiers from few labels (fewlabels semi --method NAME):")
    _print(SEMI_METHODS, True, width)


def _print(registry: Any, methods: bool, width: int = 0) -> None:
    width = width or max(len(name) for name in registry.names())
    indent = "  " if methods else ""
    for name in registry.names():
        summary = registry.summary(name)
        paper = getattr(registry.get(name), "paper", "") if methods else ""
        if paper:  # the paper replaces a short citation at the end of the summary
            summary = re.sub(r"\s*\([^()]*\d{4}\)$", "", summary) + f" ({paper})"
        print(f"{indent}{name:<{width}}  {summary}")
