"""SimSiam: a Siamese network that predicts one view's projection from the other's, with a
stop-gradient and no negatives or momentum network.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021. Both views go
through the same backbone and projector ``f``; a bottleneck predictor ``h`` maps one view's
projection ``z`` to ``p``, and the loss is the symmetric negative cosine
``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` (:func:`simsiam_loss`), in [-1, 1]. The
stop-gradient is what keeps it from collapsing (the paper's Fig. 2). As in the paper, the
predictor's learning rate stays at its peak while the rest follows the warm-up and cosine
(:meth:`SimSiam.parameter_options`), and the optimiser is SGD with momentum.

The projector is the paper's CIFAR variant (its Appendix D): 2 layers, Linear-BN-ReLU-Linear-BN,
the output batch-normalised without scale and shift, rather than the 3 layers of its ImageNet
ResNet-50. Our images (28-32 px) and ConvNet are CIFAR-sized, and the paper chose 2 layers
for exactly that setting; a third 1024 x 1024 layer would also add some 15% to a step's FLOPs.
The predictor is Linear-BN-ReLU-Linear with a hidden layer a quarter of its output, the
paper's bottleneck (2048 -> 512 -> 2048).

Differences from the paper, for 28-32 px images and runs of minutes on a CPU:

- Projector and predictor outputs of 1024 dimensions (predictor hidden 256, the same 4:1
  bottleneck) instead of 2048 (hidden 512): at 2048 the heads would cost more FLOPs than
  the ConvNet itself.
- Learning rate 0.06 per 256 images instead of the CIFAR recipe's 0.03 (the ImageNet one is
  0.05): twice the rate for runs of some tens of epochs instead of 800; weight decay 5e-4 and
  batch 512 as on CIFAR, with a warm-up of 1 epoch (the paper has none at this batch size),
  no weight decay on biases and batch-norm parameters (the paper decays every parameter),
  and the engine's SGD, which uses Nesterov momentum.
- SimCLR's views as this package tunes them (crops of 40-100% instead of the paper's
  20-100%, colour jitter of strength 0.5, which is the paper's 0.4/0.4/0.4/0.1, grayscale
  p = 0.2, no blur as on CIFAR) at 3/4 of the image side (``view_size``).
- Both views go through the network in one pass of 2N images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.recipes import SimCLRViews
from fewlabels.losses.distillation import simsiam_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    ParameterOptions,
    StepInfo,
    TrainingRecipe,
    embedding_spread,
    resolve_view_size,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.heads import PredictionHead, ProjectionHead
from fewlabels.options import option


@dataclass
class SimSiamConfig:
    projection_dim: int = option(1024, "output size of the projector and the predictor "
                                       "(the paper's 2048)")
    projection_hidden_dim: int = option(1024, "hidden size of the 2-layer projector")
    prediction_hidden_dim: int = option(256, "hidden size of the bottleneck predictor "
                                             "(the paper: a quarter of the output)")
    fixed_prediction_learning_rate: bool = option(
        True, "keep the predictor at the peak learning rate (the paper); false: it decays "
              "with the rest")
    crop_scale_min: float = option(0.4, "smallest crop area, as a fraction of the image")
    jitter_strength: float = option(0.5, "colour jitter strength s (SimCLR appendix A)")
    grayscale_probability: float = option(0.2, "probability of converting a view to gray")
    view_size: int = option(
        0, "side of the views in pixels; 0: 3/4 of the image side rounded down to a multiple "
           "of 4 (20 for 28 px images); the image size gives the paper's full-size views")


@METHODS.register("simsiam", "SimSiam: predict the other view's projection behind a "
                             "stop-gradient (Chen & He 2021)")
class SimSiam(Method):
    """SimSiam with the paper's CIFAR projector, a bottleneck predictor and a stop-gradient."""

    name = "simsiam"
    Config = SimSiamConfig
    paper = "Chen & He, CVPR 2021"
    default_representation = "backbone"
    collapse_hint = ("lower --lr or raise --weight-decay towards the paper's 5e-4, and keep "
                     "the predictor's learning rate fixed (--fixed-prediction-learning-rate)")
    # The paper's CIFAR recipe (SGD, weight decay 5e-4, batch 512) at twice its learning rate
    # for runs of tens of epochs instead of 800, with a warm-up of 1 epoch.
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.06, weight_decay=5e-4, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: SimSiamConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        view_size = resolve_view_size(backbone, data, config.view_size)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.views = SimCLRViews(
            image_size=view_size, mean=data.mean, std=data.std,
            crop_scale=(config.crop_scale_min, 1.0), jitter_strength=config.jitter_strength,
            grayscale_p=config.grayscale_probability)
        self.projection = ProjectionHead(backbone.feature_dim, config.projection_hidden_dim,
                                         config.projection_dim, num_layers=2,
                                         last_batch_norm=True)
        self.prediction = PredictionHead(config.projection_dim, config.prediction_hidden_dim,
                                         config.projection_dim)

    def parameter_options(self, name: str, parameter: nn.Parameter) -> ParameterOptions:
        """The predictor keeps the peak learning rate (the paper's Table 1: a decayed
        predictor is worse); weight decay and LARS as the base class decides."""
        options = super().parameter_options(name, parameter)
        if name.startswith("prediction.") and self.config.fixed_prediction_learning_rate:
            return dataclasses.replace(options, scheduled_learning_rate=False)
        return options

    # -- training ----------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        return self.views.all_views(batch.unlabeled, generator)  # [2N, C, S, S]

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        # One pass over both views: batch-norm statistics over 2N, better use of the CPU.
        projections = self.projection(self.backbone(inputs))  # [2N, D]
        predictions = self.prediction(projections)  # [2N, D]
        first, second = projections.chunk(2)
        predicted_first, predicted_second = predictions.chunk(2)
        loss = (0.5 * simsiam_loss(predicted_first, second)
                + 0.5 * simsiam_loss(predicted_second, first))
        # The spread of the predictions: the projector's last batch norm keeps every
        # dimension of z at unit variance over the batch, so z can hardly reach one point,
        # while a collapsed predictor (or encoder) makes p the same for every image.
        return {"loss": loss, "embedding_spread": embedding_spread(predicted_first)}
