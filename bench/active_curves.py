"""Active-learning curves: test accuracy from 20 to 500 labels for every query strategy, and the
cold start against a random first batch, mean and spread over seeds, on the frozen features of
one pretraining run (the classifier of every round: the calibrated linear probe, or with
``--classifier finetune|semi`` a network trained from the run's backbone every round, see
:mod:`fewlabels.active.network_rounds`; its curves go to another folder, by default
``bench/results/active_CLASSIFIER``).

Each curve (strategy, first batch, seed) is one file ``OUT/curves/STRATEGY__FIRST__seedS.json``,
written atomically when the curve is done; a curve with a file is read, not rerun, so a killed
benchmark resumes where it stopped. The report prints the Markdown table, the numbers that
decide the aim "the best strategy reaches with 100 labels the accuracy random selection needs
200 labels for" and the cold start against a random first batch, and writes
``OUT/summary.json`` and ``OUT/curves.png``.

    .venv/bin/python bench/active_curves.py --init bench/results/simclr/run
    .venv/bin/python bench/active_curves.py --init bench/results/simclr/run --report
    .venv/bin/python bench/active_curves.py --classifier finetune --strategies random,margin \
        --cold-start random,margin --labels 20,40,60,80,100,120,140,160,180,200 --seeds 0,1

The features are extracted once into the run's ``features`` cache (shared with
``fewlabels evaluate``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fewlabels.active.network_rounds import (
    CLASSIFIERS,
    NetworkRounds,
    NetworkTraining,
    refuse_strategies,
)
from fewlabels.active.plot import plot_active_curves
from fewlabels.active.pool import run_features
from fewlabels.active.results import ActiveResults
from fewlabels.active.simulate import Curve, RoundRecord, simulate_curve
from fewlabels.active.strategies import STRATEGIES, QueryOptions
from fewlabels.atomic import atomic_write_text
from fewlabels.data.labeled import train_and_test
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.evaluate.linear_probe import FeaturePreprocessing

LABELS = [20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 250, 300, 400, 500]
# the cold start is compared with a random first batch for these strategies
COLD_START_STRATEGIES = ["random", "margin"]


def curve_path(out: Path, strategy: str, first: str, seed: int) -> Path:
    return out / "curves" / f"{strategy}__{first}__seed{seed}.json"


def load_curve(path: Path) -> Curve:
    data = json.loads(path.read_text())
    return Curve(data["strategy"], data["first"], data["seed"],
                 [RoundRecord(**r) for r in data["rounds"]], data["queried"])


def planned(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    cells = [(s, "random", seed) for seed in args.seeds for s in args.strategies]
    cells += [(s, "cold-start", seed) for seed in args.seeds for s in args.cold_start]
    return cells


def run(args: argparse.Namespace) -> None:
    spec = args.data or load_checkpoint(args.init)["run"]["data"]["spec"]
    source = run_features(args.init, spec, None)
    train, test, note = train_and_test(spec, source.image_size, source.channels, "skip")
    print(f"features of {source.description} on {spec}: {len(train)} train, {len(test)} test "
          f"({note})", flush=True)
    train_features, test_features = source(train, "train"), source(test, "test")
    preprocessing = FeaturePreprocessing.fit(train_features)
    rounds, classifier = None, {"kind": "probe"}
    if args.classifier != "probe":
        training = NetworkTraining.choose(args.classifier, method=args.classifier_method,
                                          steps=args.classifier_steps,
                                          option_texts=args.classifier_option)
        rounds = NetworkRounds.from_run(args.init, training, train.images, test.images,
                                        num_classes=train.num_classes)
        classifier = training.settings(str(args.init), source.description)
    for strategy, first, seed in planned(args):
        path = curve_path(args.out, strategy, first, seed)
        if path.exists():
            print(f"{strategy} (first {first}) seed {seed}: done", flush=True)
            continue
        began = time.perf_counter()
        curve = simulate_curve(train_features, train.labels, test_features, test.labels,
                               num_classes=train.num_classes, strategy=strategy,
                               budgets=args.labels, seed=seed, first=first,
                               options=QueryOptions(), preprocessing=preprocessing,
                               fit_round=rounds)
        record = {"strategy": curve.strategy, "first": curve.first, "seed": curve.seed,
                  "rounds": [vars(r) for r in curve.rounds], "queried": curve.queried,
                  "init": str(args.init), "data": spec, "features": source.description,
                  "classifier": classifier, "minutes": (time.perf_counter() - began) / 60}
        atomic_write_text(path, json.dumps(record) + "\n")
        accuracies = " ".join(f"{100 * r.accuracy:.1f}" for r in curve.rounds)
        print(f"{strategy} (first {first}) seed {seed}: {accuracies} "
              f"({record['minutes']:.1f} min)", flush=True)


def report(args: argparse.Namespace) -> None:
    curves = [load_curve(curve_path(args.out, *cell)) for cell in planned(args)
              if curve_path(args.out, *cell).exists()]
    if not curves:
        print(f"no curves in {args.out / 'curves'} yet", file=sys.stderr)
        return
    results = ActiveResults(curves, {"init": str(args.init), "labels": args.labels,
                                     "seeds": args.seeds, "classifier": args.classifier})
    print(results.table())
    savings = results.savings(100, 200)
    print()
    if savings:
        target = savings["random_accuracy_at_baseline"]
        print(f"random selection: {100 * savings['random_accuracy']:.1f}% at 100 labels, "
              + (f"{100 * target:.1f}% at 200" if target is not None else "no 200-label round"))
        for name, row in sorted(savings["strategies"].items(),
                                key=lambda item: -item[1]["accuracy"]):
            needed = row["random_labels_for_it"]
            print(f"- {name}: {100 * row['accuracy']:.1f} ± {100 * row['std']:.1f}% at 100 "
                  "labels; random needs "
                  + (f"{needed:.0f} labels for it" if needed is not None else "more than "
                     f"{max(args.labels)} labels for it"))
        print(f"aim (best at 100 >= random at 200): {'met' if savings['met'] else 'not met'} "
              f"by {savings['best']}")
    summaries = {s.name: s for s in results.summaries()}
    first = min(args.labels)
    for strategy in args.cold_start:
        cold, plain = summaries.get(f"{strategy} (cold-start)"), summaries.get(strategy)
        if cold and plain and first in cold.accuracies and first in plain.accuracies:
            print(f"first batch of {first} ({strategy} after it): cold start "
                  f"{100 * cold.mean(first):.1f} ± {100 * cold.std(first):.1f}% against random "
                  f"{100 * plain.mean(first):.1f} ± {100 * plain.std(first):.1f}%")
    summary = {**results.to_json(), "savings": savings}
    summary.pop("curves")
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    plot_active_curves(results, args.out / "curves.png")
    print(f"\nwrote {args.out / 'summary.json'} and {args.out / 'curves.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", type=Path, default=Path("bench/results/simclr/run"),
                        help="pretraining run whose frozen features to use")
    parser.add_argument("--data", default=None, help="labeled data (default: the run's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the curves (default bench/results/active, or "
                             "bench/results/active_CLASSIFIER for a network classifier)")
    parser.add_argument("--classifier", choices=CLASSIFIERS, default="probe",
                        help="the classifier of every round (default probe)")
    parser.add_argument("--classifier-method", default=None,
                        help="semi: the semi-supervised method (default fixmatch)")
    parser.add_argument("--classifier-steps", type=int, default=None,
                        help="training steps per round (default: the command's)")
    parser.add_argument("--classifier-option", action="append", default=[],
                        metavar="NAME=VALUE", help="an option of the classifier method")
    parser.add_argument("--strategies", type=lambda t: t.split(","), default=list(STRATEGIES))
    parser.add_argument("--cold-start", type=lambda t: [s for s in t.split(",") if s],
                        default=COLD_START_STRATEGIES,
                        help="strategies also run after a cold-start first batch")
    parser.add_argument("--labels", type=lambda t: [int(x) for x in t.split(",")],
                        default=LABELS, help="labels after each round, comma-separated")
    parser.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")],
                        default=[0, 1, 2])
    parser.add_argument("--report", action="store_true", help="only read the curves and report")
    args = parser.parse_args()
    unknown = [s for s in args.strategies + args.cold_start if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if args.classifier != "probe":
        try:
            refuse_strategies(args.strategies + args.cold_start, args.classifier)
        except UserError as error:
            parser.error(str(error))
    if args.out is None:
        args.out = Path("bench/results/active" + ("" if args.classifier == "probe"
                                                  else f"_{args.classifier}"))
    if not args.report:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
