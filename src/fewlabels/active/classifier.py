"""The classifier of an active-learning round: a linear probe on frozen features, its
confidences calibrated, and the sampled predictions BALD and the committee scores need.
(The default; `active simulate --classifier finetune|semi` trains a network every round
instead: :mod:`fewlabels.active.network_rounds`.)

Each round the probe (:func:`fewlabels.evaluate.linear_probe.linear_probe`, weight decay chosen
by cross-validation inside the labeled images) is fitted on the labeled images' features. Its
temperature (:mod:`fewlabels.calibration`) is fitted on *out-of-fold* logits: every
labeled image is scored by a probe fitted without it, at the chosen decay. A temperature
fitted on the probe's own training images would see logits it was fitted to and come out too
small (over-confident). With a single label in some class there is no fold to leave out and
the temperature stays 1 (``calibrated_on`` 0).

Monte-Carlo dropout on a probe (for BALD): dropout with rate ``p`` on the probe's input,
scaled by ``1/(1 - p)``, is the probe with its weight columns dropped. A sample is drawn as
one weight matrix ``W_s = W diag(m_s) / (1 - p)``, ``m_s ~ Bernoulli(1 - p)^D``, and used for
every pool image: each image still sees S independent dropout masks, so its scores are as in
Gal et al. 2017, and the same S models score the whole pool whatever the chunking, so a chunked
computation equals the unchunked one (and memory stays at one chunk's ``[S, n, C]``). No
network is put into train mode, so nothing has to be switched back (baal-org/baal#246).

The committee (query by committee, Seung, Opper & Sompolinsky 1992): probes fitted at the
chosen decay on stratified bootstrap resamples of the labeled images (each class resampled
within itself, so no member loses a class).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fewlabels.calibration import calibrated_probabilities, fit_temperature
from fewlabels.data.splits import stratified_folds
from fewlabels.evaluate.linear_probe import (
    FeaturePreprocessing,
    ProbeResult,
    cross_validation_folds,
    linear_probe,
)

DEFAULT_DROPOUT = 0.3
DEFAULT_DROPOUT_SAMPLES = 20
DEFAULT_COMMITTEE = 5


def _probe_at(decay: float, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
              preprocessing: FeaturePreprocessing) -> ProbeResult:
    """A probe fitted at a fixed weight decay (no cross-validation)."""
    return linear_probe(features, labels, features[:0], labels[:0], num_classes=num_classes,
                        weight_decays=(), default_weight_decay=decay, folds=0,
                        preprocessing=preprocessing)


def dropout_weight_samples(weight: torch.Tensor, samples: int, rate: float,
                           generator: torch.Generator) -> torch.Tensor:
    """``samples`` Monte-Carlo dropout versions ``W diag(m_s) / (1 - p)`` of a linear
    classifier's ``weight`` ``[C, D]`` (dropout with rate ``p`` on its input), ``[S, C, D]``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    keep = torch.rand(samples, 1, weight.shape[1], generator=generator) >= rate
    return weight.unsqueeze(0) * keep.float() / (1.0 - rate)


@dataclass
class RoundClassifier:
    """A fitted probe with its temperature, on the raw features of the labeled images."""

    probe: ProbeResult
    num_classes: int
    temperature: float
    calibrated_on: int
    train_features: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)

    @property
    def preprocessing(self) -> FeaturePreprocessing:
        assert self.probe.preprocessing is not None
        return self.probe.preprocessing

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits ``[N, C]`` of raw features ``[N, D]``."""
        return self.probe.logits(features)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``softmax(logits / T)``, ``[N, C]``."""
        return calibrated_probabilities(self.logits(features), self.temperature)

    def dropout_weights(self, samples: int, rate: float, generator: torch.Generator
                        ) -> torch.Tensor:
        """``samples`` dropout versions of the probe's weight, ``[S, C, D]``."""
        weight = self.probe.weight
        assert weight is not None
        return dropout_weight_samples(weight, samples, rate, generator)

    @torch.no_grad()
    def sampled_probabilities(self, features: torch.Tensor, weights: torch.Tensor
                              ) -> torch.Tensor:
        """Calibrated probabilities of raw ``features`` ``[n, D]`` under each weight sample
        ``[S, C, D]``: ``[S, n, C]``."""
        prepared = self.preprocessing(features)
        logits = torch.einsum("nd,scd->snc", prepared, weights) + self.probe.bias
        return (logits / self.temperature).softmax(dim=2)

    def committee(self, members: int, generator: torch.Generator) -> list[ProbeResult]:
        """``members`` probes at the chosen decay on stratified bootstrap resamples."""
        labels = self.train_labels
        probes = []
        for _ in range(members):
            chosen = []
            for cls in labels.unique():
                members_of_class = (labels == cls).nonzero().flatten()
                draw = torch.randint(len(members_of_class), (len(members_of_class),),
                                     generator=generator)
                chosen.append(members_of_class[draw])
            rows = torch.cat(chosen)
            probes.append(_probe_at(self.probe.weight_decay, self.train_features[rows],
                                    labels[rows], self.num_classes, self.preprocessing))
        return probes


def fit_round_classifier(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    preprocessing: FeaturePreprocessing,
    seed: int = 0,
    calibrate: bool = True,
) -> RoundClassifier:
    """The round's probe on the labeled images' raw ``features`` ``[L, D]`` and ``labels``,
    with ``preprocessing`` fitted on the whole pool (it uses no labels), and its temperature
    fitted on out-of-fold logits (``calibrate``)."""
    labels = labels.long()
    probe = linear_probe(features, labels, features, labels, num_classes=num_classes,
                         preprocessing=preprocessing, seed=seed)
    temperature, calibrated_on = 1.0, 0
    folds = cross_validation_folds(labels) if calibrate else 0
    if folds:
        out_of_fold = torch.empty(len(labels), num_classes)
        for fold in stratified_folds(labels, folds, seed):
            kept = torch.ones(len(labels), dtype=torch.bool)
            kept[fold] = False
            held_out = _probe_at(probe.weight_decay, features[kept], labels[kept], num_classes,
                                 preprocessing)
            out_of_fold[fold] = held_out.logits(features[fold])
        temperature, calibrated_on = fit_temperature(out_of_fold, labels), len(labels)
    return RoundClassifier(probe, num_classes, temperature, calibrated_on, features, labels)
