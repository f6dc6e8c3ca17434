r"""MixMatch (Berthelot, Carlini, Goodfellow, Papernot, Oliver, Raffel, "MixMatch: A
Holistic Approach to Semi-Supervised Learning", NeurIPS 2019).

Every unlabeled image gets K weak views (translation and flip); the mean of their softmax
predictions, sharpened with a temperature, is its guessed label (eqs. 6-7, no gradient):

.. math:: \bar q_b = \frac{1}{K} \sum_{k=1}^{K} p(y \mid \hat u_{b,k}), \qquad
          q_b = \operatorname{Sharpen}(\bar q_b, T)

The labeled views with their one-hot labels and the K·U unlabeled views with their guesses
are shuffled together and each is mixed with a partner by MixUp with
:math:`\lambda' = \max(\lambda, 1 - \lambda)`, :math:`\lambda \sim \operatorname{Beta}
(\alpha, \alpha)` one per row (eqs. 8-11, :func:`~fewlabels.losses.consistency.mixup`), so
every mixed row stays mostly itself. The loss (eqs. 2-5) is the cross-entropy of the mixed
labeled rows against their mixed targets and the squared error of the mixed unlabeled rows'
probabilities against theirs, averaged over rows and classes
(:func:`~fewlabels.losses.consistency.mse_consistency`, the paper's
:math:`\frac{1}{L|U'|}\sum \lVert q - p \rVert^2`):

.. math:: \mathcal{L} = \mathrm{H}(p', \mathrm{p}(y \mid x')) + \lambda_u(t)\,
          \frac{1}{K |U'|} \sum_{u', q'} \lVert q' - \mathrm{p}(y \mid u') \rVert_2^2

The paper's CIFAR-10 values are the defaults: K = 2, T = 0.5, α = 0.75, λ_u = 75, as many
unlabeled images as labeled ones a step (μ = 1, B = 64), Adam at lr 0.002 with a moving
average of the weights (decay 0.999) for evaluation and no learning-rate decay.
:math:`\lambda_u(t)` rises linearly from 0 to λ_u over the first 1/64 of training
(``--rampup-fraction``): the official code ramps over its first 16,384 steps of 1,048,576
(``warmup_kimg=1024`` of ``train_kimg=65536``), the paper's "first 16,000 steps", and USB's
MixMatch keeps that fraction (``unsup_warmup`` 1/64). Here the ramp follows the training
progress, so it keeps its share of a ``--budget-minutes`` run.

Weight decay: the official code multiplies every convolution and dense kernel by
:math:`1 - 0.02\,\mathrm{lr}` after each Adam step (``wd *= lr``, then ``v * (1 - wd)``), a
decoupled decay of 4e-5 a step at lr 0.002. AdamW's decoupled decay
:math:`\theta \leftarrow \theta (1 - \mathrm{lr}\cdot\mathrm{wd})` with wd = 0.02 is the
same update, and biases and normalisation weights are exempt here as there. The recipe says
lr 0.008 because recipes give the learning rate for 256 images: 0.002 at the batch of 64.

Differences from the paper: one forward pass over all mixed rows, so batch norm normalises
them together (the official code runs three interleaved batches and updates the batch-norm
statistics from the first only); the guessing pass normalises with its batch's statistics
but leaves the running statistics unchanged (the official code discards its updates too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.engine.recipe import TrainingRecipe
from fewlabels.errors import UserError
from fewlabels.losses.consistency import (
    MixUp,
    frozen_batch_norm_statistics,
    mixup,
    mse_consistency,
    sharpen,
)
from fewlabels.methods.base import Batch, DataInfo, StepInfo
from fewlabels.options import option
from fewlabels.semi.base import ClassifierMethod, SemiSupervisedConfig, pseudo_label_numbers
from fewlabels.semi.registry import SEMI_METHODS

# Adam at 0.002 for 64 images (0.008 per 256) without decay (final = peak), AdamW's decoupled
# weight decay 0.02·lr a step as the official code's, no warm-up.
MIXMATCH_RECIPE = TrainingRecipe(
    optimizer="adamw", learning_rate=0.008, final_learning_rate=0.008, weight_decay=0.02,
    batch_size=64, warmup_epochs=0.0, epochs=30, adamw_betas=(0.9, 0.999),
    lr_decay="cosine")


class MixMatchViews(NamedTuple):
    """A step's inputs: one weak view of every labeled image, K of every unlabeled one."""

    labeled: torch.Tensor  # [B, C, H, W], normalised
    labels: torch.Tensor  # [B]
    unlabeled: torch.Tensor  # [K·U, C, H, W], view-major (all first views, then all second)
    hidden_labels: torch.Tensor | None  # [U], for the log only


@dataclass
class MixMatchConfig(SemiSupervisedConfig):
    unlabeled_ratio: int = option(
        1, "mu: unlabeled images per labeled image in a batch (MixMatch: 1, 64 of each)")
    unlabeled_weight: float = option(
        75.0, "lambda_u: weight of the squared-error term once ramped up (CIFAR-10: 75)")
    augmentations: int = option(2, "K: weak views per unlabeled image whose predictions "
                                   "are averaged into its guessed label")
    temperature: float = option(0.5, "T: sharpening temperature of the guessed labels")
    alpha: float = option(0.75, "alpha of MixUp's Beta(alpha, alpha)")
    rampup_fraction: float = option(
        1 / 64, "fraction of training over which lambda_u rises linearly from 0 (official "
        "code: 16,384 of 1,048,576 steps)")


@SEMI_METHODS.register("mixmatch", "sharpened mean of K views as guessed labels, MixUp "
                       "across labeled and unlabeled (Berthelot et al. 2019)")
class MixMatch(ClassifierMethod):
    """Cross-entropy on mixed labeled rows + λ_u(t) · squared error on mixed unlabeled rows
    against their mixed guessed labels."""

    name = "mixmatch"
    Config = MixMatchConfig
    paper = "Berthelot et al., NeurIPS 2019"
    recipe = MIXMATCH_RECIPE

    def __init__(self, backbone: nn.Module, config: MixMatchConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        checks = [
            (config.unlabeled_ratio >= 1, "--unlabeled-ratio must be at least 1"),
            (config.unlabeled_weight >= 0, "--unlabeled-weight must be at least 0"),
            (config.augmentations >= 1, "--augmentations must be at least 1"),
            (config.temperature > 0, "--temperature must be positive"),
            (config.alpha > 0, "--alpha must be positive"),
            (0 <= config.rampup_fraction <= 1, "--rampup-fraction must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{message} (mixmatch)")

    def make_views(self, batch: Batch, generator: torch.Generator) -> MixMatchViews:
        if batch.unlabeled is None:
            raise UserError("mixmatch needs unlabeled images; give --unlabeled-ratio >= 1")
        views = [self.weak_views(batch.unlabeled, generator)
                 for _ in range(self.config.augmentations)]
        return MixMatchViews(self.weak_views(batch.labeled, generator), batch.labels,
                             torch.cat(views), batch.hidden_labels)

    @torch.no_grad()
    def guess_labels(self, unlabeled_views: torch.Tensor) -> torch.Tensor:
        """Sharpen(mean of the K views' softmax, T) ``[U, classes]``, without gradient; batch
        norm uses the views' statistics and keeps its running ones."""
        with frozen_batch_norm_statistics(self.backbone):
            logits = self.logits(unlabeled_views).float()
        probabilities = logits.softmax(dim=1).reshape(self.config.augmentations, -1,
                                                      logits.shape[1])  # [K, U, classes]
        return sharpen(probabilities.mean(dim=0), self.config.temperature)

    def mix(self, labeled: torch.Tensor, labels: torch.Tensor, unlabeled: torch.Tensor,
            guesses: torch.Tensor, generator: torch.Generator) -> MixUp:
        """MixUp over the labeled views (one-hot targets) and the unlabeled views (their
        image's guess, for every view) together; rows keep this order."""
        targets = torch.cat([F.one_hot(labels, self.data.num_classes).to(guesses.dtype),
                             guesses.repeat(self.config.augmentations, 1)])
        return mixup(torch.cat([labeled, unlabeled]), targets, self.config.alpha, generator)

    def unlabeled_weight(self, progress: float) -> float:
        """λ_u(t): linear from 0 to λ_u over the first ``rampup_fraction`` of training."""
        ramp = self.config.rampup_fraction
        return self.config.unlabeled_weight * (1.0 if ramp <= 0 else min(1.0, progress / ramp))

    def training_loss(self, inputs: MixMatchViews, step: StepInfo) -> dict[str, torch.Tensor]:
        guesses = self.guess_labels(inputs.unlabeled)  # [U, classes]
        mixed = self.mix(inputs.labeled, inputs.labels, inputs.unlabeled, guesses,
                         step.generator)
        labeled_logits, unlabeled_logits = self.logits(mixed.inputs).float().split(
            [len(inputs.labeled), len(inputs.unlabeled)])
        supervised = F.cross_entropy(labeled_logits, mixed.targets[:len(inputs.labeled)])
        unlabeled = mse_consistency(unlabeled_logits.softmax(dim=1),
                                    mixed.targets[len(inputs.labeled):].detach())
        weight = self.unlabeled_weight(step.progress)
        with torch.no_grad():
            accuracy = (labeled_logits.argmax(dim=1) == inputs.labels).float().mean()
        everyone = torch.ones(len(guesses), dtype=torch.bool, device=guesses.device)
        return {"loss": supervised + weight * unlabeled, "supervised_loss": supervised.detach(),
                "labeled_accuracy": accuracy, "unlabeled_loss": unlabeled.detach(),
                "unlabeled_weight": torch.tensor(weight),
                **pseudo_label_numbers(everyone, guesses.argmax(dim=1), inputs.hidden_labels)}
