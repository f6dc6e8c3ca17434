"""The simulated active-learning loop: a labeled dataset with its labels hidden.

Start from the first batch (random, or the cold start), then each round: fit the classifier on
the labels revealed so far, test it, ask the strategy for the next batch, reveal its labels.
The loop reads a pool label only after the strategy asked for it (:class:`HiddenLabels`).

The round's classifier comes from a ``fit_round(labeled, revealed, seed)`` function
(:data:`FitRound`) that sees the labeled pool positions and their revealed labels, nothing
else of the labels, and returns a :class:`RoundModel`: the classifier, the pool's features it
and the strategies read, and its test probabilities. The default,
:func:`probe_rounds`, is the calibrated linear probe on the pool's frozen features;
:class:`fewlabels.active.network_rounds.NetworkRounds` trains a network every round
(fine-tuned or semi-supervised) and reads the pool through it.

Randomness: the first batch is drawn from ``seed`` alone, so every strategy of a seed with a
random first batch starts from the same images and the curves differ only by the queries;
queries draw from a second stream of the same seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch

from fewlabels.active.classifier import fit_round_classifier
from fewlabels.active.cold_start import cold_start
from fewlabels.active.strategies import STRATEGIES, QueryOptions, query
from fewlabels.calibration import expected_calibration_error
from fewlabels.evaluate.linear_probe import FeaturePreprocessing

FIRST_BATCHES = ("random", "cold-start")
_QUERY_STREAM = 7_919  # a second seed stream for the queries


def label_schedule(start: int, batch: int, rounds: int) -> list[int]:
    """Labels after each round: ``start, start + batch, ..., start + rounds * batch``."""
    return [start + batch * round_index for round_index in range(rounds + 1)]


class HiddenLabels:
    """The oracle: the pool's labels, revealed one position at a time."""

    def __init__(self, labels: torch.Tensor) -> None:
        self._labels = labels.long()
        self.revealed = torch.zeros(len(labels), dtype=torch.bool)

    def reveal(self, positions: torch.Tensor) -> torch.Tensor:
        positions = torch.as_tensor(positions, dtype=torch.long)
        self.revealed[positions] = True
        return self._labels[positions]


@dataclass
class RoundRecord:
    """One round: labels used, test accuracy and calibration of the classifier fitted on them."""

    labels: int
    accuracy: float
    expected_calibration_error: float
    temperature: float
    weight_decay: float
    classes_labeled: int
    seconds: float


@dataclass
class Curve:
    """One strategy's rounds for one seed and first batch."""

    strategy: str
    first: str
    seed: int
    rounds: list[RoundRecord] = field(default_factory=list)
    queried: list[int] = field(default_factory=list)  # pool positions, in the order asked


@dataclass
class RoundModel:
    """What a round's classifier gives the loop: the ``classifier`` the strategies ask (see
    :func:`~fewlabels.active.strategies.query`), the pool's ``features`` ``[N, D]`` it reads
    and the same ``prepared`` for distances, its probabilities of the test images ``[T, C]``,
    and the weight decay it was fitted with."""

    classifier: Any
    features: torch.Tensor
    prepared: torch.Tensor
    test_probabilities: torch.Tensor
    weight_decay: float


# (labeled pool positions [L], their revealed labels [L], seed) -> the round's model
FitRound = Callable[[torch.Tensor, torch.Tensor, int], RoundModel]


def probe_rounds(pool_features: torch.Tensor, test_features: torch.Tensor, *,
                 num_classes: int, preprocessing: FeaturePreprocessing) -> FitRound:
    """The default round classifier: the calibrated linear probe
    (:func:`~fewlabels.active.classifier.fit_round_classifier`) on the pool's frozen
    ``pool_features``, tested on ``test_features``."""
    prepared = preprocessing(pool_features)

    def fit_round(labeled: torch.Tensor, revealed: torch.Tensor, seed: int) -> RoundModel:
        classifier = fit_round_classifier(pool_features[labeled], revealed,
                                          num_classes=num_classes, preprocessing=preprocessing,
                                          seed=seed)
        return RoundModel(classifier, pool_features, prepared,
                          classifier.probabilities(test_features),
                          classifier.probe.weight_decay)

    return fit_round


def first_batch(first: str, prepared: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Pool positions of the first ``count`` labels: ``"random"`` or ``"cold-start"``."""
    generator = torch.Generator().manual_seed(seed)
    if first == "random":
        return torch.randperm(len(prepared), generator=generator)[:count]
    if first == "cold-start":
        return cold_start(prepared, count, generator=generator)
    raise ValueError(f"unknown first batch {first!r}; one of {FIRST_BATCHES}")


def simulate_curve(
    pool_features: torch.Tensor,
    pool_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    strategy: str,
    budgets: Sequence[int],
    seed: int = 0,
    first: str = "random",
    options: QueryOptions | None = None,
    preprocessing: FeaturePreprocessing | None = None,
    log: Callable[[str], None] | None = None,
    fit_round: FitRound | None = None,
) -> Curve:
    """Run the loop for one strategy and seed: ``budgets`` are the numbers of labels at each
    round (increasing; the first is the first batch). Returns the curve of test accuracies.

    ``pool_features`` choose the first batch (and, by default, are the probe's);
    ``fit_round`` makes each round's classifier (default :func:`probe_rounds` on
    ``pool_features`` and ``test_features``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    budgets = [int(b) for b in budgets]
    if not budgets or budgets[0] < 1 or any(b <= a for a, b in pairwise(budgets)):
        raise ValueError(f"budgets must be increasing and at least 1, got {budgets}")
    if budgets[-1] > len(pool_features):
        raise ValueError(f"{budgets[-1]} labels asked of a pool of {len(pool_features)} images")
    preprocessing = preprocessing or FeaturePreprocessing.fit(pool_features)
    prepared = preprocessing(pool_features)
    fit_round = fit_round or probe_rounds(pool_features, test_features,
                                          num_classes=num_classes, preprocessing=preprocessing)
    oracle = HiddenLabels(pool_labels)
    labeled = first_batch(first, prepared, budgets[0], seed)
    revealed = oracle.reveal(labeled)
    generator = torch.Generator().manual_seed(seed * _QUERY_STREAM + 1)
    curve = Curve(strategy, first, seed, queried=labeled.tolist())
    for round_index, budget in enumerate(budgets):
        began = time.perf_counter()
        model = fit_round(labeled, revealed, seed)
        probabilities = model.test_probabilities
        accuracy = (probabilities.argmax(dim=1) == test_labels).float().mean().item()
        record = RoundRecord(
            labels=len(labeled), accuracy=accuracy,
            expected_calibration_error=expected_calibration_error(probabilities, test_labels),
            temperature=model.classifier.temperature, weight_decay=model.weight_decay,
            classes_labeled=int(revealed.unique().numel()), seconds=0.0)
        if round_index + 1 < len(budgets):
            asked = query(strategy, features=model.features, labeled=labeled,
                          batch=budgets[round_index + 1] - budget,
                          classifier=model.classifier, prepared=model.prepared,
                          generator=generator, options=options)
            labeled = torch.cat([labeled, asked])
            revealed = torch.cat([revealed, oracle.reveal(asked)])
            curve.queried += asked.tolist()
        record.seconds = time.perf_counter() - began
        curve.rounds.append(record)
        if log is not None:
            log(f"{strategy} (first {first}, seed {seed}): {record.labels} labels, "
                f"accuracy {100 * accuracy:.2f}%, ECE {record.expected_calibration_error:.3f}")
    return curve
