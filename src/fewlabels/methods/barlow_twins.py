"""Barlow Twins: make the cross-correlation of two views' embeddings the identity.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021. Both views go through the backbone and a 3-layer projector
(:mod:`fewlabels.methods.joint_embedding`); each view's projections are batch-normalised
over the global batch and their cross-correlation matrix ``C`` is pulled towards the
identity: ``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2``
(:func:`fewlabels.losses.barlow_twins_loss`), with ``C`` summed over devices with exact
gradients. The backbone is the representation evaluated, as in the paper.

The optimiser is the paper's LARS (trust coefficient 0.001, momentum 0.9; biases and
batch-norm parameters neither decayed nor adapted), on a warm-up and a cosine ending at a
thousandth of the peak, as the official code's schedule.

Differences from the paper, for 28-32 px images and runs of minutes on a CPU:

- **Learning rates.** The official code gives weights 0.2 per 256 images and biases and
  batch-norm parameters 0.0048 (0.024 times as much); the engine has one learning rate for
  every parameter. The loss is therefore multiplied by ``loss_scale`` = 0.024 (the first
  release of the official code scaled its loss by 1/32 with one learning rate for the same
  reason): the parameters LARS does not adapt then take the official code's steps, while
  LARS normalises the scale away for the weights. Only the weight decay's balance against
  the loss changes (a weight decay of 1.5e-6 against a gradient 0.024 times smaller); with
  the decays here and the few thousand steps of a budget it is negligible. The reported
  ``loss`` is the scaled one; ``on_diagonal`` and ``off_diagonal`` are unscaled.
- Learning rate 0.5 per 256 images instead of 0.2, a projector of 3 layers of 1,024 units
  instead of 8,192 (the module docstring of ``joint_embedding`` gives the costs), a batch
  of 512 instead of 2,048, a warm-up of 1 epoch instead of 10 (of 1,000); weight decay
  1.5e-6 as the paper (the official code: 1e-6). A step costs 1.56 times SimCLR's default
  in FLOPs (93 against 60 MFLOP per image, ``FlopCounterMode``), as much as BYOL's.
  Chosen by kNN at 10 labels per class (split seeds 0-1) after 2-minute runs on 12,000
  images, two side by side with one thread each on a machine shared with other jobs, so
  the step counts differ: 0.2 with 1,024 units 57.7% (56 steps), 0.2 with 2,048 units 51.3%
  (26 steps: 2.1 times the FLOPs of a step), 0.5 with 1,024 units 63.9% (70 steps). Short
  runs, a few epochs: the 10-minute benchmark row is the real test of these defaults.
- The views and the single pass of both views are those of ``joint_embedding``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.errors import UserError
from fewlabels.losses.redundancy import barlow_twins_terms
from fewlabels.methods.base import DataInfo, StepInfo, TrainingRecipe, embedding_spread
from fewlabels.methods.joint_embedding import JointEmbeddingConfig, JointEmbeddingMethod
from fewlabels.methods.registry import METHODS
from fewlabels.options import option


@dataclass
class BarlowTwinsConfig(JointEmbeddingConfig):
    off_diagonal_weight: float = option(
        5e-3, "weight lambda of the off-diagonal (redundancy) terms (the paper: 5e-3)")
    loss_scale: float = option(
        0.024, "factor on the loss: with LARS, the learning rate of biases and batch-norm "
               "parameters relative to the weights (the official code: 0.0048 / 0.2)")


@METHODS.register("barlow-twins", "Barlow Twins: the cross-correlation of two views' "
                                  "embeddings towards the identity (Zbontar et al. 2021)")
class BarlowTwins(JointEmbeddingMethod):
    """Barlow Twins with a 3-layer projector and the cross-correlation over all devices."""

    name = "barlow-twins"
    Config = BarlowTwinsConfig
    paper = "Zbontar, Jing, Misra, LeCun, Deny, ICML 2021"
    collapse_hint = ("lower --lr, or raise --off-diagonal-weight so the dimensions stay "
                     "decorrelated")
    # The paper's LARS with weight decay 1.5e-6, at 0.5 per 256 images instead of 0.2 (short
    # runs, module docstring); the cosine ends at a thousandth of the peak as in the official
    # code.
    recipe = TrainingRecipe(
        optimizer="lars", learning_rate=0.5, final_learning_rate=0.5e-3, weight_decay=1.5e-6,
        batch_size=512, warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: BarlowTwinsConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if config.off_diagonal_weight < 0 or config.loss_scale <= 0:
            raise UserError(f"--off-diagonal-weight must be at least 0 and --loss-scale "
                            f"positive, got {config.off_diagonal_weight} and "
                            f"{config.loss_scale}")

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        first, second = self.embed(inputs)  # [N, D] each
        terms = barlow_twins_terms(first, second)
        loss = terms.on_diagonal + self.config.off_diagonal_weight * terms.off_diagonal
        return {"loss": self.config.loss_scale * loss,
                "on_diagonal": terms.on_diagonal.detach(),
                "off_diagonal": terms.off_diagonal.detach(),
                # centred: the loss ignores the embeddings' mean, which may drift far from 0
                "embedding_spread": embedding_spread(first - first.mean(dim=0))}
