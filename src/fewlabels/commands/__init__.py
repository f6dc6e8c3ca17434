"""The commands of `fewlabels`, one module each, with ``add_parser(subparsers, argv)`` and
``run(args)``. Commands import the library; the library never imports them."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from types import ModuleType

from fewlabels.commands.arguments import Parser

# name -> module, in the order ``fewlabels --help`` lists them
COMMANDS = {
    "pretrain": "fewlabels.commands.pretrain",
    "evaluate": "fewlabels.commands.evaluate",
    "semi": "fewlabels.commands.semi",
    "finetune": "fewlabels.commands.finetune",
    "adapt": "fewlabels.commands.adapt",
    "active": "fewlabels.commands.active",
    "fewshot": "fewlabels.commands.fewshot",
    "predict": "fewlabels.commands.predict",
    "export": "fewlabels.commands.export",
    "embed": "fewlabels.commands.embed",
    "attention": "fewlabels.commands.attention",
    "clusters": "fewlabels.commands.clusters",
    "reconstruct": "fewlabels.commands.reconstruct",
    "demo": "fewlabels.commands.demo",
    "list": "fewlabels.commands.listing",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. ``argv`` lets a command shape its options by what was asked
    (``pretrain --method dino`` gets DINO's options)."""
    parser = Parser(
        prog="fewlabels",
        description="Train image models from many unlabeled images and a few labels.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        command_module(name).add_parser(subparsers, list(argv or []))
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a full command line (commands that run other commands, like the demo)."""
    return build_parser(argv).parse_args(list(argv))
