"""`fewlabels evaluate`: label-efficiency of a pretrained backbone next to its baselines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from fewlabels.data import load_dataset
from fewlabels.data.imageset import ImageSet
from fewlabels.data.splits import make_split
from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.errors import UserError
from fewlabels.evaluate import (
    BackboneFeatures,
    FeatureCache,
    RawPixels,
    Results,
    evaluate_label_efficiency,
    file_digest,
    random_init_backbone,
    supervised_baseline,
)
from fewlabels.report.plot import plot_label_efficiency
from fewlabels.runs import describe, load_pretrained, make_backbone

HELD_OUT_FRACTION = 0.2  # of each class, as the test part of data that has none


def evaluation_device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "cuda":
        raise UserError("--accelerator cuda asked for, but no CUDA device is available")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def train_and_test(spec: str, image_size: int, channels: int, on_corrupt: str
                   ) -> tuple[ImageSet, ImageSet, str]:
    """The labeled train and test parts, resized to the size the backbone was trained at.
    Data without a test part gets one: a seeded 20% of every class, held out."""
    bundle = load_dataset(spec, image_size=image_size, on_corrupt=on_corrupt)
    train = bundle.train
    if train is None or train.labels is None:
        raise UserError(f"{spec} has no labeled images to evaluate with; give labeled data "
                        "(class subfolders, or a dataset with labels)")
    if train.channels != channels:
        raise UserError(f"{spec} has {train.channels}-channel images but the backbone was "
                        f"trained on {channels}-channel images; evaluate on data like it")
    test, note = bundle.test, "test part"
    if test is None or test.labels is None:
        smallest = int(torch.bincount(train.labels).min())
        held = max(1, round(HELD_OUT_FRACTION * smallest))
        split = make_split(train.labels, None, seed=0, validation_per_class=held)
        test, train = train.subset(split.validation), train.subset(split.labeled)
        note = f"held-out {held} images per class of the train part (it has no test part)"
    return train, test, note


def run_evaluate(args: Any) -> Results:
    backbone, checkpoint, info = load_pretrained(args.checkpoint)
    run_dir = Path(args.checkpoint)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    spec = args.data or checkpoint["run"]["data"]["spec"]
    device = evaluation_device(args.accelerator)
    _say(f"evaluating {describe(checkpoint)}")
    train, test, note = train_and_test(spec, info.image_size, info.channels, args.on_corrupt)
    _say(f"data: {spec}, {len(train)} train and {len(test)} test images ({note})")

    def fresh_backbone() -> torch.nn.Module:
        return make_backbone(checkpoint["run"]["backbone"], info)

    method = checkpoint["run"]["method"]
    representations: dict[str, Any] = {
        method: BackboneFeatures(
            backbone, info.mean, info.std, cache=FeatureCache(run_dir / "features"),
            cache_key={"checkpoint": file_digest(checkpoint_path(args.checkpoint)),
                       "dataset": spec, "image_size": info.image_size},
            device=device),
    }
    if "raw" in args.baselines:
        representations["raw pixels"] = RawPixels(info.mean, info.std)
    if "random" in args.baselines:
        representations["random init"] = BackboneFeatures(
            random_init_backbone(fresh_backbone, args.seed), info.mean, info.std, device=device)
    supervised = None
    if "supervised" in args.baselines:
        supervised = supervised_baseline(fresh_backbone, mean=info.mean, std=info.std,
                                         num_classes=train.num_classes or None, device=device)
    results = evaluate_label_efficiency(
        representations, train, test, protocols=args.protocol,
        labels_per_class=args.labels_per_class,
        seeds=list(range(args.seed, args.seed + args.seeds)),
        knn_k=args.knn_k, knn_temperature=args.knn_temperature,
        supervised=supervised, supervised_name="supervised from scratch", log=_say,
    )
    results.settings.update({"checkpoint": str(checkpoint_path(args.checkpoint)),
                             "run": checkpoint["run"], "step": checkpoint["step"],
                             "dataset": spec, "test_part": note})
    print(results.table())
    json_path = Path(args.json) if args.json else run_dir / "evaluation.json"
    results.save_json(json_path)
    print(f"results written to {json_path}")
    if args.plot:
        plot_label_efficiency(results, args.plot, title=f"{method} on {spec}")
        print(f"plot written to {args.plot}")
    return results


def _say(message: str) -> None:
    """Progress lines go to stderr, so stdout holds only the table and where it was written."""
    print(f"  {message}", file=sys.stderr, flush=True)
