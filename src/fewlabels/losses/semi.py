r"""Stateful parts of semi-supervised objectives: adaptive confidence thresholds
(FlexMatch, FreeMatch), FreeMatch's fairness loss and distribution alignment (ReMixMatch).

The state lives in buffers of small ``nn.Module``\ s, so a checkpoint of the method keeps it.
The stateless losses (FixMatch's masked cross-entropy, UDA, VAT, MixUp, ...) are in
:mod:`fewlabels.losses.consistency`; a threshold module gives per-class thresholds ``[K]``
that :func:`~fewlabels.losses.consistency.fixmatch_unlabeled_loss` takes directly.

**Distributed training.** The state must be the same on every rank, so every ``update``
takes tensors that the *caller* has already gathered from all ranks (e.g. with
:func:`fewlabels.distributed.gather_no_gradient`: the weak-view probabilities of the
global unlabeled batch and, for FlexMatch, their dataset indices in the same order). The
modules never communicate themselves; masks and losses use the local batch.

Typical FlexMatch step (``indices``: dataset indices of the unlabeled batch)::

    probabilities = logits_weak.detach().softmax(dim=1)
    loss_u, mask = fixmatch_unlabeled_loss(logits_strong, probabilities,
                                           flexmatch.class_thresholds())
    flexmatch.update(gather_no_gradient(probabilities), gather_no_gradient(indices))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DistributionAlignment",
    "FlexMatchThresholds",
    "FreeMatchThresholds",
    "distribution_alignment",
    "freematch_fairness_loss",
]


def _check_probabilities(probabilities: Tensor, num_classes: int) -> None:
    if probabilities.dim() != 2 or probabilities.shape[1] != num_classes:
        raise ValueError(f"expected probabilities [B, {num_classes}], "
                         f"got {tuple(probabilities.shape)}")


class FlexMatchThresholds(nn.Module):
    r"""FlexMatch's curriculum pseudo-labelling thresholds (Zhang et al., "FlexMatch:
    Boosting Semi-Supervised Learning with Curriculum Pseudo Labeling", NeurIPS 2021,
    eqs. 6-11).

    Every unlabeled image keeps its latest confident prediction :math:`\hat{u}_n` (``-1``
    until its confidence first reaches :math:`\tau`; buffer ``predictions [num_images]``).
    The learning effect of class :math:`c` and its threshold are

    .. math::

        \sigma(c) = \sum_{n=1}^{N} \mathbb{1}[\hat{u}_n = c], \quad
        \beta(c) = \frac{\sigma(c)}{\max\big(\max_{c'} \sigma(c'),\; N - \sum_{c'}
            \sigma(c')\big)}, \quad
        \mathcal{T}(c) = \mathcal{M}(\beta(c))\, \tau, \quad
        \mathcal{M}(x) = \frac{x}{2 - x}

    with the threshold warm-up (eq. 11: the count of still-unused images in the max) when
    ``warmup=True`` (the paper's default), else the denominator is :math:`\max_{c'}
    \sigma(c')`. Before any image is confident every :math:`\beta(c) = 0`, so every
    threshold is 0 (the early curriculum lets all pseudo-labels through). Each step: mask
    with :meth:`class_thresholds` (as USB's ``FlexMatchThresholdingHook`` masks before it
    updates), then :meth:`update` with the gathered batch.
    """

    predictions: Tensor

    def __init__(self, num_images: int, num_classes: int, threshold: float = 0.95,
                 warmup: bool = True) -> None:
        super().__init__()
        if num_images < 1 or num_classes < 2:
            raise ValueError("FlexMatch needs num_images >= 1 and num_classes >= 2")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.num_classes = num_classes
        self.threshold = threshold
        self.warmup = warmup
        self.register_buffer("predictions", torch.full((num_images,), -1, dtype=torch.long))

    def learning_effect(self) -> Tensor:
        r"""The normalised learning effect :math:`\beta(c)` ``[K]`` (float32)."""
        counts = torch.bincount(self.predictions + 1, minlength=self.num_classes + 1).float()
        per_class = counts[1:]  # [K]; counts[0] = images never confident
        denominator = per_class.max()
        if self.warmup:
            denominator = torch.maximum(denominator, counts[0])
        return per_class / denominator.clamp_min(1.0)

    def class_thresholds(self) -> Tensor:
        r"""The per-class thresholds :math:`\mathcal{T}(c) = \mathcal{M}(\beta(c))\tau` ``[K]``."""
        beta = self.learning_effect()
        return self.threshold * beta / (2.0 - beta)

    @torch.no_grad()
    def update(self, probabilities: Tensor, indices: Tensor) -> None:
        """Record the prediction of every image of the (gathered) batch whose confidence is
        at least ``threshold``; ``indices [B]`` are their dataset indices."""
        _check_probabilities(probabilities, self.num_classes)
        confidence, labels = probabilities.max(dim=1)
        confident = (confidence >= self.threshold).to(self.predictions.device)
        indices = indices.to(self.predictions.device)
        self.predictions[indices[confident]] = labels.to(self.predictions.device)[confident]

    def extra_repr(self) -> str:
        return (f"num_images={self.predictions.numel()}, num_classes={self.num_classes}, "
                f"threshold={self.threshold}, warmup={self.warmup}")


class FreeMatchThresholds(nn.Module):
    r"""FreeMatch's self-adaptive thresholds (Wang et al., "FreeMatch: Self-adaptive
    Thresholding for Semi-supervised Learning", ICLR 2023, eqs. 5-8): a global threshold
    from the EMA of the mean confidence, modulated per class by the EMA of the mean
    probability vector,

    .. math::

        \tau_t = \lambda \tau_{t-1} + (1 - \lambda) \frac{1}{\mu B} \sum_b \max_c q_{b,c},
        \quad
        \tilde{p}_t = \lambda \tilde{p}_{t-1} + (1 - \lambda) \frac{1}{\mu B} \sum_b q_b,
        \quad
        \tau_t(c) = \frac{\tilde{p}_t(c)}{\max_{c'} \tilde{p}_t(c')}\, \tau_t

    with :math:`\tau_0 = 1/K`, :math:`\tilde{p}_0 = 1/K` and :math:`\lambda = 0.999`. The
    buffer ``label_histogram`` is the EMA of the histogram of weak pseudo-labels that
    :func:`freematch_fairness_loss` uses. FreeMatch updates *before* masking (USB's
    ``FreeMatchThresholingHook``): each step :meth:`update` with the gathered batch, then
    mask with :meth:`class_thresholds`.
    """

    global_threshold: Tensor
    class_probabilities: Tensor
    label_histogram: Tensor

    def __init__(self, num_classes: int, momentum: float = 0.999) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("FreeMatch needs num_classes >= 2")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("global_threshold", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_probabilities", uniform.clone())
        self.register_buffer("label_histogram", uniform.clone())

    @torch.no_grad()
    def update(self, probabilities: Tensor) -> None:
        """One EMA step from the weak-view probabilities ``[B, K]`` of the gathered batch."""
        _check_probabilities(probabilities, self.num_classes)
        probabilities = probabilities.detach().float().to(self.class_probabilities.device)
        confidence, labels = probabilities.max(dim=1)
        histogram = torch.bincount(labels, minlength=self.num_classes).float()
        weight = 1.0 - self.momentum
        self.global_threshold.lerp_(confidence.mean(), weight)
        self.class_probabilities.lerp_(probabilities.mean(dim=0), weight)
        self.label_histogram.lerp_(histogram / histogram.sum(), weight)

    def class_thresholds(self) -> Tensor:
        r"""The per-class thresholds :math:`\tau_t(c)` ``[K]``."""
        return self.class_probabilities / self.class_probabilities.max() * self.global_threshold

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}"


def _normalised_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``SumNorm(numerator / denominator)``, classes with a zero denominator dropped."""
    scale = torch.nan_to_num(1.0 / denominator, nan=0.0, posinf=0.0, neginf=0.0)
    ratio = numerator * scale
    return ratio / ratio.sum().clamp_min(1e-12)


def freematch_fairness_loss(strong_logits: Tensor, mask: Tensor,
                            class_probabilities: Tensor, label_histogram: Tensor) -> Tensor:
    r"""FreeMatch's self-adaptive class fairness loss (Wang et al. 2023, eq. 11):

    .. math::

        \mathcal{L}_f = -\mathrm{H}\!\left(
            \operatorname{SumNorm}\!\Big(\frac{\tilde{p}_t}{\tilde{h}_t}\Big),\;
            \operatorname{SumNorm}\!\Big(\frac{\bar{p}}{\bar{h}}\Big)\right)
        = \sum_c a_c \log b_c

    with :math:`\tilde{p}_t, \tilde{h}_t` the EMAs of :class:`FreeMatchThresholds`
    (``class_probabilities``, ``label_histogram``), :math:`\bar{p}` the mean strong-view
    probability and :math:`\bar{h}` the normalised histogram of strong-view argmaxes, both
    over the confident samples (``mask``) of the local batch; :math:`\mathrm{H}(a, b) =
    -\sum_c a_c \log b_c` is the cross-entropy, so minimising :math:`\mathcal{L}_f`
    maximises it and spreads the confident predictions over the classes. Classes absent
    from a histogram get weight 0 (as USB's code does). 0 when no sample is confident.
    """
    mask = mask.bool()
    if not bool(mask.any()):
        return strong_logits.sum() * 0.0
    probabilities = F.softmax(strong_logits[mask].float(), dim=1)  # [M, K]
    num_classes = probabilities.shape[1]
    histogram = torch.bincount(probabilities.detach().argmax(dim=1),
                               minlength=num_classes).float()
    histogram = histogram / histogram.sum()
    target = _normalised_ratio(class_probabilities.float().detach(),
                               label_histogram.float().detach())
    batch = probabilities.mean(dim=0) * torch.nan_to_num(1.0 / histogram, nan=0.0,
                                                         posinf=0.0, neginf=0.0)
    batch = batch / batch.sum().clamp_min(1e-12)
    return (target * (batch + 1e-12).log()).sum()


def distribution_alignment(probabilities: Tensor, prediction_mean: Tensor,
                           prior: Tensor) -> Tensor:
    r"""Distribution alignment (Berthelot et al., "ReMixMatch", ICLR 2020, section 3.2):

    .. math:: \tilde{q} = \operatorname{Normalize}\!\left(
              q \cdot \frac{p(y)}{\tilde{p}(y)}\right)

    for predictions ``q [B, K]``, the running mean of the model's predictions on unlabeled
    data :math:`\tilde{p}(y)` ``[K]`` and the class prior :math:`p(y)` ``[K]`` (the labeled
    set's class frequencies). Without gradient (a target)."""
    ratio = prior.to(probabilities).detach() / prediction_mean.to(probabilities).clamp_min(1e-12)
    aligned = probabilities.detach() * ratio
    return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(1e-12)


class DistributionAlignment(nn.Module):
    r"""The state of :func:`distribution_alignment`: the class prior and the running mean of
    the model's predictions on unlabeled data (buffers ``prior``, ``prediction_mean``).

    ``window=None`` keeps an exponential moving average with ``momentum`` (0.999, USB's
    ``DistAlignEMAHook``); ``window=128`` keeps the mean of the last 128 batch means, as
    ReMixMatch's code does (its ``PMovingAverage``), in a buffer ``history [window, K]``
    that starts uniform. The prior defaults to uniform. ReMixMatch aligns with the old mean,
    then updates: ``aligned = module(q)``, ``module.update(gathered q)``.
    """

    prior: Tensor
    prediction_mean: Tensor

    def __init__(self, num_classes: int, prior: Tensor | None = None, momentum: float = 0.999,
                 window: int | None = None) -> None:
        super().__init__()
        if prior is None:
            prior = torch.full((num_classes,), 1.0 / num_classes)
        prior = torch.as_tensor(prior, dtype=torch.float32)
        if prior.shape != (num_classes,) or bool((prior < 0).any()) or float(prior.sum()) <= 0:
            raise ValueError(f"the prior must be {num_classes} non-negative numbers, not all 0")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 batches, got {window}")
        self.momentum = momentum
        self.window = window
        self.register_buffer("prior", prior / prior.sum())
        self.register_buffer("prediction_mean", torch.full((num_classes,), 1.0 / num_classes))
        if window is not None:
            self.register_buffer("history", torch.full((window, num_classes), 1.0 / num_classes))

    @torch.no_grad()
    def update(self, probabilities: Tensor) -> None:
        """Fold in the (gathered) batch of unlabeled predictions ``[B, K]``."""
        _check_probabilities(probabilities, self.prior.shape[0])
        batch_mean = probabilities.detach().float().mean(dim=0).to(self.prediction_mean.device)
        if self.window is None:
            self.prediction_mean.lerp_(batch_mean, 1.0 - self.momentum)
            return
        self.history.copy_(torch.cat([self.history[1:], batch_mean[None]]))
        mean = self.history.mean(dim=0)
        self.prediction_mean.copy_(mean / mean.sum())

    def forward(self, probabilities: Tensor) -> Tensor:
        """The aligned predictions ``[B, K]`` (no update)."""
        return distribution_alignment(probabilities, self.prediction_mean, self.prior)
