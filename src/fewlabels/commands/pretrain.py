"""`fewlabels pretrain`: self-supervised pretraining of a backbone on a dataset's images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from fewlabels.cli import DEFAULT_BACKBONE, DEFAULT_DATA, DEFAULT_METHOD
from fewlabels.data import load_dataset
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import checkpoint_path, load_checkpoint
from fewlabels.engine.run_control import make_fabric
from fewlabels.engine.trainer import RESUMABLE_SETTINGS, TrainConfig, TrainResult, train
from fewlabels.errors import UserError
from fewlabels.methods import METHODS
from fewlabels.runs import backbone_spec, build_method, data_info, method_config


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


def run_pretrain(args: Any) -> TrainResult:
    """Build (or resume) a run from parsed arguments and train it."""
    out = Path(args.out)
    if args.resume:
        checkpoint = load_checkpoint(out)
        run_spec = checkpoint["run"]
        _refuse_changes(args, run_spec, out)
        train_values = checkpoint["train"]
        data_spec = run_spec["data"]
    else:
        args.method = args.method or DEFAULT_METHOD
        args.backbone = args.backbone or DEFAULT_BACKBONE
        args.data = args.data or DEFAULT_DATA
        checkpoint = None
        if checkpoint_path(out).exists():
            raise UserError(f"{out} already holds a run; continue it with --resume, "
                            "or choose another --out")
        method_class = METHODS.get(args.method)
        recipe = method_class.recipe
        epochs = args.epochs if args.epochs is not None else (
            None if args.budget_minutes is not None else recipe.epochs)
        train_values = {
            "epochs": epochs, "budget_minutes": args.budget_minutes,
            "batch_size": args.batch_size or recipe.batch_size,
            "optimizer": args.optimizer or recipe.optimizer,
            "learning_rate": args.lr if args.lr is not None else recipe.learning_rate,
            "weight_decay": args.weight_decay if args.weight_decay is not None
            else recipe.weight_decay,
            "warmup_epochs": args.warmup_epochs if args.warmup_epochs is not None
            else recipe.warmup_epochs,
            "seed": args.seed,
        }
        data_spec = {"spec": args.data, "image_size": args.image_size,
                     "max_images": args.max_images, "on_corrupt": args.on_corrupt}
        run_spec = None

    images = pretraining_images(data_spec["spec"], data_spec["image_size"],
                                data_spec["on_corrupt"], data_spec["max_images"],
                                train_values["seed"])
    if run_spec is None:
        info = data_info(images)
        config = method_config(args.method, vars(args))
        run_spec = {
            "method": args.method,
            "method_config": dataclasses.asdict(config),
            "backbone": backbone_spec(args.backbone, args.width, args.depth,
                                      patch_size=args.patch_size, heads=args.heads,
                                      feature_dim=args.feature_dim),
            "data": {**data_spec, "info": info.__dict__ | {"mean": list(info.mean),
                                                            "std": list(info.std)}},
        }
    kept = {k: v for k, v in train_values.items() if k not in RESUMABLE_SETTINGS}
    config = TrainConfig(
        run_dir=out, resume=args.resume, devices=args.devices, accelerator=args.accelerator,
        num_nodes=args.num_nodes, precision=args.precision, progress=not args.no_progress,
        checkpoint_minutes=args.checkpoint_minutes,
        budget_minutes=args.budget_minutes if args.budget_minutes is not None
        else train_values.get("budget_minutes"),
        stop_after_steps=args.stop_after_steps, **kept,
    )
    fabric = make_fabric(config.accelerator, config.devices, config.num_nodes, config.precision)
    torch.manual_seed(config.seed)  # the same initial weights on every device
    method = build_method(run_spec)
    run_spec["method_config"] = method.config_dict()  # with the values the method resolved
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(
            {"run": run_spec, "train": config.to_dict()}, indent=2) + "\n")
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


def _refuse_changes(args: Any, run_spec: dict[str, Any], out: Path) -> None:
    """Resuming continues the stored run; a different method, backbone or data is refused."""
    asked = {"method": args.method, "backbone": args.backbone, "data": args.data}
    stored = {"method": run_spec["method"], "backbone": run_spec["backbone"]["name"],
              "data": run_spec["data"]["spec"]}
    for key, value in asked.items():
        if value is not None and value != stored[key]:
            raise UserError(f"{out} holds a {key} {stored[key]!r} run, not {value!r}; "
                            f"resume it as it is, or choose another --out")
