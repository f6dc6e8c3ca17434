"""`fewlabels semi`: train a classifier from a few labels and the unlabeled images, optionally
starting from a pretrained backbone; `fewlabels finetune` is its supervised case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewlabels.atomic import atomic_write_text
from fewlabels.calibration import calibrated_probabilities, expected_calibration_error
from fewlabels.commands.arguments import (
    DEFAULT_BACKBONE,
    DEFAULT_DATA,
    add_backbone_options,
    add_config_options,
    add_data_options,
    add_device_options,
    add_length_options,
    add_run_options,
    budgets,
    given_config_values,
    non_negative_int,
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
from fewlabels.data.labeled import train_and_test
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.engine.trainer import train
from fewlabels.errors import UserError
from fewlabels.runs import (
    backbone_spec,
    build_method,
    data_info,
    describe,
    load_pretrained,
    method_config,
)
from fewlabels.semi import SEMI_METHODS, ClassifierMethod
from fewlabels.semi.classifier_run import (
    accuracy,
    backbone_state,
    fit_calibration,
    predict_logits,
    pseudo_label_warning,
    split_spec,
    store_calibration,
    streams,
)

RECIPE = "recipe"
METHOD = "method_option"
DEFAULT_SEMI_METHOD = "supervised"


def add_parser(subparsers: Any, argv: list[str]) -> None:
    add_classifier_parser(subparsers, argv, "semi")


def add_classifier_parser(subparsers: Any, argv: list[str], command: str) -> None:
    """`semi` (any classifier method) or `finetune` (the supervised method from --init)."""
    finetune = command == "finetune"
    asked = method_on_command_line(argv) if command in argv and not finetune else None
    method_name = "supervised" if finetune else (
        asked if asked in SEMI_METHODS else DEFAULT_SEMI_METHOD)
    method_class = SEMI_METHODS.get(method_name)
    if finetune:
        parser = subparsers.add_parser(
            "finetune", help="fine-tune a pretrained backbone on a few labels",
            description="Train a pretrained run's backbone and a new linear classifier on "
                        "K labels per class (the supervised method of `fewlabels semi` started "
                        "from --init). The run folder gets checkpoint.pt, run.json (with the "
                        "labeled split), metrics.jsonl and result.json (test accuracy).")
    else:
        parser = subparsers.add_parser(
            "semi", help="train a classifier from a few labels and the unlabeled images",
            description="Train a classifier on K labels per class and, for semi-supervised "
                        "methods, every training image without its label; optionally from a "
                        "pretrained run's backbone (--init). The run folder gets "
                        "checkpoint.pt, run.json (with the labeled split), metrics.jsonl "
                        "(losses, pseudo-label rate and accuracy) and result.json (test "
                        "accuracy of the moving average of the weights). The options below "
                        f"are those of --method {method_name}; `fewlabels semi --method NAME "
                        "--help` shows another method's.")
        parser.add_argument("--method", default=None,
                            help=f"method (default {DEFAULT_SEMI_METHOD}; see: fewlabels "
                                 "list methods)")
    parser.add_argument("--out", required=True, help="run folder to write (or resume)")
    parser.add_argument("--labels-per-class", type=budgets, default=None,
                        help="labeled images per class, chosen with --seed ('all': every "
                             "label)" + (" (default all)" if finetune else
                                         "; required for a new run"))
    parser.add_argument("--calibration-per-class", type=non_negative_int, default=None,
                        metavar="N",
                        help="hold out N more labeled images per class (counted in the label "
                             "budget, never trained on) to calibrate the confidences by "
                             "temperature scaling after training; fewlabels predict applies "
                             "the temperature (default 0: uncalibrated)")
    parser.add_argument("--init", required=finetune, default=None,
                        help="run folder of a pretrained run whose backbone to start from "
                             "(its backbone and normalisation are used)")
    add_data_options(parser, f"the --init run's data, else {DEFAULT_DATA}")
    if not finetune:
        parser.add_argument("--max-unlabeled", type=positive_int, default=None,
                            help="unlabeled stream of this many training images: the "
                                 "labeled ones and a seeded random choice of the others "
                                 "(default: every training image)")
    add_length_options(parser)
    if not finetune:
        add_backbone_options(parser, " (ignored with --init: the pretrained run's)")
    add_run_options(parser)
    add_device_options(parser)
    add_config_options(parser, TrainingRecipe, RECIPE,
                       f"training recipe (defaults: {method_name}'s)",
                       defaults=method_class.recipe)
    add_config_options(parser, method_class.Config, METHOD, f"{method_name} options",
                       rename_prefix=method_name)


def run(args: Any) -> dict[str, Any]:
    """Build (or resume) a classifier run from parsed arguments, train it and test it."""
    out = Path(args.out)
    finetune = args.command == "finetune"
    if finetune:
        args.method = "supervised"
        for name in ("backbone", "width", "depth", "patch_size", "heads", "feature_dim"):
            setattr(args, name, None)
    recipe_changes = given_config_values(args, RECIPE)
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(out)
        run_spec = checkpoint["run"]
        _refuse_changes(args, run_spec, out, recipe_changes)
        settings = resumed_settings(checkpoint, args.budget_minutes, args.budget_steps)
        data = run_spec["data"]
        train_part, test_part, note = train_and_test(
            data["spec"], data["image_size"], run_spec["data"]["info"]["channels"],
            data["on_corrupt"])
    else:
        refuse_existing_run(out)
        args.method = args.method or DEFAULT_SEMI_METHOD
        if SEMI_METHODS.get(args.method).domain_adaptation:
            raise UserError(f"{args.method} aligns a source domain with a target domain; "
                            f"run it with fewlabels adapt --method {args.method} --source "
                            "DATA --target DATA")
        if args.labels_per_class is None and not finetune:
            raise UserError("give --labels-per-class K (labeled images per class, or 'all')")
        settings = new_settings(
            args, SEMI_METHODS.get(args.method).recipe.replace(**recipe_changes), recipe_changes)
        run_spec, train_part, test_part, note = _new_run_spec(args, settings.seed)
    config = train_config(args, out, settings)
    fabric = start_devices(config)
    method = build_classifier(run_spec, out)
    images, labeled = streams(train_part, run_spec["split"], method.unlabeled_ratio,
                              run_spec["split"].get("max_unlabeled"))
    if not args.resume:
        start_classifier(method, run_spec, labeled, fabric.is_global_zero)
    run_spec["method_config"] = method.config_dict()
    if fabric.is_global_zero:
        write_run_description(out, run_spec, config)
        start = f"from {run_spec['init']}" if run_spec.get("init") else "from scratch"
        print(f"training {run_spec['method']} {start} on {len(labeled.images)} labeled "
              + (f"and {len(images)} unlabeled " if method.unlabeled_ratio else "")
              + f"images of {run_spec['data']['spec']}, backbone "
              f"{run_spec['backbone']['name']}, {fabric.world_size} device(s) {fabric.device}, "
              f"into {out}")
    result = train(method, images, config, run_spec, fabric, checkpoint, labeled)
    summary: dict[str, Any] = {"method": run_spec["method"], "step": result.step,
                               "labeled": len(labeled.images),
                               "labels_per_class": run_spec["split"]["labels_per_class"],
                               "seed": settings.seed, "init": run_spec.get("init")}
    if fabric.is_global_zero:
        summary |= _test(method, train_part, test_part, note, run_spec, out, fabric.device)
        summary |= {"minutes": result.elapsed_seconds / 60,
                    "images_per_second": result.images_per_second}
        atomic_write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
        print(f"{describe(load_checkpoint(out))}: test accuracy "
              f"{100 * summary['test_accuracy']:.2f}% on {len(test_part)} images ({note}), "
              f"{summary['minutes']:.1f} min, {result.images_per_second:.0f} images/s; "
              f"result in {out / 'result.json'}")
        calibration = summary.get("calibration")
        if calibration:
            print(f"confidences calibrated on {calibration['images']} held-out labels: "
                  f"temperature {calibration['temperature']:.3g}, test expected calibration "
                  f"error {summary['test_expected_calibration_error']:.3f} -> "
                  f"{calibration['test_expected_calibration_error']:.3f}")
        warning = pseudo_label_warning(out)
        if warning:
            print(f"warning: {warning}")
    return summary


def _test(method: ClassifierMethod, train_part: Any, test_part: Any, note: str,
          run_spec: dict[str, Any], out: Path, device: Any) -> dict[str, Any]:
    """Test accuracy and expected calibration error of the trained run; with held-out
    calibration labels, the temperature fitted on them (stored in the checkpoint for
    `fewlabels predict`) and the test error after it. Test labels are only reported."""
    network, mean, std = method.classifier_network(), method.data.mean, method.data.std
    logits = predict_logits(network, test_part.images, mean, std, device=device)
    probabilities = logits.softmax(dim=1)
    tested: dict[str, Any] = {
        "test_accuracy": accuracy(probabilities, test_part.labels),
        "test_images": len(test_part), "test_part": note,
        "test_expected_calibration_error": expected_calibration_error(probabilities,
                                                                      test_part.labels)}
    calibration = fit_calibration(network, train_part, run_spec["split"], mean, std,
                                  device=device)
    tested["label_budget"] = len(run_spec["split"]["labeled_indices"]) + (
        calibration["images"] if calibration else 0)
    if calibration is not None:
        store_calibration(out, calibration)
        calibrated = calibrated_probabilities(logits, calibration["temperature"])
        tested["calibration"] = calibration | {
            "test_expected_calibration_error": expected_calibration_error(
                calibrated, test_part.labels)}
    return tested


def build_classifier(run_spec: dict[str, Any], out: Path) -> ClassifierMethod:
    """The classifier method of a run spec, freshly initialised; a pretraining run's spec
    (resumed with the wrong command) is a one-line error."""
    method = build_method(run_spec)
    if not isinstance(method, ClassifierMethod):
        raise UserError(f"{out} holds a {run_spec['method']} pretraining run, not a "
                        "classifier; resume it with fewlabels pretrain --resume")
    return method


def start_classifier(method: ClassifierMethod, run_spec: dict[str, Any], labeled: Any,
                     verbose: bool) -> None:
    """A new run's starting weights: the --init run's backbone, and with --head-init probe
    a classifier fitted to the labeled images' features."""
    state = None
    if run_spec.get("init"):
        state = backbone_state(load_pretrained(run_spec["init"]).network)
    try:
        fitted = method.start_(state, labeled.images, labeled.labels)
    except RuntimeError as error:
        if state is None:
            raise
        raise UserError(f"the backbone of {run_spec['init']} cannot start a classifier "
                        "(its evaluated network is not a plain backbone); choose a "
                        "run of another method") from error
    if fitted is not None and verbose:
        print(f"classifier initialised by a probe on the labeled images' features "
              f"({100 * fitted:.0f}% of them right)")


def _new_run_spec(args: Any, seed: int) -> tuple[dict[str, Any], Any, Any, str]:
    """The spec of a new run, and its train and test parts."""
    init = None
    if args.init is not None:
        init = load_pretrained(args.init)
        spec = args.data or init.checkpoint["run"]["data"]["spec"]
        train_part, test_part, note = train_and_test(
            spec, init.data.image_size, init.data.channels, args.on_corrupt)
        info = data_info(train_part, train_part.num_classes)
        # The backbone learned on its own normalisation; keep it.
        info = info.__class__(**{**info.__dict__, "mean": init.data.mean, "std": init.data.std})
        backbone = init.checkpoint["run"]["backbone"]
        image_size = init.data.image_size
    else:
        spec = args.data or DEFAULT_DATA
        train_part, test_part, note = train_and_test(spec, args.image_size, None,
                                                     args.on_corrupt)
        info = data_info(train_part, train_part.num_classes)
        backbone = backbone_spec(args.backbone or DEFAULT_BACKBONE, args.width, args.depth,
                                 info.image_size, patch_size=args.patch_size, heads=args.heads,
                                 feature_dim=args.feature_dim)
        image_size = args.image_size
    labels_per_class = (args.labels_per_class or [None])[0]
    if args.labels_per_class and len(args.labels_per_class) > 1:
        raise UserError("--labels-per-class takes one number here (or 'all')")
    split = split_spec(train_part.labels, labels_per_class, seed,
                       args.calibration_per_class or 0) | {
        "max_unlabeled": getattr(args, "max_unlabeled", None)}
    # Per-image state (FlexMatch's predictions) is indexed like Batch.indices: by the
    # unlabeled pool, which --max-unlabeled makes smaller than the train part.
    pool, _ = streams(train_part, split, 0, split["max_unlabeled"])
    run_spec = {
        "kind": "classifier",
        "method": args.method,
        "method_config": given_config_values(args, METHOD),
        "backbone": backbone,
        "data": {"spec": spec, "image_size": image_size, "on_corrupt": args.on_corrupt,
                 "info": info.__dict__ | {"mean": list(info.mean), "std": list(info.std),
                                          "num_images": len(pool)}},
        "class_names": list(train_part.class_names),
        "split": split,
        "init": None if init is None else str(args.init),
        "representation": "backbone",
    }
    run_spec["method_config"] = method_config(args.method, run_spec["method_config"])
    return run_spec, train_part, test_part, note


def _refuse_changes(args: Any, run_spec: dict[str, Any], out: Path,
                    recipe_changes: dict[str, Any]) -> None:
    """Resuming continues the stored run; a different method, data, split, start or option is
    refused."""
    stored = {"method": run_spec["method"], "data": run_spec["data"]["spec"],
              "init": run_spec.get("init")}
    asked = {"method": args.method, "data": args.data, "init": args.init}
    for key, value in asked.items():
        if value is not None and value != stored[key]:
            raise UserError(f"{out} holds a run with {key} {stored[key]!r}, not {value!r}; "
                            "resume it as it is, or choose another --out")
    if args.labels_per_class is not None and (
            args.labels_per_class[0] != run_spec["split"]["labels_per_class"]):
        raise UserError(f"{out} was trained with --labels-per-class "
                        f"{run_spec['split']['labels_per_class']}; resume it without "
                        "--labels-per-class")
    if args.calibration_per_class is not None and (
            args.calibration_per_class != run_spec["split"].get("calibration_per_class", 0)):
        raise UserError(f"{out} was trained with --calibration-per-class "
                        f"{run_spec['split'].get('calibration_per_class', 0)}; resume it "
                        "without --calibration-per-class")
    changed = list(recipe_changes) + list(given_config_values(args, METHOD))
    if changed:
        raise UserError(f"--resume continues the stored run with its own settings; leave out "
                        f"{', '.join('--' + name.replace('_', '-') for name in changed)}")

