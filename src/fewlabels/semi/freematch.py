r"""FreeMatch (Wang, Chen, Heng, Hou, Fan, Wu, Wang, Savvides, Shinozaki, Raj, Schiele, Xie,
"FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning", ICLR 2023).

FixMatch with self-adaptive thresholds and a class-fairness term. A global threshold is the
moving average (momentum 0.999) of the weak views' mean confidence, starting at 1/K, and each
class's threshold is it scaled by the moving average of the mean predicted probability of the
class over the largest class's (eqs. 5-8, :class:`~fewlabels.losses.semi.
FreeMatchThresholds`): early in training, when the network is unsure, the thresholds are low
and most pseudo-labels train; they rise as its confidence does. Each step first folds the
weak predictions of the global batch (gathered from every device) into the averages, then
masks with the new thresholds (USB's order), so every device holds the same state. The
self-adaptive fairness loss (eq. 11, :func:`~fewlabels.losses.semi.freematch_fairness_loss`)
with weight :math:`\lambda_f` pushes the confident strong predictions of the batch towards
the classes the averages say are under-predicted:

.. math:: \mathcal{L} = \mathcal{L}_s + \lambda_u \mathcal{L}_u + \lambda_f \mathcal{L}_f

Defaults: FixMatch's (:math:`\lambda_u = 1`, :math:`\mu = 7`, its optimiser), hard
pseudo-labels, :math:`\lambda_f = 0.001` (USB's CIFAR-10 configuration with 40 labels; its
code's default elsewhere is 0.01). The fairness loss uses the confident samples of the local
batch, as USB's code does, so it is the one term that differs from a single device's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.distributed import gather_no_gradient
from fewlabels.errors import UserError
from fewlabels.losses.semi import FreeMatchThresholds, freematch_fairness_loss
from fewlabels.methods.base import DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.fixmatch import FixMatch, FixMatchConfig, WeakStrongViews
from fewlabels.semi.registry import SEMI_METHODS


@dataclass
class FreeMatchConfig(FixMatchConfig):
    threshold_momentum: float = option(
        0.999, "lambda: momentum of the moving averages behind the thresholds")
    fairness_weight: float = option(
        0.001, "lambda_f: weight of the self-adaptive class-fairness loss (USB's CIFAR-10 "
        "with 40 labels: 0.001)")


@SEMI_METHODS.register("freematch", "FixMatch with self-adaptive thresholds from the "
                       "confidence's moving average and a fairness loss (Wang et al. 2023)")
class FreeMatch(FixMatch):
    """FixMatch whose per-class thresholds follow the moving averages of the weak views'
    confidence and class probabilities, plus λ_f · the class-fairness loss."""

    name = "freematch"
    Config = FreeMatchConfig
    paper = "Wang et al., ICLR 2023"

    def __init__(self, backbone: nn.Module, config: FreeMatchConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if not 0.0 <= config.threshold_momentum < 1.0:
            raise UserError(f"--threshold-momentum must be in [0, 1), got "
                            f"{config.threshold_momentum}")
        if config.fairness_weight < 0:
            raise UserError(f"--fairness-weight must be at least 0, got "
                            f"{config.fairness_weight}")
        self.thresholds = FreeMatchThresholds(data.num_classes, config.threshold_momentum)

    def class_thresholds(self, probabilities: torch.Tensor) -> torch.Tensor:
        self.thresholds.update(gather_no_gradient(probabilities))
        return self.thresholds.class_thresholds()

    def extra_losses(self, strong_logits: torch.Tensor, mask: torch.Tensor
                     ) -> dict[str, tuple[float, torch.Tensor]]:
        fairness = freematch_fairness_loss(strong_logits, mask,
                                           self.thresholds.class_probabilities,
                                           self.thresholds.label_histogram)
        return {"fairness_loss": (self.config.fairness_weight, fairness)}

    def training_loss(self, inputs: WeakStrongViews, step: StepInfo) -> dict[str, torch.Tensor]:
        losses = super().training_loss(inputs, step)
        with torch.no_grad():
            thresholds = self.thresholds.class_thresholds()
            losses["threshold_min"] = thresholds.min()
            losses["threshold_max"] = thresholds.max()
        return losses
