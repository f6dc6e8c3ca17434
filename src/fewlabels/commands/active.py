"""`fewlabels active`: which images to label next.

``fewlabels active simulate`` runs the loop on labeled data with the labels hidden and draws
each strategy's test accuracy against the number of labels, next to random selection; the
classifier of every round is the calibrated linear probe on the run's frozen features, or with
``--classifier finetune|semi`` a network trained from the run's backbone
(:mod:`fewlabels.active.network_rounds`).
``fewlabels active next`` is the loop for a person: it writes the images to label next to a CSV
file in a state folder, and the next call reads the filled labels, retrains and proposes more.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fewlabels.active.batch import DEFAULT_DIVERSITY_FACTOR, DIVERSITY_METHODS
from fewlabels.active.classifier import (
    DEFAULT_COMMITTEE,
    DEFAULT_DROPOUT,
    DEFAULT_DROPOUT_SAMPLES,
)
from fewlabels.active.loop import DEFAULT_STRATEGY, propose_next
from fewlabels.active.network_rounds import (
    CLASSIFIERS,
    DEFAULT_SEMI_METHOD,
    DEFAULT_STEPS,
    NetworkRounds,
    NetworkTraining,
    refuse_strategies,
)
from fewlabels.active.plot import plot_active_curves
from fewlabels.active.pool import run_features
from fewlabels.active.results import ActiveResults
from fewlabels.active.simulate import FIRST_BATCHES, label_schedule, simulate_curve
from fewlabels.active.state import CSV_COLUMNS
from fewlabels.active.strategies import STRATEGIES, QueryOptions
from fewlabels.commands.arguments import (
    DATA_HELP,
    add_accelerator_option,
    add_on_corrupt_option,
    names,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)
from fewlabels.commands.evaluate import evaluation_device
from fewlabels.data.labeled import train_and_test
from fewlabels.errors import UserError
from fewlabels.evaluate.linear_probe import FeaturePreprocessing

DEFAULT_SIMULATED_STRATEGIES = ["margin", "typiclust", "typiclust-then-margin", "core-set"]
PROBE_SETTINGS = {"kind": "probe",
                  "description": "linear probe (weight decay by cross-validation), temperature "
                                 "fitted on out-of-fold logits"}


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "active", help="active learning: which images to label next (simulate, next)",
        description="Active learning on a pretraining run's features: the classifier of "
                    "every round is a linear probe on the frozen features, with confidences "
                    "calibrated by temperature scaling ('simulate' can train a fine-tuned or "
                    "semi-supervised network instead: --classifier). 'simulate' measures "
                    "strategies on labeled data with the labels hidden; 'next' proposes images "
                    "for a person to label.")
    commands = parser.add_subparsers(dest="active_command", required=True,
                                     parser_class=type(parser), metavar="{simulate,next}")
    _add_simulate(commands)
    _add_next(commands)


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("query")
    group.add_argument("--diversity-factor", type=number(float, 1), default=None,
                       help="score-based strategies pick the batch spread over the top "
                            "FACTOR x batch images by score (Zhdanov 2019); 1 = the plain top "
                            f"batch (default {DEFAULT_DIVERSITY_FACTOR:g})")
    group.add_argument("--diversity", choices=DIVERSITY_METHODS, default=None,
                       help="how the batch is spread: one image per k-means cluster of the "
                            "candidates, or greedy k-centre away from the labeled images "
                            "(default k-means)")
    group.add_argument("--dropout", type=number(float, 0, 0.95), default=None,
                       help=f"bald: dropout rate on the probe's input (default {DEFAULT_DROPOUT})")
    group.add_argument("--dropout-samples", type=number(int, 2), default=None,
                       help=f"bald: Monte-Carlo dropout samples (default "
                            f"{DEFAULT_DROPOUT_SAMPLES})")
    group.add_argument("--committee", type=number(int, 2), default=None,
                       help="vote-entropy and mean-kl: probes on bootstrap resamples of the "
                            f"labeled images (default {DEFAULT_COMMITTEE})")


def _query_options(args: Any) -> QueryOptions:
    given = {"diversity_factor": args.diversity_factor, "diversity": args.diversity,
             "dropout": args.dropout, "dropout_samples": args.dropout_samples,
             "committee": args.committee}
    return QueryOptions(**{k: v for k, v in given.items() if v is not None})


def _add_simulate(commands: Any) -> None:
    parser = commands.add_parser(
        "simulate", help="active-learning curves on labeled data with the labels hidden",
        description="Start from --start labels (random or the cold start), then for --rounds "
                    "rounds: fit the classifier on the labels revealed so far (the probe on "
                    "the frozen features, or a network: --classifier), test it on the "
                    "test part, query --batch images with the strategy and reveal their "
                    "labels. Every strategy is compared with random selection over --seeds "
                    "seeds (each seed's random first batch is shared by all strategies). "
                    "Writes OUT/active.json and a plot.")
    parser.add_argument("--init", required=True, metavar="RUN",
                        help="pretraining run (folder) whose frozen features the probe uses "
                             "(and whose backbone a network classifier starts from)")
    parser.add_argument("--data", default=None,
                        help=f"{DATA_HELP}, with labels (default: the data of the run)")
    parser.add_argument("--strategy", type=names(STRATEGIES),
                        default=DEFAULT_SIMULATED_STRATEGIES,
                        help=f"comma-separated strategies: {', '.join(STRATEGIES)}; random is "
                             "always run as the baseline (default "
                             f"{','.join(DEFAULT_SIMULATED_STRATEGIES)})")
    parser.add_argument("--first", choices=FIRST_BATCHES, default="random",
                        help="the first batch: random, or the cold start (one image near each "
                             "k-means centre of the features, no labels needed) (default "
                             "random)")
    parser.add_argument("--start", type=positive_int, default=20,
                        help="labels of the first batch (default 20)")
    parser.add_argument("--batch", type=positive_int, default=20,
                        help="images queried per round (default 20)")
    parser.add_argument("--rounds", type=non_negative_int, default=5,
                        help="query rounds after the first batch (default 5)")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="seeds to average over (default 3)")
    parser.add_argument("--seed", type=number(int, 0), default=0,
                        help="first seed; seeds seed..seed+N-1 are used (default 0)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for active.json (default RUN/active)")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="the plot of the curves (default OUT/active.png)")
    parser.add_argument("--representation", default=None,
                        help="which network of the run gives the features (default: the one "
                             "the run declares)")
    add_on_corrupt_option(parser)
    add_accelerator_option(parser, "for feature extraction and the rounds' training")
    _add_classifier_options(parser)
    _add_query_options(parser)


def _add_classifier_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "the classifier of every round",
        "probe: a linear probe on the run's frozen features, its temperature fitted on "
        "out-of-fold logits (seconds a round). finetune: the supervised method trained from the "
        "run's backbone on the labeled images (the fine-tuning protocol's recipe); semi: a "
        "semi-supervised method (--classifier-method) from the backbone on the labeled images "
        "and the pool's images without labels (head from a probe, backbone at 0.1x the "
        "learning rate). A network starts again from the run every round, and reads the pool "
        "once a round: its backbone's features for the strategies' distances, its head's "
        "probabilities for their scores, with temperature 1 (not calibrated: the results "
        "report the ECE). The committee strategies (vote-entropy, mean-kl) need the probe.")
    group.add_argument("--classifier", choices=CLASSIFIERS, default="probe",
                       help="probe, finetune or semi (default probe)")
    group.add_argument("--classifier-method", default=None, metavar="NAME",
                       help=f"semi: the semi-supervised method (default {DEFAULT_SEMI_METHOD}; "
                            "see: fewlabels list methods)")
    group.add_argument("--classifier-steps", type=positive_int, default=None, metavar="N",
                       help="training steps per round, rounded to whole passes over the "
                            "labeled images (finetune) or the unlabeled ones (semi) (default "
                            f"{DEFAULT_STEPS['finetune']} for finetune, {DEFAULT_STEPS['semi']} "
                            "for semi: with the passes over pool and test images 20 s and "
                            "about a minute a round of the small ConvNet on one CPU core)")
    group.add_argument("--classifier-minutes", type=positive_float, default=None, metavar="M",
                       help="stop each round's training after M minutes of wall-clock time "
                            "(the schedules still follow --classifier-steps; results then "
                            "depend on the machine's speed)")
    group.add_argument("--classifier-unlabeled", type=positive_int, default=None, metavar="N",
                       help="semi: a seeded random choice of N pool images as the unlabeled "
                            "stream (default: as many as the steps see once, steps x mu x "
                            "batch)")
    group.add_argument("--classifier-option", action="append", default=[],
                       metavar="NAME=VALUE",
                       help="an option of the classifier method, e.g. head-init=probe or "
                            "backbone-lr-scale=0.1 (repeatable)")


def _network_training(args: Any) -> NetworkTraining | None:
    """The --classifier options, checked before anything is loaded (``None``: the probe)."""
    if args.classifier == "probe":
        given = [flag for flag, value in (
            ("--classifier-method", args.classifier_method),
            ("--classifier-steps", args.classifier_steps),
            ("--classifier-minutes", args.classifier_minutes),
            ("--classifier-unlabeled", args.classifier_unlabeled),
            ("--classifier-option", args.classifier_option or None)) if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} train a network; give --classifier finetune "
                            "or semi with them")
        return None
    refuse_strategies(args.strategy, args.classifier)
    return NetworkTraining.choose(args.classifier, method=args.classifier_method,
                                  steps=args.classifier_steps, minutes=args.classifier_minutes,
                                  option_texts=args.classifier_option,
                                  unlabeled=args.classifier_unlabeled)


def _add_next(commands: Any) -> None:
    parser = commands.add_parser(
        "next", help="propose the images a person should label next, as a CSV file",
        description="Reads the labels filled into the state folder's last CSV file, retrains "
                    "the probe on every label so far and writes the next batch to "
                    "STATE/to-label-NNN.csv with the columns " + ", ".join(CSV_COLUMNS)
                    + ": fill the label column with class names and run the same command "
                    "again. The first batch (no labels yet) is the cold start. Images are "
                    "known by their path in the folder; the state folder is written "
                    "atomically, so an interrupted call can simply be run again. Images in "
                    "class folders count as labeled.")
    parser.add_argument("--data", required=True, help=f"{DATA_HELP}, e.g. folder:PATH")
    parser.add_argument("--state", required=True, metavar="DIR",
                        help="folder of the loop's state and CSV files (made on the first call)")
    parser.add_argument("--batch", type=positive_int, default=20,
                        help="images to propose (default 20)")
    parser.add_argument("--init", default=None, metavar="RUN",
                        help="pretraining run whose frozen features to use (default: the "
                             "state's, else raw pixels)")
    parser.add_argument("--strategy", choices=[s for s in STRATEGIES if s != "random"] + ["random"],
                        default=None,
                        help=f"query strategy (default: the state's, else {DEFAULT_STRATEGY})")
    parser.add_argument("--classes", type=lambda text: [c for c in text.split(",") if c.strip()],
                        default=[], metavar="NAME,NAME,...",
                        help="class names to label with, added to the data's class folders "
                             "(needed for a folder without class folders)")
    parser.add_argument("--seed", type=number(int, 0), default=0,
                        help="seed of the loop, fixed when it starts (default 0)")
    add_on_corrupt_option(parser)
    add_accelerator_option(parser, "for feature extraction")
    _add_query_options(parser)


def run(args: Any) -> Any:
    if args.active_command == "simulate":
        return run_simulate(args)
    return run_next(args)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_simulate(args: Any) -> ActiveResults:
    training = _network_training(args)
    device = evaluation_device(args.accelerator)
    source = run_features(args.init, args.data or _run_data(args.init), None, device=device,
                          representation=args.representation)
    spec = args.data or _run_data(args.init)
    train, test, note = train_and_test(spec, source.image_size, source.channels,
                                       args.on_corrupt)
    budgets = label_schedule(args.start, args.batch, args.rounds)
    if budgets[-1] > len(train):
        raise UserError(f"--start {args.start} + --rounds {args.rounds} x --batch {args.batch} "
                        f"= {budgets[-1]} labels, more than the {len(train)} train images of "
                        f"{spec}; ask for fewer")
    _say(f"features: {source.description} on {spec} ({len(train)} train, {len(test)} test, "
         f"{note})")
    train_features, test_features = source(train, "train"), source(test, "test")
    assert train.labels is not None and test.labels is not None
    strategies = ["random", *[s for s in dict.fromkeys(args.strategy) if s != "random"]]
    seeds = list(range(args.seed, args.seed + args.seeds))
    options = _query_options(args)
    preprocessing = FeaturePreprocessing.fit(train_features)
    rounds, classifier = None, dict(PROBE_SETTINGS)
    if training is not None:
        rounds = NetworkRounds.from_run(args.init, training, train.images, test.images,
                                        num_classes=train.num_classes,
                                        representation=args.representation, device=device)
        classifier = training.settings(str(args.init), source.description)
        _say(f"classifier of every round: {training.method} from {args.init}, "
             f"{training.steps} steps" + (" on the labeled and unlabeled pool images"
                                          if training.kind == "semi" else ""))
    results = ActiveResults(settings={
        "init": str(args.init), "features": source.description, "data": spec,
        "test_part": note, "budgets": budgets, "first": args.first, "seeds": seeds,
        "classifier": classifier, "query_options": vars(options)})
    for seed in seeds:
        for strategy in strategies:
            results.curves.append(simulate_curve(
                train_features, train.labels, test_features, test.labels,
                num_classes=train.num_classes, strategy=strategy, budgets=budgets, seed=seed,
                first=args.first, options=options, preprocessing=preprocessing, log=_say,
                fit_round=rounds))
    if rounds is not None:
        classifier["trained"] = rounds.summary()
    out = Path(args.out) if args.out else Path(args.init) / "active"
    results.save_json(out / "active.json")
    plot = Path(args.plot) if args.plot else out / "active.png"
    plot_active_curves(results, plot, title=f"active learning on {spec} "
                                            f"({len(seeds)} seeds, first batch {args.first})")
    print(results.table())
    print(f"results written to {out / 'active.json'}, plot to {plot}")
    return results


def _run_data(run_dir: str) -> str:
    from fewlabels.engine.checkpoint import load_checkpoint

    return load_checkpoint(run_dir)["run"]["data"]["spec"]


def run_next(args: Any) -> Any:
    directory = Path(args.state)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--state {directory} is a file; give a folder")
    directory.mkdir(parents=True, exist_ok=True)
    device = evaluation_device(args.accelerator)

    def source_for(init: str | None) -> Any:
        return run_features(init, args.data, directory / "features", device=device,
                            key_by_ids=True)

    outcome = propose_next(directory, spec=args.data, batch=args.batch, source_for=source_for,
                           init=args.init, strategy=args.strategy, classes=args.classes,
                           seed=args.seed, options=_query_options(args),
                           on_corrupt=args.on_corrupt)
    if outcome.rewritten:
        print(f"the last call stopped before writing {outcome.csv_path}; wrote it again: fill "
              "in its label column, then run this command again")
        return outcome
    summary = outcome.summary
    line = (f"round {summary['round']}: {summary['labeled']} labeled images "
            f"({summary['classes_labeled']} classes) of {summary['pool']}")
    if summary["temperature"] is not None:
        accuracy = summary["cross_validated_accuracy"]
        line += (f", probe accuracy {100 * accuracy:.1f}% by cross-validation"
                 if accuracy is not None else "")
        line += f", temperature {summary['temperature']:.2f}"
    if outcome.csv_path is None:
        print(line + "; every image has a label")
    else:
        print(line + f"; {summary['asked']} images chosen by {summary['chosen_by']} in "
              f"{outcome.csv_path}: fill in the label column, then run this command again")
    return outcome
