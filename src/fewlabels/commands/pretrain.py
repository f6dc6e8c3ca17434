"""`fewlabels pretrain`: self-supervised pretraining of a backbone on a dataset's images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewlabels.commands.arguments import (
    DEFAULT_BACKBONE,
    DEFAULT_DATA,
    DEFAULT_METHOD,
    add_backbone_options,
    add_config_options,
    add_data_options,
    add_device_options,
    add_length_options,
    add_run_options,
    given_config_values,
    positive_int,
)
from fewlabels.commands.run_settings import (
    new_settings,
    refuse_existing_run,
    resumed_settings,
    start_devices,
    train_config,
    write_run_description,
)
from fewlabels.data import load_dataset
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.engine.trainer import TrainResult, train
from fewlabels.errors import UserError
from fewlabels.methods import METHODS
from fewlabels.runs import backbone_spec, build_method, data_info, method_config

RECIPE = "recipe"
METHOD = "method_option"


def method_on_command_line(argv: list[str]) -> str:
    """The ``--method`` of a command line, before it is parsed (it decides the options)."""
    for position, word in enumerate(argv):
        if word == "--method" and position + 1 < len(argv):
            return argv[position + 1]
        if word.startswith("--method="):
            return word.split("=", 1)[1]
    return DEFAULT_METHOD


def add_parser(subparsers: Any, argv: list[str]) -> None:
    method_name = method_on_command_line(argv) if "pretrain" in argv else DEFAULT_METHOD
    method_class = METHODS.get(method_name) if method_name in METHODS else None
    parser = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining of a backbone",
        description="Pretrain a backbone with a self-supervised method; the run folder gets "
                    "checkpoint.pt, run.json, metrics.jsonl and tensorboard/. The options "
                    "below are those of the method given with --method (default "
                    f"{DEFAULT_METHOD}); `fewlabels pretrain --method NAME --help` shows "
                    "another method's.")
    parser.add_argument("--method", default=None,
                        help=f"method (default {DEFAULT_METHOD}; see: fewlabels list methods)")
    parser.add_argument("--out", required=True, help="run folder to write (or resume)")
    add_data_options(parser, DEFAULT_DATA)
    parser.add_argument("--max-images", type=positive_int, default=None,
                        help="pretrain on a seeded random subset of this many images")
    add_length_options(parser)
    add_backbone_options(parser)
    run = add_run_options(parser)
    run.add_argument("--no-collapse-monitor", action="store_true",
                     help="keep training when the embeddings collapse (ablations)")
    add_device_options(parser)
    recipe = method_class.recipe if method_class is not None else TrainingRecipe()
    add_config_options(parser, TrainingRecipe, RECIPE,
                       f"training recipe (defaults: {method_name}'s)", defaults=recipe)
    if method_class is not None:
        add_config_options(parser, method_class.Config, METHOD, f"{method_name} options",
                           rename_prefix=method_name)


def pretraining_images(spec: str, image_size: int | None, on_corrupt: str,
                       max_images: int | None, seed: int) -> ImageSet:
    """All images a self-supervised method may learn from: the train part (labels unused)
    and the extra unlabeled part, optionally a seeded random subset of them."""
    bundle = load_dataset(spec, image_size=image_size, on_corrupt=on_corrupt)
    parts = [part for part in (bundle.train, bundle.unlabeled) if part is not None]
    if not parts:
        raise UserError(f"{spec} has no training images")
    images = torch.cat([part.images for part in parts]) if len(parts) > 1 else parts[0].images
    pool = ImageSet(images, None, parts[0].class_names, bundle.name)
    if max_images is not None and max_images < len(pool):
        generator = torch.Generator().manual_seed(seed)
        pool = pool.subset(torch.randperm(len(pool), generator=generator)[:max_images])
    return pool


def run(args: Any) -> TrainResult:
    """Build (or resume) a run from parsed arguments and train it."""
    out = Path(args.out)
    recipe_changes = given_config_values(args, RECIPE)
    if args.resume:
        checkpoint = load_checkpoint(out)
        run_spec = checkpoint["run"]
        _refuse_changes(args, run_spec, out, recipe_changes)
        settings = resumed_settings(checkpoint, args.budget_minutes, args.budget_steps)
        data_spec = run_spec["data"]
    else:
        args.method = args.method or DEFAULT_METHOD
        args.backbone = args.backbone or DEFAULT_BACKBONE
        args.data = args.data or DEFAULT_DATA
        checkpoint = run_spec = None
        refuse_existing_run(out)
        settings = new_settings(
            args, METHODS.get(args.method).recipe.replace(**recipe_changes), recipe_changes)
        data_spec = {"spec": args.data, "image_size": args.image_size,
                     "max_images": args.max_images, "on_corrupt": args.on_corrupt}

    images = pretraining_images(data_spec["spec"], data_spec["image_size"],
                                data_spec["on_corrupt"], data_spec["max_images"], settings.seed)
    if run_spec is None:
        info = data_info(images)
        config = method_config(args.method, given_config_values(args, METHOD))
        run_spec = {
            "method": args.method,
            "method_config": config,  # replaced by the resolved values below
            "backbone": backbone_spec(args.backbone, args.width, args.depth, info.image_size,
                                      patch_size=args.patch_size, heads=args.heads,
                                      feature_dim=args.feature_dim),
            "data": {**data_spec, "info": info.__dict__ | {"mean": list(info.mean),
                                                            "std": list(info.std)}},
        }
    config = train_config(args, out, settings, collapse_monitor=not args.no_collapse_monitor)
    fabric = start_devices(config)
    method = build_method(run_spec)
    run_spec["method_config"] = method.config_dict()  # with the values the method resolved
    run_spec.setdefault("representation", method.default_representation)
    if fabric.is_global_zero:
        write_run_description(out, run_spec, config)
        print(f"pretraining {run_spec['method']} on {len(images)} images of "
              f"{data_spec['spec']} ({images.channels}x{images.image_size[0]}"
              f"x{images.image_size[1]}), backbone {run_spec['backbone']['name']} "
              f"({sum(p.numel() for p in method.backbone.parameters()):,} parameters), "
              f"{fabric.world_size} device(s) {fabric.device}, into {out}")
    result = train(method, images.images, config, run_spec, fabric, checkpoint)
    if fabric.is_global_zero:
        state = "finished" if result.step >= result.total_steps else "stopped at the time budget"
        print(f"{state}: step {result.step}/{result.total_steps}, "
              f"{result.elapsed_seconds / 60:.1f} min, {result.images_per_second:.0f} images/s, "
              f"augmentation {100 * result.augment_fraction:.0f}% of step time, "
              f"last loss {result.last_loss:.4f}; checkpoint in {out}")
    return result


def _refuse_changes(args: Any, run_spec: dict[str, Any], out: Path,
                    recipe_changes: dict[str, Any]) -> None:
    """Resuming continues the stored run; a different method, backbone, data, recipe or
    method option is refused."""
    asked = {"method": args.method, "backbone": args.backbone, "data": args.data}
    stored = {"method": run_spec["method"], "backbone": run_spec["backbone"]["name"],
              "data": run_spec["data"]["spec"]}
    for key, value in asked.items():
        if value is not None and value != stored[key]:
            raise UserError(f"{out} holds a {key} {stored[key]!r} run, not {value!r}; "
                            f"resume it as it is, or choose another --out")
    changed = list(recipe_changes) + list(given_config_values(args, METHOD))
    if changed:
        raise UserError(f"--resume continues the stored run with its own settings; leave out "
                        f"{', '.join('--' + name.replace('_', '-') for name in changed)}")
