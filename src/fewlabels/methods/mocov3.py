"""MoCo v3: InfoNCE between a query encoder with a predictor and its momentum copy, no queue.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021. The query encoder is the backbone, a projector (3-layer MLP, every layer with
batch norm, the output's without scale and shift) and a predictor (2-layer MLP); the key
encoder is a momentum copy of backbone and projector, whose coefficient rises on a cosine
from ``key_momentum`` to 1 (the paper's ``--moco-m-cos``; declared in :meth:`schedules`,
evaluated by the engine from the progress of training). The loss is the paper's
Algorithm 1: ``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr`` the InfoNCE of each query against the
keys of the whole global batch, gathered from all devices, scaled by ``2 tau``
(:func:`~fewlabels.losses.contrastive.moco_batch_loss`). Batch norm takes its statistics over
the global batch (``sync_batch_norm``, the paper's SyncBN). Views are BYOL's asymmetric pair
(:class:`~fewlabels.augment.multicrop.MultiCropViews` with two global views: blur with
probability 1.0 and 0.1, solarisation 0 and 0.2). As in the official code the key encoder
runs in train mode with its own batch-norm statistics (the EMA touches parameters only).
The query backbone is the representation evaluated; ``momentum`` is the key backbone.

Differences from the paper, for 28-32 px images and runs of minutes on a CPU:

- both views go through each encoder in one pass (batch-norm statistics over the 2N views,
  the convention of this library's multi-view methods) instead of one pass per view;
- MLPs of 1,024 hidden units instead of 4,096 (the output stays 256); ``projection_layers``
  3 as in the paper's text (its code uses 3 for ViTs, 2 for ResNets); the predictor's last
  linear layer has a bias (:class:`~fewlabels.models.heads.PredictionHead`; the code's has
  none);
- temperature 0.2 (the paper's ViT value and solo-learn's for CIFAR ResNets; the paper's
  ResNet-50 uses 1.0 with batches of 4,096);
- views of 3/4 of the image side and crops of 40-100 % of the image instead of 20-100 %
  (the code's ResNet-50 recipes; 8-100 % for ViTs): SimCLR's measured choice at this size;
  blur sigma relative to the view side;
- LARS at 0.6 per 256 images with weight decay 1e-6 (the code's defaults, which its
  100-epoch ResNet-50 uses), but a batch of 512 and 1 warm-up epoch instead of 4,096 and 10;
- key momentum from 0.99 (the paper's value for 100 and 300 epochs) to 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.multicrop import MultiCropViews
from fewlabels.engine.schedule import Schedule
from fewlabels.errors import UserError
from fewlabels.losses.contrastive import moco_batch_loss
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
class MoCoV3Config:
    temperature: float = option(0.2, "InfoNCE temperature tau (the paper: 0.2 for ViTs, 1.0 "
                                     "for ResNet-50)")
    key_momentum: float = option(
        0.99, "EMA coefficient of the key encoder at the start; it rises to 1 on a cosine")
    projection_dim: int = option(256, "output size of the projector and the predictor")
    projection_hidden_dim: int = option(1024, "hidden size of the projector and the predictor")
    projection_layers: int = option(3, "linear layers of the projector (the paper: 3)")
    view_size: int = option(
        0, "side of the training views in pixels; 0: 3/4 of the image side rounded down to a "
           "multiple of 4 (20 for 28 px images)")
    crop_scale: tuple[float, float] = option(
        (0.4, 1.0), "area of a crop, as a fraction of the image: min,max (the paper: 0.2,1)")


@METHODS.register("mocov3", "MoCo v3: symmetric InfoNCE over the global batch between a "
                            "predictor and a momentum encoder (Chen, Xie, He 2021)")
class MoCoV3(Method):
    """MoCo v3: backbone + projector + predictor against a momentum backbone + projector."""

    name = "mocov3"
    Config = MoCoV3Config
    paper = "Chen, Xie, He, ICCV 2021"
    sync_batch_norm = True
    collapse_hint = "lower --lr, or raise --key-momentum towards 0.996"
    recipe = TrainingRecipe(
        optimizer="lars", learning_rate=0.6, weight_decay=1e-6, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: MoCoV3Config, data: DataInfo) -> None:
        if not 0.0 <= config.key_momentum <= 1.0:
            raise UserError(f"--key-momentum must be in [0, 1], got {config.key_momentum}")
        if config.projection_layers < 1:
            raise UserError(f"--projection-layers must be at least 1, got "
                            f"{config.projection_layers}")
        super().__init__(backbone, config, data)
        view_size = resolve_view_size(backbone, data, config.view_size)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = config = dataclasses.replace(config, view_size=view_size)
        self.views = MultiCropViews(data.mean, data.std, global_size=view_size,
                                    global_scale=config.crop_scale)
        hidden, out = config.projection_hidden_dim, config.projection_dim
        self.projection = ProjectionHead(backbone.feature_dim, hidden, out,
                                         num_layers=config.projection_layers,
                                         last_batch_norm=True)
        self.prediction = PredictionHead(out, hidden, out)
        self.key_backbone = copy_as_teacher(backbone)
        self.key_projection = copy_as_teacher(self.projection)

    # -- declarations ------------------------------------------------------------------------

    def schedules(self) -> dict[str, Schedule]:
        return {"key_momentum": Schedule(self.config.key_momentum, 1.0, "cosine")}

    def representations(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "momentum": self.key_backbone}

    # -- training ----------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        views, _ = self.views(batch.unlabeled, generator)
        return views  # [2N, C, S, S]: view 1 of every image, then view 2

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        temperature = self.config.temperature
        queries = self.prediction(self.projection(self.backbone(inputs)))  # [2n, D]
        with torch.no_grad():
            keys = self.key_projection(self.key_backbone(inputs))  # [2n, D]
        first_query, second_query = queries.chunk(2)
        first_key, second_key = keys.chunk(2)
        loss = (moco_batch_loss(first_query, second_key, temperature)
                + moco_batch_loss(second_query, first_key, temperature))
        return {"loss": loss, "embedding_spread": embedding_spread(first_query)}

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        momentum = step.value("key_momentum")
        ema_update_(self.key_backbone, self.backbone, momentum, buffers="own")
        ema_update_(self.key_projection, self.projection, momentum, buffers="own")
