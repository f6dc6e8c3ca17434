"""VICReg: variance, invariance and covariance regularisation of two views' embeddings.

Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022. Both views go through the backbone and a 3-layer
expander (:mod:`fewlabels.methods.joint_embedding`); the loss
(:func:`fewlabels.losses.vicreg_loss`) pulls the two views' embeddings together (mean
squared error, weight 25), keeps the standard deviation of every dimension above 1 (a hinge,
weight 25) and decorrelates the dimensions of each view (squared off-diagonal covariances,
weight 1), with variances and covariances over the global batch and exact gradients. The
backbone is the representation evaluated, as in the paper.

The optimiser is the paper's LARS (trust coefficient 0.001, momentum 0.9; biases and
batch-norm parameters neither decayed nor adapted, at the same learning rate as the weights
as in the official code), on a warm-up and a cosine ending at a thousandth of the peak.

Differences from the paper, for 28-32 px images and runs of minutes on a CPU:

- Learning rate 0.5 per 256 images instead of 0.2, an expander of 3 layers of 1,024 units
  instead of 8,192 (the module docstring of ``joint_embedding`` gives the costs), a batch
  of 512 instead of 2,048, a warm-up of 1 epoch instead of 10; weight decay 1e-6 as the
  paper. A step costs 1.66 times SimCLR's default in FLOPs (100 against 60 MFLOP per image,
  ``FlopCounterMode``; 2,048 units would cost 3.7 times). Chosen by kNN at 10 labels per
  class (split seeds 0-1) after 2-minute runs on 12,000 images, two side by side with one
  thread each on a machine shared with other jobs: 0.2 gave 63.6% (65 steps), 0.5 66.0%
  (84 steps) and 1.0 65.9% (81 steps, beside the 0.5 run). Short runs, a few epochs: the
  10-minute benchmark row is the real test of these defaults.
- The views and the single pass of both views are those of ``joint_embedding``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.distributed import world_size
from fewlabels.errors import UserError
from fewlabels.losses.redundancy import vicreg_terms
from fewlabels.methods.base import DataInfo, StepInfo, TrainingRecipe, embedding_spread
from fewlabels.methods.joint_embedding import JointEmbeddingConfig, JointEmbeddingMethod
from fewlabels.methods.registry import METHODS
from fewlabels.options import option


@dataclass
class VICRegConfig(JointEmbeddingConfig):
    invariance_weight: float = option(25.0, "weight lambda of the invariance (MSE) term")
    variance_weight: float = option(25.0, "weight mu of the variance (hinge) term")
    covariance_weight: float = option(1.0, "weight nu of the covariance term")
    variance_target: float = option(
        1.0, "gamma: the standard deviation below which a dimension is penalised")


@METHODS.register("vicreg", "VICReg: variance, invariance and covariance terms on two "
                            "views' embeddings (Bardes et al. 2022)")
class VICReg(JointEmbeddingMethod):
    """VICReg with a 3-layer expander and statistics over all devices."""

    name = "vicreg"
    Config = VICRegConfig
    paper = "Bardes, Ponce, LeCun, ICLR 2022"
    collapse_hint = "raise --variance-weight, or lower --lr"
    # The paper's LARS with weight decay 1e-6, at 0.5 per 256 images instead of 0.2 (short
    # runs, module docstring); the cosine ends at a thousandth of the peak as in the official
    # code.
    recipe = TrainingRecipe(
        optimizer="lars", learning_rate=0.5, final_learning_rate=0.5e-3, weight_decay=1e-6,
        batch_size=512, warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: VICRegConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        weights = (config.invariance_weight, config.variance_weight, config.covariance_weight)
        if min(weights) < 0 or config.variance_target <= 0:
            raise UserError(f"the VICReg weights must be at least 0 and --variance-target "
                            f"positive, got {weights} and {config.variance_target}")

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        if inputs.shape[0] // 2 * world_size() < 2:
            raise UserError("VICReg's variances need at least 2 images in a batch; raise "
                            "--batch-size")
        first, second = self.embed(inputs)  # [N, D] each
        terms = vicreg_terms(first, second, self.config.variance_target)
        loss = (self.config.invariance_weight * terms.invariance
                + self.config.variance_weight * terms.variance
                + self.config.covariance_weight * terms.covariance)
        return {"loss": loss, "invariance": terms.invariance.detach(),
                "variance": terms.variance.detach(), "covariance": terms.covariance.detach(),
                # centred: the loss ignores the embeddings' common mean
                "embedding_spread": embedding_spread(first - first.mean(dim=0))}
