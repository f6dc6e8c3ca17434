"""Command-line pieces every command shares: one-line parse errors, checked number types, the
data and device options, and flags made from the fields of a config dataclass.

Config flags: every field of a method's ``Config`` or of the ``TrainingRecipe`` becomes one flag
(``--global-crop-scale 0.4,1``, ``--symmetric false``; see :mod:`fewlabels.options`), stored in
the namespace under ``PREFIX.field`` so it can never overwrite another option's value. A
method's flag whose name an engine option already has is renamed ``--METHOD-NAME``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from fewlabels.errors import UserError
from fewlabels.options import describe_type, field_flag, field_types, format_value, parser_for

DEFAULT_METHOD = "simclr"
DEFAULT_BACKBONE = "convnet"
DEFAULT_DATA = "fashion-mnist"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2) that point at ``--help``."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see: {self.prog} --help)")


def number(kind: Callable[[str], Any], low: float | None = None, high: float | None = None,
           low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type that parses ``kind`` and checks a range."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            bound = f"more than {low}" if low_open else f"at least {low}"
            limits = bound if high is None else f"{bound} and at most {high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {limits}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = number(int, 1)
positive_float = number(float, 0, low_open=True)
non_negative_float = number(float, 0)
non_negative_int = number(int, 0)


def budgets(text: str) -> list[int | None]:
    """``1,10,100,all`` -> [1, 10, 100, None]."""
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            values.append(None)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a number of labels per class (use e.g. 1,10,100,all)")
    return values


def names(valid: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        for name in chosen:
            if name not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown {name!r}; choose from: {', '.join(valid)}")
        return chosen

    return parse


ACCELERATORS = ["auto", "cpu", "cuda", "mps"]
ON_CORRUPT = ["skip", "error"]


def add_accelerator_option(parser: Any, purpose: str = "") -> None:
    """--accelerator for a command that runs on one device: ``purpose`` ends the sentence
    "device ..." of its help."""
    parser.add_argument("--accelerator", default="auto", choices=ACCELERATORS,
                        help=" ".join(filter(None, ["device", purpose]))
                        + " (default auto: a GPU when there is one)")


def add_on_corrupt_option(parser: Any, skipped: str = "skip it") -> None:
    """--on-corrupt: what an unreadable image in a folder does; ``skipped`` says what
    skipping means for the command's output."""
    parser.add_argument("--on-corrupt", choices=ON_CORRUPT, default="skip",
                        help=f"an unreadable image in a folder: {skipped}, or stop "
                             "(default skip)")


def add_device_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices and reproducibility")
    group.add_argument("--devices", default="1",
                       help="devices per machine: a number, 'auto', or GPU ids like 0,1 "
                            "(default 1)")
    group.add_argument("--accelerator", default="auto", choices=ACCELERATORS,
                       help="hardware to train on (default auto: a GPU when there is one)")
    group.add_argument("--num-nodes", type=positive_int, default=1,
                       help="machines taking part in distributed training (default 1)")
    group.add_argument("--precision", default="auto",
                       choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
                       help="numeric precision (default auto: bf16/fp16 mixed on GPUs, "
                            "fp32 on the CPU)")
    group.add_argument("--seed", type=number(int, 0), default=0,
                       help="seed of every random choice: split, initial weights, views "
                            "(default 0)")


def add_backbone_options(parser: argparse.ArgumentParser, note: str = "") -> None:
    """--backbone, --width, --depth and the backbone-specific sizes."""
    model = parser.add_argument_group("backbone" + note)
    model.add_argument("--backbone", default=None,
                       help=f"backbone (default {DEFAULT_BACKBONE}; "
                            "see: fewlabels list backbones)")
    model.add_argument("--width", type=positive_int, default=None,
                       help="backbone width (channels of the first stage, or ViT embedding size)")
    model.add_argument("--depth", type=positive_int, default=None,
                       help="backbone depth (stages, blocks per stage or ViT blocks)")
    model.add_argument("--patch-size", type=positive_int, default=None, help="ViT patch size")
    model.add_argument("--heads", type=positive_int, default=None, help="ViT attention heads")
    model.add_argument("--feature-dim", type=non_negative_int, default=None,
                       help="ConvNet: channels of the 1x1 feature layer after the last stage "
                            "(default 512; 0 = none, the last stage's channels)")


def add_length_options(parser: argparse.ArgumentParser) -> None:
    """--budget-minutes and --budget-steps, the run's length when not the recipe's epochs."""
    length = parser.add_argument_group("length (the recipe's epochs when none is given)")
    length.add_argument("--budget-minutes", type=positive_float, default=None,
                        help="wall-clock minutes of training; every schedule follows the "
                             "fraction of the budget spent, and training stops cleanly when "
                             "it is spent")
    length.add_argument("--budget-steps", type=positive_int, default=None, metavar="N",
                        help="N optimiser steps of training instead of --epochs: the same "
                             "run on any machine, however fast; every schedule follows the "
                             "fraction of the steps taken (with --budget-minutes as well, "
                             "the minutes only stop the run early)")


def add_run_options(parser: argparse.ArgumentParser) -> Any:
    """--resume, --checkpoint-minutes, --no-progress (and a hidden --stop-after-steps for
    tests); returns the group, for a command's own run options."""
    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint, with its "
                          "method, data, recipe and length (devices and --budget-minutes may "
                          "change)")
    run.add_argument("--checkpoint-minutes", type=positive_float, default=2.0,
                     help="minutes between checkpoints (default 2)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress display")
    run.add_argument("--stop-after-steps", type=positive_int, default=None,
                     help=argparse.SUPPRESS)
    return run


DATA_HELP = ("dataset: fashion-mnist, fashion-mnist-sample, mnist:PATH, cifar10:PATH, "
             "cifar100:PATH, stl10:PATH, folder:PATH, npz:PATH")


def add_data_options(parser: argparse.ArgumentParser, default_help: str,
                     resize: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default=None,
                       help=f"{DATA_HELP} (default {default_help}; see: fewlabels list datasets)")
    if resize:
        group.add_argument("--image-size", type=number(int, 8, 1024), default=None,
                           help="resize images to this side in pixels (default: as stored; "
                                "folder images 32)")
    add_on_corrupt_option(group, "skip and count it")


def add_config_options(parser: argparse.ArgumentParser, config_class: type, dest_prefix: str,
                       title: str, rename_prefix: str | None = None,
                       defaults: Any = None) -> dict[str, str]:
    """One flag per field of ``config_class``; values land in ``args.<dest_prefix>.<field>``
    (``None`` when not given). A flag already taken by the parser is renamed
    ``--<rename_prefix>-<flag>`` (or refused when there is no prefix). ``defaults`` (an
    instance) supplies the defaults shown in the help. Returns ``{field: flag}``."""
    group = parser.add_argument_group(title)
    kinds = field_types(config_class)
    taken = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public view
    flags: dict[str, str] = {}
    for field in dataclasses.fields(config_class):
        flag = field_flag(field)
        if flag in taken:
            if rename_prefix is None:
                raise ValueError(f"option {flag} of {config_class.__name__} is taken")
            flag = f"--{rename_prefix}-{flag[2:]}"
        kind = kinds[field.name]
        default = getattr(defaults, field.name) if defaults is not None else field.default
        group.add_argument(flag, dest=f"{dest_prefix}.{field.name}", type=parser_for(kind),
                           default=None, metavar=describe_type(kind),
                           help=f"{field.metadata.get('help', '')} "
                                f"(default {format_value(default)})")
        flags[field.name] = flag
    return flags


def given_config_values(args: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The config fields given on the command line, ``{field: value}``."""
    start = dest_prefix + "."
    return {key[len(start):]: value for key, value in vars(args).items()
            if key.startswith(start) and value is not None}
