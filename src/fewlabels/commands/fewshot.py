"""`fewlabels fewshot`: N-way K-shot classification of novel classes.

The data's classes are split into base and novel (seeded, or chosen with --novel-classes);
the method trains where it trains, on the base classes' labels only, and is tested on
episodes drawn from the novel classes' test images. The result (mean accuracy with its 95%
interval over the episodes, the class split, the settings) goes to ``OUT/result.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fewlabels.atomic import atomic_write_text
from fewlabels.commands.arguments import (
    DEFAULT_DATA,
    add_accelerator_option,
    add_backbone_options,
    add_config_options,
    add_data_options,
    given_config_values,
    number,
    positive_int,
)
from fewlabels.commands.evaluate import evaluation_device
from fewlabels.distributed import rank, world_size
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.run_control import device_count, make_fabric
from fewlabels.errors import UserError
from fewlabels.fewshot import (
    FEWSHOT_METHODS,
    NEEDS_INIT,
    ClassSplit,
    FewShotOptions,
    chosen_split,
    evaluate_method,
    prepare_task,
    split_classes,
)

OPTIONS = "fewshot_option"
# methods whose training is the episodic loop, which runs on several devices
EPISODIC_METHODS = ("protonet", "maml")
RESULT_NAME = "result.json"


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "fewshot", help="N-way K-shot classification of novel classes, over episodes",
        description="Split the data's classes into base and novel, train the method on the "
                    "base classes' labels only (where it trains), and test it on N-way "
                    "K-shot episodes of the novel classes' test images. Prints the mean "
                    "accuracy with its 95% interval (1.96 std / sqrt(episodes)) and writes "
                    f"OUT/{RESULT_NAME} with the class split and the settings. Methods: "
                    + "; ".join(f"{name}: {FEWSHOT_METHODS.summary(name)}"
                                for name in FEWSHOT_METHODS.names()) + ".")
    parser.add_argument("--method", required=True,
                        help=f"few-shot method: {', '.join(FEWSHOT_METHODS.names())}")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help=f"folder to write {RESULT_NAME} into")
    parser.add_argument("--init", default=None, metavar="RUN",
                        help="a fewlabels pretrain run folder: its features (--method "
                             "features, required there) or the network the other methods "
                             "start from (their backbone options are then ignored)")
    episodes = parser.add_argument_group("episodes")
    episodes.add_argument("--ways", type=number(int, 2), default=5,
                          help="N: classes per episode (default 5)")
    episodes.add_argument("--shots", type=positive_int, default=1,
                          help="K: labeled support images per class (default 1)")
    episodes.add_argument("--queries", type=positive_int, default=15,
                          help="query images per class (default 15)")
    episodes.add_argument("--episodes", type=positive_int, default=600,
                          help="episodes to test on (default 600)")
    episodes.add_argument("--novel-classes", default=None, metavar="NAMES",
                          help="comma-separated novel classes (names or indices); every "
                               "other class is base (default: --novel-count drawn with "
                               "--seed)")
    episodes.add_argument("--novel-count", type=positive_int, default=None,
                          help="novel classes drawn with --seed (default half the classes)")
    episodes.add_argument("--seed", type=number(int, 0), default=0,
                          help="seed of the class split, the episodes and training "
                               "(default 0)")
    add_data_options(parser, f"the --init run's data, else {DEFAULT_DATA}")
    add_backbone_options(parser, " (methods that train; ignored with --init)")
    add_accelerator_option(parser, "to train and test on")
    parser.add_argument("--devices", default="1",
                        help="devices per machine for the episodic methods ("
                             + ", ".join(EPISODIC_METHODS) + "): each trains on its own "
                             "episodes, gradients averaged (a number, or GPU ids like 0,1; "
                             "default 1)")
    parser.add_argument("--num-nodes", type=positive_int, default=1,
                        help="machines taking part in episodic training (default 1)")
    add_config_options(parser, FewShotOptions, OPTIONS, "method options",
                       defaults=FewShotOptions())


def run(args: Any) -> dict[str, Any]:
    if args.method not in FEWSHOT_METHODS:
        FEWSHOT_METHODS.get(args.method)  # the one-line error listing the methods
    if args.method in NEEDS_INIT and args.init is None:
        raise UserError(f"--method {args.method} evaluates a pretraining run's features; give "
                        "--init RUN (the folder of a fewlabels pretrain run)")
    options = FewShotOptions(**given_config_values(args, OPTIONS))
    options.check()
    device = _device(args)
    spec = args.data
    if args.init is not None:
        spec = spec or load_checkpoint(args.init)["run"]["data"]["spec"]
    spec = spec or DEFAULT_DATA
    if args.novel_classes is not None and args.novel_count is not None:
        raise UserError("give --novel-classes or --novel-count, not both")

    def split(class_names: list[str]) -> ClassSplit:
        if args.novel_classes is not None:
            return chosen_split(class_names, [item.strip() for item in
                                              args.novel_classes.split(",") if item.strip()])
        return split_classes(class_names, novel_count=args.novel_count, seed=args.seed)

    backbone = {"name": args.backbone, "width": args.width, "depth": args.depth,
                "patch_size": args.patch_size, "heads": args.heads,
                "feature_dim": args.feature_dim}
    task = prepare_task(spec, split, ways=args.ways, shots=args.shots, queries=args.queries,
                        episodes=args.episodes, seed=args.seed, backbone=backbone,
                        init_dir=args.init, image_size=args.image_size,
                        base_images_per_class=options.base_images_per_class,
                        on_corrupt=args.on_corrupt, device=device)
    result = evaluate_method(args.method, task, options)
    out = Path(args.out) / RESULT_NAME
    record = result.to_dict() | {"devices": world_size()}
    if rank() == 0:
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"{result.summary_line()}; result in {out}")
    return record


def _device(args: Any) -> torch.device:
    """The device to train and test on; with several devices (episodic methods only) the
    processes are launched here, each then trains on its own episodes and tests the same
    network (only the first writes the result)."""
    processes = device_count(args.devices) * args.num_nodes
    if processes == 1:
        return evaluation_device(args.accelerator)
    if args.method not in EPISODIC_METHODS:
        raise UserError(f"--method {args.method} runs on one device; --devices and --num-nodes "
                        f"are for the episodic methods ({', '.join(EPISODIC_METHODS)})")
    return make_fabric(args.accelerator, args.devices, args.num_nodes, "32-true").device
