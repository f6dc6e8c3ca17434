"""Query strategies by name: which unlabeled pool images to label next.

Every strategy works on *pool positions* (rows of the pool's feature matrix). The caller maps
positions to stable image ids; a strategy sees the labeled positions and returns unlabeled
positions, never positions inside the unlabeled subset (the confusion of baal-org/baal#29).

- ``random``: uniform without replacement, the baseline every curve is drawn against.
- ``least-confidence``, ``margin``, ``entropy``: scores of the calibrated probe's
  probabilities (:mod:`fewlabels.active.scores`).
- ``bald``: mutual information over Monte-Carlo dropout samples of the probe, computed in
  chunks of the pool.
- ``vote-entropy``, ``mean-kl``: disagreement of a committee of probes fitted on bootstrap
  resamples of the labeled images.
- ``core-set``: greedy k-centre on the prepared features (no classifier needed).
- ``typiclust``: the most typical image of each of the largest clusters no label covers
  (:mod:`fewlabels.active.typiclust`; no classifier needed), for small budgets.
- ``typiclust-then-margin``: TypiClust below :data:`SWITCH_LABELS_PER_CLASS` labels per class,
  margin from there on: Hacohen et al. 2022 found typicality best at small budgets and
  uncertainty at large ones, and so did ``bench/active_curves.py`` (docs/benchmarks.md).

The score-based strategies spread their batch with :func:`fewlabels.active.batch.diverse_batch`
(``diversity_factor`` 1 turns that off). Features for distances are the probe's prepared ones
(L2-normalised), the space the classifier itself works in.

The classifier is the round's probe (:class:`~fewlabels.active.classifier.RoundClassifier`)
or a trained network's head on its own backbone's features
(:class:`~fewlabels.active.network_classifier.NetworkClassifier`, which has no committee);
:class:`PoolClassifier` is what every strategy but the committees asks of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fewlabels.active.batch import DEFAULT_DIVERSITY, DEFAULT_DIVERSITY_FACTOR, diverse_batch
from fewlabels.active.classifier import (
    DEFAULT_COMMITTEE,
    DEFAULT_DROPOUT,
    DEFAULT_DROPOUT_SAMPLES,
    RoundClassifier,
)
from fewlabels.active.coreset import k_centre_greedy
from fewlabels.active.scores import (
    DEFAULT_CHUNK_ELEMENTS,
    bald,
    chunked_disagreement,
    entropy,
    least_confidence,
    margin,
    mean_kl_to_consensus,
    vote_entropy,
)
from fewlabels.active.typiclust import typiclust

UNCERTAINTY_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "least-confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}
COMMITTEE_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "vote-entropy": vote_entropy,
    "mean-kl": mean_kl_to_consensus,
}
STRATEGIES = ("random", *UNCERTAINTY_SCORES, "bald", *COMMITTEE_SCORES, "core-set",
              "typiclust", "typiclust-then-margin")
# Where typiclust-then-margin switches: on the 10-minute SimCLR features of Fashion-MNIST
# margin overtook TypiClust between 14 and 16 labels per class on split seeds 0 and 1
# (bench/active_curves.py, eighth session).
SWITCH_LABELS_PER_CLASS = 15
# strategies that need no classifier (and so work before any label is known)
NEEDS_NO_CLASSIFIER = ("random", "core-set", "typiclust")


class PoolClassifier(Protocol):
    """What the strategies ask of a round's classifier: calibrated ``probabilities`` of the
    pool's features, ``num_classes`` and ``temperature``; BALD also ``dropout_weights`` and
    ``sampled_probabilities``, the committee scores ``committee`` (the probe only)."""

    num_classes: Any
    temperature: float

    def probabilities(self, features: torch.Tensor) -> torch.Tensor: ...


@dataclass
class QueryOptions:
    """Knobs of the strategies (defaults: see the modules that use them)."""

    diversity_factor: float = DEFAULT_DIVERSITY_FACTOR
    diversity: str = DEFAULT_DIVERSITY
    dropout: float = DEFAULT_DROPOUT
    dropout_samples: int = DEFAULT_DROPOUT_SAMPLES
    committee: int = DEFAULT_COMMITTEE
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS


def unlabeled_positions(pool_size: int, labeled: torch.Tensor) -> torch.Tensor:
    """The pool positions not in ``labeled``, ascending."""
    mask = torch.ones(pool_size, dtype=torch.bool)
    mask[torch.as_tensor(labeled, dtype=torch.long)] = False
    return mask.nonzero().flatten()


def pool_scores(strategy: str, classifier: PoolClassifier | RoundClassifier,
                features: torch.Tensor,
                generator: torch.Generator, options: QueryOptions) -> torch.Tensor:
    """The acquisition score ``[n]`` of ``strategy`` for raw ``features`` ``[n, D]``."""
    classes = classifier.num_classes
    if strategy in UNCERTAINTY_SCORES:
        return UNCERTAINTY_SCORES[strategy](classifier.probabilities(features))
    if strategy == "bald":
        weights = classifier.dropout_weights(options.dropout_samples, options.dropout, generator)
        return chunked_disagreement(
            bald, lambda start, stop: classifier.sampled_probabilities(features[start:stop],
                                                                       weights),
            len(features), samples=options.dropout_samples, classes=classes,
            chunk_elements=options.chunk_elements)
    if strategy in COMMITTEE_SCORES:
        if not isinstance(classifier, RoundClassifier):
            raise ValueError(f"{strategy} needs a committee of probes; this classifier has none")
        members = classifier.committee(options.committee, generator)

        def member_probabilities(start: int, stop: int) -> torch.Tensor:
            chunk = features[start:stop]
            return torch.stack([member.logits(chunk) / classifier.temperature
                                for member in members]).softmax(dim=2)

        return chunked_disagreement(COMMITTEE_SCORES[strategy], member_probabilities,
                                    len(features), samples=len(members), classes=classes,
                                    chunk_elements=options.chunk_elements)
    raise ValueError(f"{strategy!r} is not a score-based strategy")


def query(
    strategy: str,
    *,
    features: torch.Tensor,
    labeled: torch.Tensor,
    batch: int,
    classifier: PoolClassifier | RoundClassifier | None,
    prepared: torch.Tensor,
    generator: torch.Generator,
    options: QueryOptions | None = None,
) -> torch.Tensor:
    """Pool positions of the next ``batch`` images to label (distinct, none labeled), in the
    order the strategy ranks them.

    ``features`` are the pool's raw features ``[N, D]`` (the classifier prepares its own),
    ``prepared`` the same prepared for distances, ``labeled`` the labeled positions.
    ``classifier`` may be ``None`` only for the strategies in :data:`NEEDS_NO_CLASSIFIER`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    options = options or QueryOptions()
    labeled = torch.as_tensor(labeled, dtype=torch.long)
    unlabeled = unlabeled_positions(len(features), labeled)
    batch = min(batch, len(unlabeled))
    if batch == 0:
        return torch.zeros(0, dtype=torch.long)
    if strategy == "random":
        order = torch.randperm(len(unlabeled), generator=generator)
        return unlabeled[order[:batch]]
    if strategy == "core-set":
        return k_centre_greedy(prepared, labeled, batch, candidates=unlabeled)
    if strategy == "typiclust-then-margin":
        few = classifier is None or len(labeled) < SWITCH_LABELS_PER_CLASS * classifier.num_classes
        strategy = "typiclust" if few else "margin"
    if strategy == "typiclust":
        return typiclust(prepared, labeled, batch, generator=generator)
    if classifier is None:
        raise ValueError(f"strategy {strategy!r} needs a classifier")
    scores = pool_scores(strategy, classifier, features[unlabeled], generator, options)
    chosen = diverse_batch(scores, prepared[unlabeled], batch, generator=generator,
                           factor=options.diversity_factor, method=options.diversity,
                           labeled_features=prepared[labeled])
    return unlabeled[chosen]
