"""A trained network as the classifier of an active-learning round, behind the interface the
strategies use for the linear probe (:class:`~fewlabels.active.classifier.RoundClassifier`).

A classifier method's network is a backbone and a linear head
(:class:`~fewlabels.semi.base.ClassifierNetwork`). One pass over the pool's images
(:func:`fewlabels.evaluate.features.extract_features`: batched, ``no_grad``, eval mode)
gives the backbone's features ``[N, D]``; :class:`NetworkClassifier` holds the head and
turns features into logits and probabilities, so its probabilities of those features are the
network's softmax on the images, and the strategies that measure distances (core-set,
TypiClust, the spread of a batch) get the same features without a second pass.

Calibration: the temperature stays 1 unless given. Fitting one on the network's own training
images would see logits it was trained to and come out too small (over-confident), and fitting
it on out-of-fold logits, as the probe does, would mean training the network once per fold.
The rounds report the expected calibration error of these uncalibrated probabilities.

BALD draws Monte-Carlo dropout samples of the head alone (dropout on its input, as for the
probe): ``W_s = W diag(m_s) / (1 - p)``. The committee scores (vote entropy, mean KL) need
classifiers refitted on resamples of the labels, a network trained per member: a network
classifier has none (:data:`NETWORK_STRATEGIES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.active.classifier import dropout_weight_samples
from fewlabels.active.strategies import COMMITTEE_SCORES, STRATEGIES
from fewlabels.calibration import calibrated_probabilities

# the strategies a network classifier can serve: all but the committees of refitted probes
NETWORK_STRATEGIES = tuple(s for s in STRATEGIES if s not in COMMITTEE_SCORES)
DEFAULT_POOL_BATCH = 1024


@dataclass
class NetworkClassifier:
    """The linear head of a trained network, on its backbone's features: what the strategies
    call a classifier (``probabilities``, ``num_classes``, ``temperature``; BALD's dropout
    samples). ``calibrated_on`` is 0: no temperature is fitted (see the module docstring)."""

    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    temperature: float = 1.0
    calibrated_on: int = 0

    @classmethod
    def from_head(cls, head: nn.Linear, temperature: float = 1.0) -> NetworkClassifier:
        """A copy of ``head``'s weights (on the CPU, detached)."""
        return cls(head.weight.detach().float().cpu().clone(),
                   head.bias.detach().float().cpu().clone(), temperature)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits ``[N, C]`` of backbone features ``[N, D]``."""
        return features.float() @ self.weight.T + self.bias

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``softmax(logits / T)``, ``[N, C]``: with T = 1 the network's own softmax."""
        return calibrated_probabilities(self.logits(features), self.temperature)

    def dropout_weights(self, samples: int, rate: float, generator: torch.Generator
                        ) -> torch.Tensor:
        """``samples`` dropout versions of the head's weight, ``[S, C, D]``."""
        return dropout_weight_samples(self.weight, samples, rate, generator)

    @torch.no_grad()
    def sampled_probabilities(self, features: torch.Tensor, weights: torch.Tensor
                              ) -> torch.Tensor:
        """Probabilities of backbone ``features`` ``[n, D]`` under each weight sample
        ``[S, C, D]``: ``[S, n, C]``."""
        logits = torch.einsum("nd,scd->snc", features.float(), weights) + self.bias
        return (logits / self.temperature).softmax(dim=2)
