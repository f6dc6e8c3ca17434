"""Calibrated confidences: temperature scaling and the expected calibration error.

A classifier's softmax confidence is calibrated when, among the images it gives confidence
``q``, a fraction ``q`` is right. Modern networks and probes fitted on few labels are
over-confident. Temperature scaling (Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of
Modern Neural Networks", section 4.2) divides every logit by one scalar ``T > 0`` chosen to
minimise the negative log-likelihood of held-out labels; the predicted class never changes,
only the confidences do. The expected calibration error (Naeini, Cooper & Hauskrecht 2015;
Guo et al. 2017, eq. 3) measures what is left.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_BINS = 15
# log T is searched in this interval (T from about 0.0067 to 150): wide enough for any probe,
# narrow enough that separable data (NLL falling forever as T -> 0) stops somewhere finite.
_LOG_TEMPERATURE_RANGE = (-5.0, 5.0)


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood ``-(1/N) sum_i log softmax(z_i / T)_{y_i}``."""
    return F.cross_entropy(logits.float() / temperature, labels.long()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, steps: int = 60) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` on ``labels``
    (Guo et al. 2017, temperature scaling).

    The NLL is a convex function of ``1/T`` (a log-sum-exp of linear functions of it plus a
    linear term), so it is unimodal in ``log T``: a golden-section search over ``log T`` in
    ``[-5, 5]`` finds its minimum to within ``1e-6`` relative in ``steps`` = 60 evaluations,
    with no learning rate to tune. Returns 1.0 without labels.
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.float(), labels.long()
    low, high = _LOG_TEMPERATURE_RANGE
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(log_temperature: float) -> float:
        return temperature_nll(logits, labels, math.exp(log_temperature))

    left, right = high - ratio * (high - low), low + ratio * (high - low)
    left_loss, right_loss = loss(left), loss(right)
    for _ in range(steps):
        if left_loss <= right_loss:
            high, right, right_loss = right, left, left_loss
            left = high - ratio * (high - low)
            left_loss = loss(left)
        else:
            low, left, left_loss = left, right, right_loss
            right = low + ratio * (high - low)
            right_loss = loss(right)
    return math.exp((low + high) / 2.0)


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor,
                               bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins:

    ``ECE = sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|``

    where ``B_b`` holds the images whose confidence ``max_c p(c | x)`` lies in
    ``((b - 1)/bins, b/bins]``, ``acc`` is the fraction of them predicted right and ``conf``
    their mean confidence (Naeini et al. 2015; Guo et al. 2017, eq. 3). ``probabilities`` is
    ``[N, C]``; 0.0 for no images.
    """
    confidences, predictions = probabilities.float().max(dim=1)
    return confidence_calibration_error(confidences, predictions == labels.long(), bins)


def confidence_calibration_error(confidences: torch.Tensor, right: torch.Tensor,
                                 bins: int = DEFAULT_BINS) -> float:
    """:func:`expected_calibration_error` from each image's confidence ``[N]`` (the
    probability of its predicted class) and whether that prediction is ``right`` ``[N]``."""
    if len(right) == 0:
        return 0.0
    confidences, right = confidences.float(), right.float()
    # bin b holds (b/bins, (b+1)/bins]: ceil(confidence * bins) - 1, clamped into range
    index = (torch.ceil(confidences * bins).long() - 1).clamp(0, bins - 1)
    accuracy_sums = torch.bincount(index, weights=right, minlength=bins)
    confidence_sums = torch.bincount(index, weights=confidences, minlength=bins)
    return ((accuracy_sums - confidence_sums).abs().sum() / len(right)).item()


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)``, ``[N, C]``."""
    return (logits.float() / temperature).softmax(dim=1)
