"""`fewlabels evaluate`: label-efficiency of a pretrained backbone next to its baselines, and
how well its clusters agree with the classes."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from fewlabels.commands.arguments import (
    add_accelerator_option,
    add_data_options,
    budgets,
    names,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)
from fewlabels.data.labeled import train_and_test
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
from fewlabels.evaluate.clusters import DEFAULT_RESTARTS, HeadClusters, evaluate_clusters
from fewlabels.evaluate.finetune import FINETUNE_RECIPE_NOTE, finetune_protocol
from fewlabels.evaluate.semi_protocol import (
    SEMI_METHOD,
    SEMI_OPTIONS,
    SEMI_STEPS,
    parse_semi_options,
    semi_protocol,
    semi_protocol_note,
)
from fewlabels.report.plot import plot_label_efficiency
from fewlabels.runs import describe, load_method, load_pretrained, make_backbone
from fewlabels.semi.classifier_run import backbone_state


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "evaluate", help="label-efficiency and clustering evaluation of a pretrained backbone",
        description="kNN and linear probes on frozen features at budgets of labels per "
                    "class, averaged over split seeds, next to raw-pixel, random-init and "
                    "supervised-from-scratch baselines; with --protocol finetune also the "
                    "backbone fine-tuned with a new linear classifier on the same labels, and "
                    "with --protocol semi a semi-supervised method trained from it on the "
                    "labels and the unlabeled train images. A budget counts every label the "
                    "protocol uses. The clusters protocol scores k-means on the features "
                    "(k = classes) and the method's own cluster heads with NMI, ARI and "
                    "Hungarian-matched accuracy on the test part.")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder (or checkpoint.pt) made by fewlabels pretrain")
    parser.add_argument("--representation", default=None,
                        help="which network of the run to evaluate, e.g. backbone or "
                             "teacher (default: the one the run declares, as its paper does)")
    # evaluation resizes to the size the backbone was trained at
    add_data_options(parser, "the data the checkpoint was pretrained on", resize=False)
    add_evaluation_options(parser)
    parser.add_argument("--seed", type=number(int, 0), default=0,
                        help="first split seed (and k-means seed of the clusters protocol); "
                             "seeds seed..seed+N-1 are used (default 0)")
    add_accelerator_option(parser, "for feature extraction and the supervised baseline")


def add_evaluation_options(parser: Any) -> None:
    group = parser.add_argument_group("protocol")
    group.add_argument("--protocol",
                       type=names(["knn", "linear", "finetune", "semi", "clusters"]),
                       default=["knn", "linear"],
                       help="comma-separated protocols: knn, linear, finetune (the run's "
                            "backbone and a new linear classifier, all weights trained on "
                            "the budget's labels with the supervised classifier method, "
                            f"{FINETUNE_RECIPE_NOTE}; the moving average of the weights is "
                            "tested), semi (a semi-supervised method, --semi-method, from "
                            "the run's backbone on the budget's labels and the train images "
                            "without theirs), clusters (NMI, ARI and Hungarian-matched accuracy of "
                            "k-means with k = classes on L2-normalised features, and of the "
                            "method's own clusters) (default knn,linear)")
    group.add_argument("--labels-per-class", type=budgets, default=[1, 10, 100, None],
                       help="comma-separated budgets of labels per class, 'all' for every "
                            "label (default 1,10,100,all)")
    group.add_argument("--seeds", type=positive_int, default=3,
                       help="split seeds to average over, and k-means seeds of the clusters "
                            "protocol (default 3)")
    group.add_argument("--validation-per-class", type=non_negative_int, default=0,
                       help="extra labeled images per class to choose the probe's weight decay "
                            "on, counted in the budget (default 0: cross-validation inside "
                            "the labeled images)")
    group.add_argument("--baselines", type=names(["raw", "random", "supervised", "none"]),
                       default=["raw", "random", "supervised"],
                       help="comma-separated baselines: raw (pixels), random (initialisation), "
                            "supervised (the backbone trained from scratch on the same labels "
                            "as long as the finetune protocol: AdamW, lr 2e-3 for batches of "
                            "up to 128, weight decay 0.05, cosine decay; with knn, linear or "
                            "finetune), or none (default raw,random,supervised)")
    group.add_argument("--finetune-steps", type=positive_int, default=None,
                       help="training steps of the finetune protocol and of the supervised "
                            "baseline, rounded to whole passes over the labeled images "
                            "(default: 30 passes, clamped to [200, 2000] steps)")
    group.add_argument("--semi-method", default=SEMI_METHOD,
                       help="classifier method of the semi protocol (default "
                            f"{SEMI_METHOD}; see: fewlabels list methods)")
    group.add_argument("--semi-steps", type=positive_int, default=SEMI_STEPS,
                       help="training steps of the semi protocol, rounded to whole passes "
                            f"over its unlabeled images (default {SEMI_STEPS})")
    group.add_argument("--semi-option", action="append", default=[], metavar="NAME=VALUE",
                       help="an option of the semi protocol's method, e.g. "
                            "backbone-lr-scale=0 (repeatable; defaults: "
                            + ", ".join(f"{k.replace('_', '-')}={v}"
                                        for k, v in SEMI_OPTIONS.items()) + ")")
    group.add_argument("--semi-unlabeled", type=positive_int, default=None,
                       help="unlabeled images of the semi protocol: a random choice of this "
                            "many train images per split seed (default: all)")
    group.add_argument("--knn-k", type=positive_int, default=200,
                       help="neighbours of the kNN classifier (default 200)")
    group.add_argument("--knn-temperature", type=positive_float, default=0.1,
                       help="temperature T of the kNN votes exp(similarity/T) (default 0.1)")
    group.add_argument("--cluster-restarts", type=positive_int, default=DEFAULT_RESTARTS,
                       help="k-means++ restarts per seed in the clusters protocol; the one of "
                            "lowest inertia is kept, no labels involved (default "
                            f"{DEFAULT_RESTARTS})")
    group.add_argument("--json", default=None,
                       help="JSON file for the results (default RUN_DIR/evaluation.json)")
    group.add_argument("--plot", default=None, help="also plot the results to this PNG file")


def evaluation_device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "cuda":
        raise UserError("--accelerator cuda asked for, but no CUDA device is available")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def run(args: Any) -> Results:
    protocols = list(dict.fromkeys(args.protocol))
    label_protocols = [p for p in protocols if p != "clusters"]
    feature_protocols = [p for p in label_protocols if p not in ("finetune", "semi")]
    if not protocols:
        raise UserError("--protocol names no protocol; give knn, linear, finetune, semi "
                        "and/or clusters")
    if args.plot and not label_protocols:
        raise UserError("--plot draws label-efficiency curves; add knn, linear, finetune "
                        "or semi to --protocol")
    pretrained = load_pretrained(args.checkpoint, getattr(args, "representation", None))
    checkpoint, info = pretrained.checkpoint, pretrained.data
    run_dir = Path(args.checkpoint)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    spec = args.data or checkpoint["run"]["data"]["spec"]
    device = evaluation_device(args.accelerator)
    _say(f"evaluating {describe(checkpoint)}, representation {pretrained.representation}")
    train, test, note = train_and_test(spec, info.image_size, info.channels, args.on_corrupt)
    _say(f"data: {spec}, {len(train)} train and {len(test)} test images ({note})")

    def fresh_backbone() -> torch.nn.Module:
        return make_backbone(checkpoint["run"]["backbone"], info)

    method = checkpoint["run"]["method"]
    cache = FeatureCache(run_dir / "features")
    cache_key = {"checkpoint": file_digest(checkpoint_path(args.checkpoint)),
                 "dataset": spec, "image_size": info.image_size}
    representations: dict[str, Any] = {
        method: BackboneFeatures(
            pretrained.network, info.mean, info.std, cache=cache,
            cache_key={**cache_key, "representation": pretrained.representation},
            device=device),
    }
    if "raw" in args.baselines:
        representations["raw pixels"] = RawPixels(info.mean, info.std)
    if "random" in args.baselines:
        representations["random init"] = BackboneFeatures(
            random_init_backbone(fresh_backbone, args.seed), info.mean, info.std, device=device)
    seeds = list(range(args.seed, args.seed + args.seeds))
    if label_protocols and "clusters" in protocols:
        # both kinds of protocol read the same features: extract them once
        for name, provider in list(representations.items()):
            _say(f"features: {name}")
            representations[name] = (provider(train, "train"), provider(test, "test"))
    results = Results(settings={})
    if label_protocols:
        steps = getattr(args, "finetune_steps", None)
        supervised = finetune = semi = None
        info_classes = dataclasses.replace(info, num_classes=train.num_classes)
        if "supervised" in args.baselines:
            supervised = supervised_baseline(fresh_backbone, mean=info.mean, std=info.std,
                                             num_classes=train.num_classes or None,
                                             steps=steps, device=device)
        if "finetune" in label_protocols:
            finetune = finetune_protocol(
                backbone_state(pretrained.network), checkpoint["run"]["backbone"],
                info_classes, steps=steps, device=device)
        if "semi" in label_protocols:
            semi_options = {**SEMI_OPTIONS,
                            **parse_semi_options(args.semi_method, args.semi_option)}
            semi = semi_protocol(
                backbone_state(pretrained.network), checkpoint["run"]["backbone"],
                info_classes, train, method=args.semi_method, steps=args.semi_steps,
                unlabeled=args.semi_unlabeled, options=semi_options, device=device)
        results = evaluate_label_efficiency(
            representations, train, test, protocols=feature_protocols,
            labels_per_class=args.labels_per_class, seeds=seeds,
            validation_per_class=getattr(args, "validation_per_class", 0),
            knn_k=args.knn_k, knn_temperature=args.knn_temperature,
            supervised=supervised, supervised_name="supervised from scratch",
            finetune=finetune, finetune_name=method, semi=semi, log=_say,
        )
        if semi is not None:
            results.settings["semi_training"] = semi_protocol_note(
                args.semi_method, args.semi_steps, args.semi_unlabeled, semi_options)
        if finetune is not None:
            results.settings["finetune_training"] = (
                f"backbone + new linear classifier, {FINETUNE_RECIPE_NOTE}, "
                + (f"{steps} steps" if steps else "30 passes over the labels in [200, 2000] "
                   "steps") + ", moving average of the weights tested")
    if "clusters" in protocols:
        heads = _cluster_heads(args.checkpoint, method, info, cache, cache_key, device)
        results.clusters = evaluate_clusters(
            representations, train, test, heads=heads, seeds=seeds,
            restarts=getattr(args, "cluster_restarts", DEFAULT_RESTARTS), log=_say)
    results.settings.update({"checkpoint": str(checkpoint_path(args.checkpoint)),
                             "run": checkpoint["run"], "step": checkpoint["step"],
                             "representation": pretrained.representation,
                             "dataset": spec, "test_part": note})
    print(results.table())
    json_path = Path(args.json) if args.json else run_dir / "evaluation.json"
    results.save_json(json_path)
    print(f"results written to {json_path}")
    if args.plot:
        plot_label_efficiency(results, args.plot, title=f"{method} on {spec}")
        print(f"plot written to {args.plot}")
    return results


def _cluster_heads(checkpoint: str, method: str, info: Any, cache: FeatureCache,
                   cache_key: dict[str, Any], device: torch.device
                   ) -> dict[str, dict[str, HeadClusters]]:
    """The run's own cluster heads (``Method.cluster_heads()``) as providers of cached
    cluster assignments, under the method's name; none for a method without them."""
    loaded, _ = load_method(checkpoint)
    return {method: {
        name: HeadClusters(head, info.mean, info.std, cache=cache,
                           cache_key={**cache_key, "cluster_head": name}, device=device)
        for name, head in loaded.cluster_heads().items()}}


def _say(message: str) -> None:
    """Progress lines go to stderr, so stdout holds only the table and where it was written."""
    print(f"  {message}", file=sys.stderr, flush=True)
