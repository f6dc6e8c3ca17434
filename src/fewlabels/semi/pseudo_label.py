r"""Pseudo-Label (Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method
for Deep Neural Networks", ICML 2013 Workshop on Challenges in Representation Learning).

Every unlabeled image is labelled with the current network's arg-max class on a weak view of
it, and that hard label trains the same prediction by cross-entropy (no gradient through the
target), weighted by a coefficient that grows during training:

.. math::

    \mathcal{L} = \mathcal{L}_s + \alpha(t)\, \frac{1}{\mu B} \sum_{b=1}^{\mu B}
        \mathbb{1}[\max_c p_{b,c} \ge \tau]\; \mathrm{H}(\hat y_b, p_b), \qquad
    \alpha(t) = \begin{cases} 0 & t < T_1 \\
        \alpha_f \frac{t - T_1}{T_2 - T_1} & T_1 \le t < T_2 \\
        \alpha_f & t \ge T_2 \end{cases}

with :math:`p_b` the softmax of the weak view and :math:`\hat y_b` its arg-max.

How it differs from the paper, and why:

- A confidence threshold :math:`\tau` (``--threshold``, default 0.95 as in FixMatch's
  ablation of pseudo-labelling, Sohn et al. 2020, and Oliver et al. 2018); ``--threshold 0``
  is the paper's rule, every unlabeled image counts. The sum is divided by all :math:`\mu B`
  images, as FixMatch does (:func:`~fewlabels.losses.consistency.fixmatch_unlabeled_loss`).
- :math:`T_1` and :math:`T_2` are fractions of training (``--ramp-start``, ``--ramp-end``),
  so the ramp follows a time budget too. The paper's :math:`T_1 = 100`, :math:`T_2 = 600`
  epochs and :math:`\alpha_f = 3` (kept) are for long MNIST runs; the defaults 0.05 and 0.3
  keep its ratio :math:`T_1 / T_2 = 1/6` and leave most of a short run at full weight.
- The paper's network is a dropout MLP trained with SGD; here any backbone, the weak
  augmentation (translation and flip) and FixMatch's optimiser, as for every classifier
  method, so that methods differ only in their unlabeled loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from fewlabels.errors import UserError
from fewlabels.losses.consistency import fixmatch_unlabeled_loss
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig, pseudo_label_numbers
from fewlabels.semi.registry import SEMI_METHODS


class WeakViews(NamedTuple):
    """A step's inputs for methods with one weak view per image: the labeled views and their
    labels, the unlabeled views, and the unlabeled images' hidden labels (logged only)."""

    labeled: torch.Tensor  # [B, C, H, W], normalised
    labels: torch.Tensor  # [B]
    unlabeled: torch.Tensor  # [μB, C, H, W], normalised
    hidden_labels: torch.Tensor | None  # [μB] or None


def weak_views_of(method: ClassifierMethod, batch: Batch, generator: torch.Generator
                  ) -> WeakViews:
    """One weak view of every labeled and unlabeled image of ``batch``."""
    if batch.unlabeled is None:
        raise UserError(f"{method.name} needs unlabeled images; give --unlabeled-ratio >= 1")
    return WeakViews(method.weak_views(batch.labeled, generator), batch.labels,
                     method.weak_views(batch.unlabeled, generator), batch.hidden_labels)


@dataclass(frozen=True)
class LinearRamp:
    """A weight that is 0 until progress ``start``, rises linearly to ``peak`` at progress
    ``end`` and stays there (Lee 2013's :math:`\\alpha(t)`). Progress is the fraction of
    training done, by steps or by the time budget; the engine evaluates it every step like a
    :class:`~fewlabels.engine.schedule.Schedule`."""

    peak: float
    start: float
    end: float

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return 0

    def value(self, step: int, progress: float, warmup_steps: int = 0,
              warmup_end_progress: float = 0.0) -> float:
        if progress >= self.end:
            return self.peak
        if progress < self.start:
            return 0.0
        return self.peak * (progress - self.start) / (self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": "linear_ramp", "peak": self.peak, "start": self.start,
                "end": self.end}


@dataclass
class PseudoLabelConfig(SemiSupervisedConfig):
    unlabeled_weight: float = option(
        3.0, "alpha_f: weight of the pseudo-label loss once ramped up (Lee 2013: 3)")
    threshold: float = option(
        0.95, "confidence a pseudo-label needs to count (0: every image, as in Lee 2013; "
        "0.95: FixMatch's ablation)")
    ramp_start: float = option(
        0.05, "T1: fraction of training before which the pseudo-label weight is 0")
    ramp_end: float = option(
        0.3, "T2: fraction of training at which the weight reaches alpha_f (linear from T1; "
        "T1 = T2 = 0: alpha_f throughout)")


@SEMI_METHODS.register("pseudo-label", "hard arg-max labels of the weak view above a "
                       "threshold, weight ramped up (Lee 2013)")
class PseudoLabel(ClassifierMethod):
    """Cross-entropy on the labeled views + α(t) · cross-entropy of each confident unlabeled
    view against its own arg-max."""

    name = "pseudo-label"
    Config = PseudoLabelConfig
    paper = "Lee, ICML Workshop on Challenges in Representation Learning 2013"

    def __init__(self, backbone: torch.nn.Module, config: PseudoLabelConfig,
                 data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if not 0.0 <= config.threshold <= 1.0:
            raise UserError(f"--threshold must be in [0, 1], got {config.threshold}")
        if not 0.0 <= config.ramp_start <= config.ramp_end <= 1.0:
            raise UserError("give 0 <= --ramp-start <= --ramp-end <= 1 (fractions of "
                            f"training), got {config.ramp_start} and {config.ramp_end}")
        if config.unlabeled_ratio < 1:
            raise UserError(f"{self.name} needs unlabeled images; give --unlabeled-ratio >= 1")

    def schedules(self) -> dict[str, LinearRamp]:
        return {"unlabeled_weight": LinearRamp(self.config.unlabeled_weight,
                                               self.config.ramp_start, self.config.ramp_end)}

    def make_views(self, batch: Batch, generator: torch.Generator) -> WeakViews:
        return weak_views_of(self, batch, generator)

    def unlabeled_loss(self, logits: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, pseudo_labels, mask)`` of the unlabeled views' ``logits [U, K]``: the
        mean over all ``U`` of the masked cross-entropy against the detached arg-max."""
        probabilities = logits.detach().float().softmax(dim=1)
        loss, mask = fixmatch_unlabeled_loss(logits, probabilities, self.config.threshold)
        return loss, probabilities.argmax(dim=1), mask

    def training_loss(self, inputs: WeakViews, step: StepInfo) -> dict[str, torch.Tensor]:
        labeled_logits, unlabeled_logits = self.logits_of(inputs.labeled, inputs.unlabeled)
        losses = self.supervised_loss(labeled_logits, inputs.labels)
        unlabeled, pseudo_labels, mask = self.unlabeled_loss(unlabeled_logits)
        losses["loss"] = losses["loss"] + step.values["unlabeled_weight"] * unlabeled
        losses["unlabeled_loss"] = unlabeled.detach()
        return losses | pseudo_label_numbers(mask, pseudo_labels, inputs.hidden_labels)
