r"""FixMatch (Sohn, Berthelot, Li, Zhang, Carlini, Cubuk, Kurakin, Zhang, Raffel, "FixMatch:
Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020).

The prediction on a weak view of an unlabeled image (translation and flip) becomes a hard
pseudo-label when its confidence reaches :math:`\tau`, and trains the prediction on a strong
view of the same image (RandAugment and Cutout, :class:`~fewlabels.augment.randaugment.
StrongAugment`, on top of the weak augmentation, as PyTorch ports of the paper's code do:
kekmodel's FixMatch-pytorch flips and crops, then applies RandAugment):

.. math::

    \mathcal{L} = \frac{1}{B} \sum_{b=1}^{B} \mathrm{H}(y_b, p(y \mid \alpha(x_b)))
        + \lambda_u \frac{1}{\mu B} \sum_{b=1}^{\mu B}
          \mathbb{1}[\max q_b \ge \tau]\, \mathrm{H}(\hat q_b, p(y \mid \mathcal{A}(u_b)))

with :math:`q_b = p(y \mid \alpha(u_b))` (no gradient) and :math:`\hat q_b` its arg-max;
:func:`~fewlabels.losses.consistency.fixmatch_unlabeled_loss`. The paper's values:
:math:`\tau = 0.95`, :math:`\lambda_u = 1`, :math:`\mu = 7`, B = 64, SGD with Nesterov
momentum, lr 0.03, weight decay 5e-4, the cos(7πt/16) decay, evaluation with a moving
average of the weights (decay 0.999): the defaults here (``FIXMATCH_RECIPE``). Labeled, weak
and strong views go through one forward pass, so batch norm normalises them together, as the
paper's code does.

Options beyond the paper's default:

- ``--pseudo-labels soft``: the target is the weak prediction sharpened with
  ``--temperature`` instead of its arg-max (the paper's ablation of sharpening against
  thresholding, section 5); the mask still uses the unsharpened confidence.
- ``--distribution-alignment``: ReMixMatch's distribution alignment of the weak prediction
  (Berthelot et al., ICLR 2020) before thresholding: its running mean over the last 128
  batches (ReMixMatch's window), gathered from every device, is scaled to the class prior.
  The prior is uniform: the labeled split has K images of every class. Off by default, as in
  FixMatch.

Every step logs the pseudo-label rate (the fraction of the unlabeled batch above the
threshold) and, with hidden labels, the accuracy of the used pseudo-labels.

Differences from the paper: the RandAugment op ranges are the paper's table 12 with a random
magnitude per image (:mod:`fewlabels.augment.randaugment` lists the details); a backbone for
28-32 px images in place of the WRN-28-2 by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import translate_and_flip
from fewlabels.augment.randaugment import StrongAugment
from fewlabels.distributed import gather_no_gradient
from fewlabels.errors import UserError
from fewlabels.losses.consistency import confidence_mask, fixmatch_unlabeled_loss, sharpen
from fewlabels.losses.semi import DistributionAlignment
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig, pseudo_label_numbers
from fewlabels.semi.registry import SEMI_METHODS

# ReMixMatch keeps the mean of its last 128 batch predictions for distribution alignment.
ALIGNMENT_WINDOW = 128


class WeakStrongViews(NamedTuple):
    """A step's inputs for the weak/strong methods (FixMatch, UDA, FlexMatch, FreeMatch)."""

    labeled: torch.Tensor  # [B, C, H, W] weak views of the labeled images, normalised
    labels: torch.Tensor  # [B]
    weak: torch.Tensor  # [μB, C, H, W] weak views of the unlabeled images, normalised
    strong: torch.Tensor  # [μB, C, H, W] strong views of the same images, normalised
    indices: torch.Tensor  # [μB] the unlabeled images' indices in the unlabeled pool
    hidden_labels: torch.Tensor | None  # [μB] true labels, for the log only


@dataclass
class StrongViewConfig(SemiSupervisedConfig):
    """The strong augmentation's options (FixMatch's RandAugment + Cutout)."""

    strong_ops: int = option(2, "strong augmentation: RandAugment ops per image (N = 2)")
    cutout: float = option(
        0.5, "strong augmentation: largest Cutout side as a fraction of the image side "
        "(FixMatch: 0.5, 16 px of 32); 0: no Cutout")


@dataclass
class FixMatchConfig(StrongViewConfig):
    threshold: float = option(0.95, "tau: confidence a weak view needs to give a pseudo-label")
    pseudo_labels: Literal["hard", "soft"] = option(
        "hard", "hard (the weak view's arg-max, FixMatch) or soft (its prediction sharpened "
        "with --temperature, the paper's ablation)")
    temperature: float = option(0.5, "sharpening temperature of --pseudo-labels soft")
    distribution_alignment: bool = option(
        False, "align the weak predictions to a uniform class prior (ReMixMatch) before "
        "thresholding")


def masked_soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy against soft targets on the masked rows, averaged over all rows:

    .. math:: \ell = \frac{1}{N} \sum_{n=1}^{N} m_n \Big(-\sum_c t_{n,c} \log p_{n,c}\Big),
              \quad p_n = \operatorname{softmax}(z_n)

    FixMatch's unlabeled loss with sharpened instead of one-hot targets (Sohn et al. 2020,
    section 5, "sharpening and thresholding"); ``targets`` are detached."""
    per_sample = F.cross_entropy(logits.float(), targets.detach().float(), reduction="none")
    return (per_sample * mask).mean()


class WeakStrongMethod(ClassifierMethod):
    """Shared by FixMatch, UDA, FlexMatch and FreeMatch: a weak view of every labeled image,
    a weak and a strong view of every unlabeled image, one forward pass over all of them."""

    def __init__(self, backbone: nn.Module, config: StrongViewConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if config.unlabeled_ratio < 1:
            raise UserError(f"{self.name} learns from unlabeled images: --unlabeled-ratio must "
                            f"be at least 1, got {config.unlabeled_ratio}")
        if config.unlabeled_weight < 0:
            raise UserError(f"--unlabeled-weight must be at least 0, got "
                            f"{config.unlabeled_weight}")
        self.strong_augment = StrongAugment(n_ops=config.strong_ops, cutout=config.cutout)

    def strong_views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The weak augmentation, then RandAugment and Cutout, normalised."""
        shift = round(self.config.max_shift * images.shape[-1])
        moved = translate_and_flip(to_float(images), max_shift=shift, flip=self.config.flip,
                                   generator=generator)
        strong = self.strong_augment(moved, generator)
        return normalize(strong, self.data.mean, self.data.std, inplace=True)

    def make_views(self, batch: Batch, generator: torch.Generator) -> WeakStrongViews:
        if batch.unlabeled is None or batch.indices is None:
            raise UserError(f"{self.name} needs unlabeled images; give --unlabeled-ratio >= 1")
        return WeakStrongViews(self.weak_views(batch.labeled, generator), batch.labels,
                               self.weak_views(batch.unlabeled, generator),
                               self.strong_views(batch.unlabeled, generator), batch.indices,
                               batch.hidden_labels)

    def forward_views(self, inputs: WeakStrongViews
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One forward pass: the supervised numbers, the weak and the strong logits."""
        labeled, weak, strong = self.logits_of(inputs.labeled, inputs.weak, inputs.strong)
        return self.supervised_loss(labeled, inputs.labels), weak, strong


@SEMI_METHODS.register("fixmatch", "weak-view pseudo-labels above a threshold train the "
                       "strong view (Sohn et al. 2020)")
class FixMatch(WeakStrongMethod):
    """Supervised cross-entropy + λ_u · cross-entropy of the strong views against the
    confident weak views' pseudo-labels."""

    name = "fixmatch"
    Config = FixMatchConfig
    paper = "Sohn et al., NeurIPS 2020"

    def __init__(self, backbone: nn.Module, config: FixMatchConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if not 0.0 <= config.threshold <= 1.0:
            raise UserError(f"--threshold must be in [0, 1], got {config.threshold}")
        if config.pseudo_labels not in ("hard", "soft"):
            raise UserError(f"--pseudo-labels must be hard or soft, got {config.pseudo_labels!r}")
        if config.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {config.temperature}")
        self.alignment = (DistributionAlignment(data.num_classes, window=ALIGNMENT_WINDOW)
                          if config.distribution_alignment else None)

    # What FlexMatch and FreeMatch change: the thresholds and the state behind them.

    def class_thresholds(self, probabilities: torch.Tensor) -> float | torch.Tensor:
        """The threshold (one, or one per class ``[K]``) for this step's weak predictions
        (FreeMatch first folds them into its state)."""
        return self.config.threshold

    def update_state(self, probabilities: torch.Tensor, indices: torch.Tensor) -> None:
        """After masking: fold this step's weak predictions, gathered from every device, into
        the method's state (FlexMatch's; here none)."""

    def extra_losses(self, strong_logits: torch.Tensor, mask: torch.Tensor
                     ) -> dict[str, tuple[float, torch.Tensor]]:
        """Terms added to the loss besides the unlabeled cross-entropy, by name, each with
        its weight (FreeMatch's fairness loss)."""
        return {}

    # The step.

    def weak_predictions(self, weak_logits: torch.Tensor) -> torch.Tensor:
        """The weak views' softmax (no gradient), distribution-aligned when asked; the
        alignment's running mean then takes in this step's predictions of every device."""
        probabilities = weak_logits.detach().float().softmax(dim=1)
        if self.alignment is None:
            return probabilities
        aligned = self.alignment(probabilities)
        self.alignment.update(gather_no_gradient(probabilities))
        return aligned

    def training_loss(self, inputs: WeakStrongViews, step: StepInfo) -> dict[str, torch.Tensor]:
        losses, weak_logits, strong_logits = self.forward_views(inputs)
        probabilities = self.weak_predictions(weak_logits)  # [μB, K]
        threshold = self.class_thresholds(probabilities)
        if self.config.pseudo_labels == "hard":
            unlabeled, mask = fixmatch_unlabeled_loss(strong_logits, probabilities, threshold)
        else:
            _, _, mask = confidence_mask(probabilities, threshold)
            targets = sharpen(probabilities, self.config.temperature)
            unlabeled = masked_soft_cross_entropy(strong_logits, targets, mask)
        self.update_state(probabilities, inputs.indices)
        total = losses["loss"] + self.config.unlabeled_weight * unlabeled
        for name, (weight, value) in self.extra_losses(strong_logits, mask).items():
            total = total + weight * value
            losses[name] = value.detach()
        losses["loss"] = total
        losses["unlabeled_loss"] = unlabeled.detach()
        losses.update(pseudo_label_numbers(mask, probabilities.argmax(dim=1),
                                           inputs.hidden_labels))
        return losses
