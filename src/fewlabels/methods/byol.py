"""BYOL: an online network learns to predict a slow-moving average of itself.

Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch, Pires, Guo, Azar, Piot,
Kavukcuoglu, Munos, Valko, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020. The online network is backbone -> projector (Linear-BN-ReLU-Linear)
-> predictor (the same shape); the target network is an exponential moving average of the
online backbone and projector, ``ξ <- τ ξ + (1 - τ) θ`` after every optimiser step, with
``τ`` rising on a cosine from ``base_momentum`` to 1 (the schedule ``teacher_momentum``, set
by the fraction of training done, so it reaches 1 on the last step whether the run is counted
in epochs or in minutes). The loss is the paper's symmetric ``2 - 2 cos`` between the online
prediction of one view and the target projection of the other (:func:`byol_loss`), with no
gradient into the target. Views follow the paper's asymmetric recipe: the first view always
blurred and never solarised, the second blurred with p = 0.1 and solarised with p = 0.2.
The online backbone is the representation evaluated, as in the paper; the target's is
offered as ``target``.

As in the official code (deepmind-research/byol, ``byol_experiment.py``), the target runs in
train mode, so its batch norm normalises with the batch's statistics, and its moving average
covers parameters only: its running statistics are its own, from its own forward passes
(``ema_update_(..., buffers="own")``); they serve only when the target is evaluated.

Differences from the paper, for 28-32 px images and runs of minutes on a CPU:

- ``base_momentum`` 0.99 instead of 0.996: the official code's presets tie the base to the
  length of training (0.97 for 40 ImageNet epochs, 0.99 for 100 and 300, 0.996 for 1000).
  A ten-minute run here is a few thousand steps (some 20-30 epochs); with 0.996 the target
  would average over the last ~250 steps, a tenth of the run, and lag far behind the online
  network early on, where most of the learning happens. 0.99 averages over ~100 steps.
- Learning rate 0.45 per 256 images with 1 epoch of warm-up and weight decay 1e-6: the
  official code's presets for its shortest runs (40 and 100 epochs), against 0.2 and 1.5e-6
  with 10 epochs of warm-up for 1000 epochs.
- Heads of 1024 hidden units instead of 4096 (output 256, as in the paper): with 4096 the
  projector, predictor and target projector would cost more than the whole ConvNet.
- Views of 3/4 of the image side (``view_size``, as SimCLR's default), crops of 40-100% of
  the image instead of 8-100% (what SimCLR measured best on 20 px Fashion-MNIST views), and
  a blur whose sigma is a fraction of the view side (``augment.multicrop``).
- Both views go through each network in one pass of 2N images (batch-norm statistics over
  both views; the official code runs the views separately), and the target starts as a copy
  of the online network (the official code initialises it independently).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.multicrop import MultiCropViews
from fewlabels.engine.schedule import Schedule
from fewlabels.errors import UserError
from fewlabels.losses.distillation import byol_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    embedding_spread,
    resolve_view_size,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.heads import PredictionHead, ProjectionHead
from fewlabels.models.momentum import copy_as_teacher, ema_update_
from fewlabels.options import option


@dataclass
class BYOLConfig:
    projection_dim: int = option(256, "output size of the projector and predictor")
    projection_hidden_dim: int = option(1024, "hidden size of the projector (the paper's 4096)")
    prediction_hidden_dim: int = option(1024, "hidden size of the predictor (the paper's 4096)")
    base_momentum: float = option(
        0.99, "EMA coefficient tau of the target at the start (the paper: 0.996 for 1000 "
              "epochs; 0: the target is the online network)")
    final_momentum: float = option(1.0, "EMA coefficient at the end of the cosine")
    crop_scale: tuple[float, float] = option(
        (0.4, 1.0), "area of a crop, as a fraction of the image: min,max (the paper: 0.08,1)")
    blur_probabilities: tuple[float, float] = option(
        (1.0, 0.1), "probability of blurring the first and the second view")
    solarize_probabilities: tuple[float, float] = option(
        (0.0, 0.2), "probability of solarising the first and the second view")
    view_size: int = option(
        0, "side of the views in pixels; 0: 3/4 of the image side rounded down to a multiple "
           "of 4 (20 for 28 px images); the image size gives the paper's full-size views")


@METHODS.register("byol", "BYOL: predict a momentum target network's projection of another "
                          "view (Grill et al. 2020)")
class BYOL(Method):
    """BYOL with a momentum target network and the symmetric loss."""

    name = "byol"
    Config = BYOLConfig
    paper = "Grill et al., NeurIPS 2020"
    default_representation = "backbone"
    collapse_hint = ("raise --base-momentum towards the paper's 0.996 so the target moves more "
                     "slowly, or lower --lr")
    # The official code's presets for short runs (40-100 epochs): LARS, 0.45 per 256 images,
    # weight decay 1e-6; a warm-up of 1 epoch as SimCLR's.
    recipe = TrainingRecipe(
        optimizer="lars", learning_rate=0.45, weight_decay=1e-6, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: BYOLConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        if not 0.0 <= config.base_momentum <= config.final_momentum <= 1.0:
            raise UserError(f"--base-momentum and --final-momentum must satisfy 0 <= base <= "
                            f"final <= 1, got {config.base_momentum} and "
                            f"{config.final_momentum}")
        view_size = resolve_view_size(backbone, data, config.view_size)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.views = MultiCropViews(
            data.mean, data.std, global_size=view_size, global_scale=config.crop_scale,
            global_blur=config.blur_probabilities,
            global_solarize=config.solarize_probabilities)
        self.projection = ProjectionHead(backbone.feature_dim, config.projection_hidden_dim,
                                         config.projection_dim)
        self.prediction = PredictionHead(config.projection_dim, config.prediction_hidden_dim,
                                         config.projection_dim)
        self.target_backbone = copy_as_teacher(backbone)
        self.target_projection = copy_as_teacher(self.projection)

    # -- declarations ------------------------------------------------------------------------

    def schedules(self) -> dict[str, Schedule]:
        return {"teacher_momentum": Schedule(self.config.base_momentum,
                                             self.config.final_momentum, "cosine")}

    def representations(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "target": self.target_backbone}

    # -- training ----------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        views, _ = self.views(batch.unlabeled, generator)
        return views  # [2N, C, S, S]: view 1 (blurred), view 2 (sometimes solarised)

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        # One pass of both views through each network: batch-norm statistics over 2N.
        projections = self.projection(self.backbone(inputs))  # [2N, D]
        predictions = self.prediction(projections)  # [2N, D]
        with torch.no_grad():  # the target: train mode, batch statistics, no gradient
            targets = self.target_projection(self.target_backbone(inputs))  # [2N, D]
        first, second = predictions.chunk(2)
        target_first, target_second = targets.chunk(2)
        loss = byol_loss(first, target_second) + byol_loss(second, target_first)
        return {"loss": loss, "embedding_spread": embedding_spread(projections.chunk(2)[0])}

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        momentum = step.value("teacher_momentum")
        ema_update_(self.target_backbone, self.backbone, momentum, buffers="own")
        ema_update_(self.target_projection, self.projection, momentum, buffers="own")
