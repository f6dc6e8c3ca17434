"""Active learning: which images a person should label next.

- :mod:`~fewlabels.active.scores`: acquisition scores on probability tables (least confidence,
  margin, entropy, BALD, vote entropy, mean KL to the consensus);
- :mod:`~fewlabels.active.coreset`: greedy k-centre (core-set) on features;
- :mod:`~fewlabels.active.cold_start`: the first batch with no labels, from k-means clusters;
- :mod:`~fewlabels.active.typiclust`: TypiClust, typical images of the uncovered clusters
  (small budgets);
- :mod:`~fewlabels.active.batch`: batches spread over the most informative candidates;
- :mod:`~fewlabels.active.classifier`: each round's linear probe, calibrated by temperature
  scaling (:mod:`fewlabels.calibration`), its dropout samples and its committee;
- :mod:`~fewlabels.active.network_classifier` and :mod:`~fewlabels.active.network_rounds`:
  a network trained every round instead (fine-tuned or semi-supervised from the run's
  backbone), its head and backbone features behind the same interface (temperature 1);
- :mod:`~fewlabels.active.strategies`: the strategies by name;
- :mod:`~fewlabels.active.simulate` and :mod:`~fewlabels.active.results`: the simulated loop
  and its curves over seeds (the round's classifier from a ``fit_round`` function);
- :mod:`~fewlabels.active.state`: the real loop's state directory and its CSV files.

Typical use (simulated, on a run's cached features)::

    curve = simulate_curve(train_features, train_labels, test_features, test_labels,
                           num_classes=10, strategy="margin", budgets=[20, 40, 60])
"""

from fewlabels.active.batch import diverse_batch
from fewlabels.active.classifier import RoundClassifier, fit_round_classifier
from fewlabels.active.cold_start import cold_start
from fewlabels.active.coreset import k_centre_greedy
from fewlabels.active.results import ActiveResults, labels_to_reach
from fewlabels.active.scores import (
    bald,
    entropy,
    least_confidence,
    margin,
    mean_kl_to_consensus,
    vote_entropy,
)
from fewlabels.active.simulate import FIRST_BATCHES, label_schedule, simulate_curve
from fewlabels.active.strategies import STRATEGIES, QueryOptions, query
from fewlabels.active.typiclust import typicality, typiclust
from fewlabels.calibration import (
    expected_calibration_error,
    fit_temperature,
)

__all__ = [
    "FIRST_BATCHES", "STRATEGIES", "ActiveResults", "QueryOptions", "RoundClassifier", "bald",
    "cold_start", "diverse_batch", "entropy", "expected_calibration_error",
    "fit_round_classifier", "fit_temperature", "k_centre_greedy", "label_schedule",
    "labels_to_reach", "least_confidence", "margin", "mean_kl_to_consensus", "query",
    "simulate_curve", "typicality", "typiclust", "vote_entropy",
]
