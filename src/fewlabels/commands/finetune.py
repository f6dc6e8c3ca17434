"""`fewlabels finetune`: the supervised classifier method of `fewlabels semi`, started from a
pretrained run's backbone (``--init``)."""

from __future__ import annotations

from typing import Any

from fewlabels.commands.semi import add_classifier_parser, run

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, argv: list[str]) -> None:
    add_classifier_parser(subparsers, argv, "finetune")
