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

    registry = {"methods": METHODS, "datasets": DATASETS, "backbones": BACKBONES}[args.what]
    width = max(len(name) for name in registry.names())
    for name in registry.names():
        summary = registry.summary(name)
        paper = getattr(registry.get(name), "paper", "") if args.what == "methods" else ""
        if paper:  # the paper replaces a short citation at the end of the summary
            summary = re.sub(r"\s*\([^()]*\d{4}\)$", "", summary) + f" ({paper})"
        print(f"{name:<{width}}  {summary}")
