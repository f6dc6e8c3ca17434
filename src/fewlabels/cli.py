"""The `fewlabels` command: pretrain, evaluate, demo, list.

Errors a user can fix print as one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from fewlabels.errors import UserError

DEFAULT_METHOD = "simclr"
DEFAULT_BACKBONE = "convnet"
DEFAULT_DATA = "fashion-mnist"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2) that point at ``--help``."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see: {self.prog} --help)")


def _number(kind: Callable[[str], Any], low: float | None = None, high: float | None = None,
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


positive_int = _number(int, 1)
positive_float = _number(float, 0, low_open=True)
non_negative_float = _number(float, 0)
non_negative_int = _number(int, 0)


def _budgets(text: str) -> list[int | None]:
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


def _names(valid: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown {name!r}; choose from: {', '.join(valid)}")
        return names

    return parse


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices and reproducibility")
    group.add_argument("--devices", default="1",
                       help="devices per machine: a number, 'auto', or GPU ids like 0,1 "
                            "(default 1)")
    group.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                       help="hardware to train on (default auto: a GPU when there is one)")
    group.add_argument("--num-nodes", type=positive_int, default=1,
                       help="machines taking part in distributed training (default 1)")
    group.add_argument("--precision", default="auto",
                       choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
                       help="numeric precision (default auto: bf16/fp16 mixed on GPUs, "
                            "fp32 on the CPU)")
    group.add_argument("--seed", type=_number(int, 0), default=0,
                       help="seed of every random choice: split, initial weights, views "
                            "(default 0)")


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """One option per field of every method's config; ``None`` keeps the method's default."""
    from fewlabels.methods import METHODS

    seen: set[str] = set()
    for name in METHODS.names():
        config_class = METHODS.get(name).Config
        types = typing.get_type_hints(config_class)
        group = parser.add_argument_group(f"{name} options")
        for field in dataclasses.fields(config_class):
            flag = "--" + field.name.replace("_", "-")
            if field.name in seen:
                continue
            seen.add(field.name)
            kind = types[field.name]
            group.add_argument(flag, dest=field.name, type=kind, default=None,
                               help=f"{field.metadata.get('help', '')} "
                                    f"(default {field.default})")


def _add_data_options(parser: argparse.ArgumentParser, default_help: str,
                      resize: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default=None,
                       help="dataset: fashion-mnist, fashion-mnist-sample, mnist:PATH, "
                            "cifar10:PATH, cifar100:PATH, stl10:PATH, folder:PATH, npz:PATH "
                            f"(default {default_help}; see: fewlabels list datasets)")
    if resize:
        group.add_argument("--image-size", type=_number(int, 8, 1024), default=None,
                           help="resize images to this side in pixels (default: as stored; "
                                "folder images 32)")
    group.add_argument("--on-corrupt", choices=["skip", "error"], default="skip",
                       help="an unreadable image in a folder: skip and count it, or stop "
                            "(default skip)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fewlabels",
        description="Train image models from many unlabeled images and a few labels.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pretrain = commands.add_parser(
        "pretrain", help="self-supervised pretraining of a backbone",
        description="Pretrain a backbone with a self-supervised method; the run folder "
                    "gets checkpoint.pt, run.json, metrics.jsonl and tensorboard/.")
    pretrain.add_argument("--method", default=None,
                          help=f"method (default {DEFAULT_METHOD}; see: fewlabels list methods)")
    pretrain.add_argument("--out", required=True, help="run folder to write (or resume)")
    _add_data_options(pretrain, DEFAULT_DATA)
    pretrain.add_argument("--max-images", type=positive_int, default=None,
                          help="pretrain on a seeded random subset of this many images")
    length = pretrain.add_argument_group("length (the method's epochs when neither is given)")
    length.add_argument("--epochs", type=positive_int, default=None, help="passes over the data")
    length.add_argument("--budget-minutes", type=positive_float, default=None,
                        help="wall-clock minutes of training; the schedule is fitted to it and "
                             "training stops cleanly when it is spent")
    model = pretrain.add_argument_group("backbone")
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
    optim = pretrain.add_argument_group("optimisation (default: the method's recipe)")
    optim.add_argument("--batch-size", type=positive_int, default=None,
                       help="global batch size over all devices")
    optim.add_argument("--optimizer", choices=["lars", "sgd", "adamw"], default=None,
                       help="optimiser")
    optim.add_argument("--lr", type=positive_float, default=None,
                       help="peak learning rate for a batch of 256 (scaled linearly)")
    optim.add_argument("--weight-decay", type=non_negative_float, default=None,
                       help="weight decay (never on biases and norm parameters)")
    optim.add_argument("--warmup-epochs", type=non_negative_float, default=None,
                       help="epochs of linear learning-rate warm-up before the cosine decay")
    run = pretrain.add_argument_group("run")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint, with its "
                          "method, data and recipe (devices and --budget-minutes may change)")
    run.add_argument("--checkpoint-minutes", type=positive_float, default=2.0,
                     help="minutes between checkpoints (default 2)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--stop-after-steps", type=positive_int, default=None,
                     help=argparse.SUPPRESS)
    _add_device_options(pretrain)
    _add_method_options(pretrain)

    evaluate = commands.add_parser(
        "evaluate", help="label-efficiency evaluation of a pretrained backbone",
        description="kNN and linear probes on frozen features at budgets of labels per "
                    "class, averaged over split seeds, next to raw-pixel, random-init and "
                    "supervised-from-scratch baselines.")
    evaluate.add_argument("--checkpoint", required=True,
                          help="run folder (or checkpoint.pt) made by fewlabels pretrain")
    # evaluation resizes to the size the backbone was trained at
    _add_data_options(evaluate, "the data the checkpoint was pretrained on", resize=False)
    _add_evaluation_options(evaluate)
    evaluate.add_argument("--seed", type=_number(int, 0), default=0,
                          help="first split seed; seeds seed..seed+N-1 are used (default 0)")
    evaluate.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                          help="device for feature extraction and the supervised baseline")

    demo = commands.add_parser(
        "demo", help="pretrain SimCLR on Fashion-MNIST for a few minutes and evaluate it",
        description="Pretrains SimCLR on Fashion-MNIST (the full set when it is on this "
                    "machine, else the sample inside the package), then prints the "
                    "label-efficiency table and writes it as JSON and a PNG plot.")
    demo.add_argument("--minutes", type=positive_float, default=3.0,
                      help="minutes of pretraining (default 3)")
    demo.add_argument("--out", default="fewlabels-demo",
                      help="folder for the run, table and plot (default ./fewlabels-demo)")
    demo.add_argument("--data", default=None,
                      help="dataset (default: fashion-mnist if found, else fashion-mnist-sample)")
    demo.add_argument("--seeds", type=positive_int, default=3, help="split seeds (default 3)")

    listing = commands.add_parser("list", help="list methods, datasets or backbones")
    listing.add_argument("what", choices=["methods", "datasets", "backbones"])
    return parser


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protocol")
    group.add_argument("--protocol", type=_names(["knn", "linear"]), default=["knn", "linear"],
                       help="comma-separated protocols: knn, linear (default knn,linear)")
    group.add_argument("--labels-per-class", type=_budgets, default=[1, 10, 100, None],
                       help="comma-separated budgets of labels per class, 'all' for every "
                            "label (default 1,10,100,all)")
    group.add_argument("--seeds", type=positive_int, default=3,
                       help="split seeds to average over (default 3)")
    group.add_argument("--baselines", type=_names(["raw", "random", "supervised", "none"]),
                       default=["raw", "random", "supervised"],
                       help="comma-separated baselines: raw (pixels), random (initialisation), "
                            "supervised (from scratch on the same labels), or none "
                            "(default raw,random,supervised)")
    group.add_argument("--knn-k", type=positive_int, default=200,
                       help="neighbours of the kNN classifier (default 200)")
    group.add_argument("--knn-temperature", type=positive_float, default=0.1,
                       help="temperature T of the kNN votes exp(similarity/T) (default 0.1)")
    group.add_argument("--json", default=None,
                       help="JSON file for the results (default RUN_DIR/evaluation.json)")
    group.add_argument("--plot", default=None, help="also plot the results to this PNG file")


def _list(what: str) -> None:
    from fewlabels.data import DATASETS
    from fewlabels.methods import METHODS
    from fewlabels.models import BACKBONES

    registry = {"methods": METHODS, "datasets": DATASETS, "backbones": BACKBONES}[what]
    width = max(len(name) for name in registry.names())
    for name in registry.names():
        print(f"{name:<{width}}  {registry.summary(name)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fewlabels` command; returns the exit status."""
    from fewlabels.engine.trainer import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
        if args.command == "pretrain":
            from fewlabels.commands.pretrain import run_pretrain

            run_pretrain(args)
        elif args.command == "evaluate":
            from fewlabels.commands.evaluate import run_evaluate

            run_evaluate(args)
        elif args.command == "demo":
            from fewlabels.commands.demo import run_demo

            run_demo(args)
        else:
            _list(args.what)
    except UserError as error:
        print(f"fewlabels: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"fewlabels: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fewlabels: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
