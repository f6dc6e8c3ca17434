"""`fewlabels adapt`: unsupervised domain adaptation. A classifier learns from a labeled
source dataset and the unlabeled images of a target dataset, and is tested on the target.

The labeled stream is the source's train part with all its labels; the unlabeled stream is
the target's train part (or ``--max-unlabeled`` of its images, chosen with ``--seed``) whose
labels, when it has them, are hidden labels: logged as the pseudo-label accuracy, never
trained on. ``--method supervised`` is the source-only baseline (trained on the source
labels, tested on the target); the target-supervised ceiling is ``fewlabels semi --method
supervised --data TARGET --labels-per-class all``.

Two conversions make the domains one input space, both decided once per run and stored in
its spec:

- **Channels.** When one domain is gray (1 channel) and the other colour (3), each gray
  image is repeated into 3 equal channels, once, on the uint8 tensor
  (:func:`matching_channels`), so one backbone takes both.
- **Normalisation.** One mean and standard deviation per channel over source and target
  together, each domain weighing half (:func:`joint_mean_std`). The network is one function
  applied to both domains, as in DANN; normalising each domain with its own statistics would
  already align their pixel means and variances, a domain adaptation of its own that the
  source-only baseline would then get too, and a prediction would need to know the domain
  of its input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fewlabels.atomic import atomic_write_text
from fewlabels.commands.arguments import (
    DEFAULT_BACKBONE,
    add_backbone_options,
    add_config_options,
    add_device_options,
    add_length_options,
    add_on_corrupt_option,
    add_run_options,
    given_config_values,
    number,
    positive_int,
)
from fewlabels.commands.pretrain import method_on_command_line
from fewlabels.commands.run_settings import (
    new_settings,
    refuse_existing_run,
    resumed_settings,
    start_devices,
    train_config,
    write_run_description,
)
from fewlabels.commands.semi import METHOD, RECIPE, build_classifier, start_classifier
from fewlabels.data import load_dataset
from fewlabels.data.imageset import ImageSet
from fewlabels.data.labeled import train_and_test
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.engine.streams import LabeledStream
from fewlabels.engine.trainer import train
from fewlabels.errors import UserError
from fewlabels.methods.base import DataInfo
from fewlabels.runs import backbone_spec, describe, method_config
from fewlabels.semi import SEMI_METHODS, ClassifierMethod
from fewlabels.semi.classifier_run import accuracy, predict_probabilities, pseudo_label_warning

DEFAULT_ADAPT_METHOD = "dann"
STATISTICS_IMAGES = 10_000  # per domain, as ImageSet.channel_mean_std samples


def add_parser(subparsers: Any, argv: list[str]) -> None:
    asked = method_on_command_line(argv) if "adapt" in argv else DEFAULT_ADAPT_METHOD
    method_name = asked if asked in SEMI_METHODS else DEFAULT_ADAPT_METHOD
    method_class = SEMI_METHODS.get(method_name)
    parser = subparsers.add_parser(
        "adapt", help="domain adaptation: learn from a labeled source and an unlabeled "
                      "target, test on the target",
        description="Train a classifier on a labeled source dataset and the unlabeled "
                    "images of a target dataset (e.g. --source fashion-mnist --target "
                    "fashion-mnist-m), and test it on both. --method supervised is the "
                    "source-only baseline. The run folder gets checkpoint.pt, run.json, "
                    "metrics.jsonl and result.json (target_test_accuracy, "
                    "source_test_accuracy). The options below are those of --method "
                    f"{method_name}; `fewlabels adapt --method NAME --help` shows another "
                    "method's.")
    parser.add_argument("--method", default=None,
                        help=f"classifier method (default {DEFAULT_ADAPT_METHOD}; supervised "
                             "= source only, dann, teacher-adapt, or any classifier method "
                             "of `fewlabels list methods`)")
    parser.add_argument("--source", default=None,
                        help="labeled source dataset (required for a new run; same specs as "
                             "--data elsewhere, e.g. fashion-mnist, npz:PATH)")
    parser.add_argument("--target", default=None,
                        help="target dataset whose training images are used without labels "
                             "and whose test part is the test (required for a new run)")
    parser.add_argument("--out", required=True, help="run folder to write (or resume)")
    data = parser.add_argument_group("data")
    data.add_argument("--image-size", type=number(int, 8, 1024), default=None,
                      help="resize source and target images to this side in pixels "
                           "(default: as stored; they must then be of one size)")
    add_on_corrupt_option(data, "skip and count it")
    data.add_argument("--max-unlabeled", type=positive_int, default=None,
                      help="unlabeled stream of this many target training images, a seeded "
                           "random choice (default: all of them)")
    add_length_options(parser)
    add_backbone_options(parser)
    add_run_options(parser)
    add_device_options(parser)
    add_config_options(parser, TrainingRecipe, RECIPE,
                       f"training recipe (defaults: {method_name}'s)",
                       defaults=method_class.recipe)
    add_config_options(parser, method_class.Config, METHOD, f"{method_name} options",
                       rename_prefix=method_name)


# -- the two domains --------------------------------------------------------------------------


def matching_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``images [N, C, H, W]`` with ``channels`` channels: as they are when ``C`` is
    ``channels``, a gray image's one channel repeated when ``C`` is 1."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] != 1:
        raise UserError(f"cannot turn {images.shape[1]}-channel images into {channels}-channel "
                        "ones; give source and target with the same number of channels")
    return images.expand(-1, channels, -1, -1).contiguous()


def with_channels(part: ImageSet | None, channels: int) -> ImageSet | None:
    if part is None:
        return None
    return ImageSet(matching_channels(part.images, channels), part.labels,
                    list(part.class_names), part.name)


def joint_mean_std(*domains: torch.Tensor, max_images: int = STATISTICS_IMAGES
                   ) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (pixels in [0, 1]) of the equal-weight
    mixture of the domains' pixels: with each domain's mean ``m_d`` and variance ``v_d``
    (over its first ``max_images`` images), ``m = mean_d m_d`` and ``v = mean_d (v_d +
    m_d²) - m²``. Each domain weighs the same whatever its size, as in a batch with equal
    numbers of source and target images."""
    means, squares = [], []
    for images in domains:
        pixels = images[:max_images].double().div_(255).transpose(0, 1).flatten(1)  # [C, P]
        means.append(pixels.mean(dim=1))
        squares.append(pixels.pow(2).mean(dim=1))
    mean = torch.stack(means).mean(dim=0)
    variance = (torch.stack(squares).mean(dim=0) - mean.pow(2)).clamp_min(0)
    return mean.tolist(), variance.sqrt().clamp_min(1e-3).tolist()


def load_domains(source: str, target: str, image_size: int | None, on_corrupt: str
                 ) -> dict[str, Any]:
    """The parts of a run: ``source_train`` and ``source_test`` (labeled), ``target_train``
    (labels kept only as hidden labels, may be ``None``) and ``target_test`` (labeled, or
    ``None``), all with the same number of channels, and notes on the test parts."""
    source_bundle = load_dataset(source, image_size=image_size, on_corrupt=on_corrupt)
    if source_bundle.train is None or source_bundle.train.labels is None:
        raise UserError(f"--source {source} has no labels; the source domain must be "
                        "labeled (only the target's labels are unknown)")
    source_train, source_test, source_note = _labeled_parts(source, source_bundle, image_size,
                                                            on_corrupt)
    target_bundle = load_dataset(target, image_size=image_size, on_corrupt=on_corrupt)
    if target_bundle.train is None:
        raise UserError(f"--target {target} has no training images to adapt to")
    if target_bundle.train.labels is not None:
        target_train, target_test, target_note = _labeled_parts(target, target_bundle,
                                                                image_size, on_corrupt)
    else:
        target_train, target_test = target_bundle.train, target_bundle.test
        target_note = "test part"
        if target_test is None or target_test.labels is None:
            target_test, target_note = None, "none: the target has no labeled test images"
    if source_train.image_size != target_train.image_size:
        raise UserError(
            f"source images are {'x'.join(map(str, source_train.image_size))} px and target "
            f"images {'x'.join(map(str, target_train.image_size))} px; pass --image-size N "
            "to resize both to one size")
    classes = source_train.num_classes
    for part in (target_train, target_test):
        if part is not None and part.labels is not None and part.num_classes != classes:
            raise UserError(f"the source has {classes} classes but the target "
                            f"{part.num_classes}; both domains need the same classes")
    channels = max(source_train.channels, target_train.channels)
    parts = {"source_train": source_train, "source_test": source_test,
             "target_train": target_train, "target_test": target_test}
    return {**{name: with_channels(part, channels) for name, part in parts.items()},
            "source_note": source_note, "target_note": target_note,
            "source_channels": source_train.channels, "target_channels": target_train.channels}


def _labeled_parts(spec: str, bundle: Any, image_size: int | None, on_corrupt: str
                   ) -> tuple[ImageSet, ImageSet, str]:
    """Train and test parts of labeled data (a held-out test part when it has none)."""
    if bundle.test is not None and bundle.test.labels is not None:
        return bundle.train, bundle.test, "test part"
    return train_and_test(spec, image_size, None, on_corrupt)


def target_pool(target_train: ImageSet, max_unlabeled: int | None, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unlabeled stream's target images and their hidden labels (``None`` without
    labels): all of them, or a seeded random choice of ``max_unlabeled``, in index order."""
    images, labels = target_train.images, target_train.labels
    if max_unlabeled is None or max_unlabeled >= len(images):
        return images, labels
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(images), generator=generator)[:max_unlabeled].sort().values
    return images[chosen], None if labels is None else labels[chosen]


# -- the run ----------------------------------------------------------------------------------


def run(args: Any) -> dict[str, Any]:
    """Build (or resume) an adaptation run from parsed arguments, train it and test it on
    the target and the source."""
    out = Path(args.out)
    recipe_changes = given_config_values(args, RECIPE)
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(out)
        run_spec = checkpoint["run"]
        _refuse_changes(args, run_spec, out, recipe_changes)
        settings = resumed_settings(checkpoint, args.budget_minutes, args.budget_steps)
        domains = load_domains(run_spec["adapt"]["source"], run_spec["adapt"]["target"],
                               run_spec["data"]["image_size"], run_spec["data"]["on_corrupt"])
    else:
        refuse_existing_run(out)
        args.method = args.method or DEFAULT_ADAPT_METHOD
        if args.method not in SEMI_METHODS:
            raise UserError(f"{args.method} is not a classifier method; adapt trains a "
                            f"classifier: choose one of {', '.join(SEMI_METHODS.names())}")
        if args.source is None or args.target is None:
            raise UserError("give --source DATA (labeled) and --target DATA (its labels "
                            "unused) for a new run")
        settings = new_settings(
            args, SEMI_METHODS.get(args.method).recipe.replace(**recipe_changes), recipe_changes)
        domains = load_domains(args.source, args.target, args.image_size, args.on_corrupt)
        run_spec = _new_run_spec(args, domains)
    images, hidden_labels = target_pool(domains["target_train"],
                                        run_spec["adapt"]["max_unlabeled"], settings.seed)
    config = train_config(args, out, settings)
    fabric = start_devices(config)
    method = build_classifier(run_spec, out)
    run_spec["method_config"] = method.config_dict()
    source = domains["source_train"]
    labeled = LabeledStream(source.images, source.labels, method.unlabeled_ratio,
                            hidden_labels=hidden_labels)
    if not args.resume:  # --head-init probe: a classifier fitted to the source features
        start_classifier(method, run_spec, labeled, fabric.is_global_zero)
    if fabric.is_global_zero:
        write_run_description(out, run_spec, config)
        adapt = run_spec["adapt"]
        print(f"adapting {run_spec['method']} from {len(source)} labeled images of "
              f"{adapt['source']} to "
              + (f"{len(images)} unlabeled images of " if method.unlabeled_ratio else "")
              + f"{adapt['target']}, backbone {run_spec['backbone']['name']}, "
              f"{fabric.world_size} device(s) {fabric.device}, into {out}")
    result = train(method, images, config, run_spec, fabric, checkpoint, labeled)
    summary: dict[str, Any] = {"method": run_spec["method"], "step": result.step,
                               "source": run_spec["adapt"]["source"],
                               "target": run_spec["adapt"]["target"],
                               "source_images": len(source), "target_images": len(images),
                               "seed": settings.seed}
    if fabric.is_global_zero:
        summary |= _test(method, domains, fabric.device)
        summary |= {"minutes": result.elapsed_seconds / 60,
                    "images_per_second": result.images_per_second}
        atomic_write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
        target = summary["target_test_accuracy"]
        print(f"{describe(load_checkpoint(out))}: target test accuracy "
              + ("n/a (no labeled target test images)" if target is None
                 else f"{100 * target:.2f}% on {summary['target_test_images']} images")
              + f", source test accuracy {100 * summary['source_test_accuracy']:.2f}%, "
              f"{summary['minutes']:.1f} min, {result.images_per_second:.0f} images/s; "
              f"result in {out / 'result.json'}")
        warning = pseudo_label_warning(out)
        if warning:
            print(f"warning: {warning}")
    return summary


def _test(method: ClassifierMethod, domains: dict[str, Any], device: Any) -> dict[str, Any]:
    """Test accuracy of the evaluated network (the moving average) on both domains;
    ``test_accuracy`` is the target's, as in other classifier runs' results."""
    network, mean, std = method.classifier_network(), method.data.mean, method.data.std
    numbers: dict[str, Any] = {}
    for domain in ("source", "target"):
        part = domains[f"{domain}_test"]
        score = None if part is None else accuracy(
            predict_probabilities(network, part.images, mean, std, device=device), part.labels)
        numbers |= {f"{domain}_test_accuracy": score,
                    f"{domain}_test_images": 0 if part is None else len(part),
                    f"{domain}_test_part": domains[f"{domain}_note"]}
    numbers["test_accuracy"] = numbers["target_test_accuracy"]
    return numbers


def _new_run_spec(args: Any, domains: dict[str, Any]) -> dict[str, Any]:
    source, target = domains["source_train"], domains["target_train"]
    images, _ = target_pool(target, args.max_unlabeled, args.seed)
    mean, std = joint_mean_std(source.images, images)
    side = source.image_size[0]
    if source.image_size[1] != side:
        raise UserError(f"images must be square, got {side}x{source.image_size[1]}; pass "
                        "--image-size N")
    info = DataInfo(source.channels, side, tuple(mean), tuple(std), source.num_classes,
                    len(images))
    backbone = backbone_spec(args.backbone or DEFAULT_BACKBONE, args.width, args.depth, side,
                             patch_size=args.patch_size, heads=args.heads,
                             feature_dim=args.feature_dim)
    return {
        "kind": "classifier",
        "method": args.method,
        "method_config": method_config(args.method, given_config_values(args, METHOD)),
        "backbone": backbone,
        # The classifier is for the target: predict and evaluate default to its data.
        "data": {"spec": args.target, "image_size": args.image_size,
                 "on_corrupt": args.on_corrupt,
                 "info": info.__dict__ | {"mean": list(mean), "std": list(std)}},
        "class_names": list(source.class_names),
        "split": {"labels_per_class": None, "seed": args.seed,
                  "labeled": f"every label of {args.source}'s train part"},
        "adapt": {"source": args.source, "target": args.target,
                  "max_unlabeled": args.max_unlabeled,
                  "source_channels": domains["source_channels"],
                  "target_channels": domains["target_channels"],
                  "normalization": "one mean/std over source and target, each weighing half",
                  "gray_to_colour": domains["source_channels"] != domains["target_channels"]},
        "init": None,
        "representation": "backbone",
    }


def _refuse_changes(args: Any, run_spec: dict[str, Any], out: Path,
                    recipe_changes: dict[str, Any]) -> None:
    """Resuming continues the stored run; another method, domain or option is refused."""
    if "adapt" not in run_spec:
        raise UserError(f"{out} holds a {run_spec.get('method')} run that is not a domain "
                        "adaptation; resume it with the command that made it")
    stored = {"method": run_spec["method"], "source": run_spec["adapt"]["source"],
              "target": run_spec["adapt"]["target"]}
    for key, value in stored.items():
        asked = getattr(args, key)
        if asked is not None and asked != value:
            raise UserError(f"{out} holds a run with {key} {value!r}, not {asked!r}; "
                            "resume it as it is, or choose another --out")
    changed = list(recipe_changes) + list(given_config_values(args, METHOD))
    if changed:
        raise UserError(f"--resume continues the stored run with its own settings; leave out "
                        f"{', '.join('--' + name.replace('_', '-') for name in changed)}")
