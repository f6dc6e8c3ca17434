"""SimCLR: contrast two augmented views of every image against the rest of the batch.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. Backbone -> 2-layer projection head -> NT-Xent over the 2N views
of the global batch (negatives gathered across devices).

The loss, head and augmentations are the paper's. The defaults are tuned for a small budget
on 28-32 px images (docs/benchmarks.md) and differ from the paper's ImageNet recipe: crops
of 40-100% of the image instead of 8-100%, temperature 0.5, no blur, a learning rate of 0.6
per 256 images instead of 0.3, and views of 3/4 of the image side (``view_size``; pass the
image size for the paper's full-size views).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.recipes import SimCLRViews
from fewlabels.losses.contrastive import nt_xent_loss
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
from fewlabels.models.heads import ProjectionHead
from fewlabels.options import option as _option


@dataclass
class SimCLRConfig:
    temperature: float = _option(0.5, "NT-Xent temperature tau")
    projection_dim: int = _option(128, "output size of the projection head")
    projection_hidden_dim: int = _option(512, "hidden size of the 2-layer projection head")
    crop_scale_min: float = _option(0.4, "smallest crop area, as a fraction of the image")
    jitter_strength: float = _option(0.5, "colour jitter strength s (SimCLR appendix A)")
    grayscale_probability: float = _option(0.2, "probability of converting a view to gray")
    blur_probability: float = _option(0.0, "probability of Gaussian blur (0 for small images)")
    view_size: int = _option(
        0, "side of the training views in pixels; 0: 3/4 of the image side rounded down to a "
        "multiple of 4 (20 for 28 px images), faster than full-size views and better at a "
        "fixed budget; the image size gives the paper's full-size views")


@METHODS.register("simclr", "SimCLR: NT-Xent contrast of two views (Chen et al. 2020)")
class SimCLR(Method):
    """SimCLR with a 2-layer projection head and NT-Xent across all devices."""

    name = "simclr"
    Config = SimCLRConfig
    paper = "Chen, Kornblith, Norouzi, Hinton, ICML 2020"
    # The paper's LARS at 0.3 x batch / 256 is tuned for 100+ epochs; for short runs it
    # prefers larger rates (its appendix B.1). 0.6 won at a 10-minute budget (benchmarks).
    recipe = TrainingRecipe(
        optimizer="lars", learning_rate=0.6, weight_decay=1e-6, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: SimCLRConfig, data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        self.projection = ProjectionHead(
            backbone.feature_dim, config.projection_hidden_dim, config.projection_dim
        )
        view_size = resolve_view_size(backbone, data, config.view_size)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.views = SimCLRViews(
            image_size=view_size,
            mean=data.mean,
            std=data.std,
            crop_scale=(config.crop_scale_min, 1.0),
            jitter_strength=config.jitter_strength,
            grayscale_p=config.grayscale_probability,
            blur_p=config.blur_probability,
        )

    def make_views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        return self.views.all_views(batch.unlabeled, generator)  # [2N, C, S, S]: view 1, view 2

    def training_loss(self, inputs: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        # One pass over both views: BatchNorm statistics over 2N, better use of the CPU.
        projections = self.projection(self.backbone(inputs))  # [2N, projection_dim]
        first, second = projections.chunk(2)
        return {"loss": nt_xent_loss(first, second, self.config.temperature),
                "embedding_spread": embedding_spread(first)}
