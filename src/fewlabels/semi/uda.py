r"""UDA: unsupervised data augmentation (Xie, Dai, Hovy, Luong, Le, "Unsupervised Data
Augmentation for Consistency Training", NeurIPS 2020).

The prediction on a weak view of an unlabeled image, sharpened with a temperature, is the
soft target of the prediction on a strong view (RandAugment), by KL divergence, counted only
where the weak view is confident (section 3.2, "confidence-based masking" and "sharpening
predictions"):

.. math::

    \mathcal{L} = \frac{1}{B} \sum_{b=1}^{B} \mathrm{H}(y_b, p(y \mid \alpha(x_b)))
        + \lambda_u \frac{1}{\mu B} \sum_{b=1}^{\mu B} \mathbb{1}[\max q_b \ge \beta]\,
          \mathrm{KL}\big(\operatorname{softmax}(z_b / T) \,\|\, p(y \mid \mathcal{A}(u_b))\big)

with :math:`z_b` the weak view's logits (no gradient), :math:`q_b = \operatorname{softmax}
(z_b)`; :func:`~fewlabels.losses.consistency.soft_consistency_loss`. The paper's CIFAR-10
values, the defaults: :math:`T = 0.4`, :math:`\beta = 0.8`, :math:`\lambda_u = 1`,
:math:`\mu = 7`, B = 64. UDA's optimiser differs from FixMatch's: SGD with Nesterov momentum
0.9 at lr 0.03 for 64 labeled images, weight decay 5e-4, a cosine decay to 0.004 of the peak
(its code's ``min_lr_ratio``); its GPU scripts run with and without a linear warm-up, and the
recipe here has none.

**Training-signal annealing** (``--tsa linear|log|exp``, off by default): a labeled image
whose predicted probability of its own class exceeds :math:`\eta_t = \alpha_t (1 - 1/K) +
1/K` leaves the supervised loss, which is averaged over the images that remain, with
:math:`\alpha_t = t`, :math:`1 - e^{-5t}` or :math:`e^{5(t-1)}` at training progress
:math:`t` (section 3.2, "training signal annealing"). Off by default because UDA's image code
leaves it off for CIFAR-10 and SVHN (its ``--tsa`` defaults to none and its CIFAR-10 scripts
do not set it): the paper uses it where the labeled set is tiny against the model and the
unlabeled loss needs time to catch up (text classification). Here, with 40 labels, it can be
tried as such a case; under ``--budget-minutes`` :math:`t` is the fraction of the budget
spent.

Differences from the paper: the strong augmentation is FixMatch's RandAugment with Cutout
drawn per step on the device (UDA precomputes augmented copies offline, with its own
RandAugment); the weak view is the translation and flip of every classifier method here (UDA
flips and crops with 4-pixel reflect padding); the mask counts a confidence equal to
:math:`\beta` (UDA's code asks for strictly more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.errors import UserError
from fewlabels.losses.consistency import soft_consistency_loss
from fewlabels.methods.base import DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.base import pseudo_label_numbers
from fewlabels.semi.fixmatch import StrongViewConfig, WeakStrongMethod, WeakStrongViews
from fewlabels.semi.registry import SEMI_METHODS

# UDA's optimiser (image/main.py and scripts/run_cifar10_gpu.sh): SGD, Nesterov momentum 0.9,
# lr 0.03 for 64 labeled images (0.12 per 256), weight decay 5e-4, cosine decay to 0.004·lr.
UDA_RECIPE = TrainingRecipe(
    optimizer="sgd", learning_rate=0.12, final_learning_rate=0.12 * 0.004, weight_decay=5e-4,
    batch_size=64, warmup_epochs=0.0, epochs=30, momentum=0.9, nesterov=True,
    lr_decay="cosine")

TSA_SCHEDULES = ("none", "linear", "log", "exp")


@dataclass
class UDAConfig(StrongViewConfig):
    temperature: float = option(0.4, "T: sharpening temperature of the weak view's target")
    threshold: float = option(
        0.8, "beta: confidence a weak view needs for its image to count in the KL term")
    tsa: Literal["none", "linear", "log", "exp"] = option(
        "none", "training-signal annealing of the supervised loss: none, linear, log or exp "
        "schedule of the probability above which a labeled image is left out")


def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    r"""UDA's training-signal-annealing threshold :math:`\eta_t = \alpha_t (1 - 1/K) + 1/K`
    at training progress ``t`` in [0, 1]: :math:`\alpha_t = t` (linear), :math:`1 - e^{-5t}`
    (log) or :math:`e^{5(t - 1)}` (exp)."""
    t = min(1.0, max(0.0, progress))
    alpha = {"linear": t, "log": 1.0 - math.exp(-5.0 * t),
             "exp": math.exp(5.0 * (t - 1.0))}[schedule]
    return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def annealed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""UDA's training-signal annealing (Xie et al. 2020, section 3.2): the cross-entropy of
    the labeled images whose probability of their own class is at most :math:`\eta`,

    .. math:: \ell = \frac{\sum_b m_b\, \mathrm{H}(y_b, p_b)}{\max(1, \sum_b m_b)}, \quad
              m_b = \mathbb{1}[p_{b, y_b} \le \eta]

    as UDA's code averages it. Returns ``(loss, kept [B] bool)``."""
    per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    with torch.no_grad():
        kept = logits.detach().float().softmax(dim=1).gather(1, labels[:, None])[:, 0] <= threshold
    return (per_sample * kept).sum() / kept.sum().clamp_min(1), kept


@SEMI_METHODS.register("uda", "sharpened weak-view predictions train the strong view by KL, "
                       "with confidence masking (Xie et al. 2020)")
class UDA(WeakStrongMethod):
    """Supervised cross-entropy (optionally annealed) + λ_u · masked KL from the sharpened
    weak prediction to the strong one."""

    name = "uda"
    Config = UDAConfig
    paper = "Xie et al., NeurIPS 2020"
    recipe = UDA_RECIPE

    def __init__(self, backbone: nn.Module, config: UDAConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if config.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {config.temperature}")
        if not 0.0 <= config.threshold <= 1.0:
            raise UserError(f"--threshold must be in [0, 1], got {config.threshold}")
        if config.tsa not in TSA_SCHEDULES:
            raise UserError(f"--tsa must be one of {', '.join(TSA_SCHEDULES)}, got "
                            f"{config.tsa!r}")

    def training_loss(self, inputs: WeakStrongViews, step: StepInfo) -> dict[str, torch.Tensor]:
        labeled_logits, weak_logits, strong_logits = self.logits_of(
            inputs.labeled, inputs.weak, inputs.strong)
        losses = self.supervised_loss(labeled_logits, inputs.labels)
        if self.config.tsa != "none":
            threshold = tsa_threshold(self.config.tsa, step.progress, self.data.num_classes)
            supervised, kept = annealed_cross_entropy(labeled_logits, inputs.labels, threshold)
            losses.update(loss=supervised, supervised_loss=supervised.detach(),
                          tsa_threshold=torch.tensor(threshold),
                          tsa_kept=kept.float().mean())
        unlabeled, mask = soft_consistency_loss(strong_logits, weak_logits,
                                                self.config.temperature, self.config.threshold)
        losses["loss"] = losses["loss"] + self.config.unlabeled_weight * unlabeled
        losses["unlabeled_loss"] = unlabeled.detach()
        losses.update(pseudo_label_numbers(mask, weak_logits.detach().argmax(dim=1),
                                           inputs.hidden_labels))
        return losses
