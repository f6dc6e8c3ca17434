"""What Barlow Twins and VICReg share: two views through one network and one MLP projector.

Both papers (Zbontar et al., ICML 2021; Bardes, Ponce, LeCun, ICLR 2022) are symmetric
joint-embedding methods: the two views of an image go through the same backbone and the same
projector (VICReg's "expander"), hidden layers Linear-BN-ReLU and a plain Linear output, and
the loss looks at the statistics of the batch of projections. No predictor, no momentum
network, no stop-gradient, no negatives; only the loss differs, so each method is its
``Config`` and its ``training_loss``.

Both papers take BYOL's asymmetric augmentation (their official code's ``Transform`` and
``TrainTransform``): the first view always blurred and never solarised, the second blurred
with p = 0.1 and solarised with p = 0.2, colour jitter 0.4/0.4/0.2/0.1 with p = 0.8,
grayscale 0.2. Here it is :class:`fewlabels.augment.multicrop.MultiCropViews` with no local
views, as BYOL's module uses it, with this package's small-image adjustments: crops of
40-100% of the image (the papers: 8-100%), views of 3/4 of the image side (``view_size``)
and a blur whose sigma is a fraction of the view side.

**Projector size.** The papers' projector is 3 layers of 8192 units on a ResNet-50's 2048
features, and both show that wider is better (Barlow Twins, Fig. 4; VICReg, Table 7). On
this package's ConvNet (512 features, about 30 MFLOP per 20 px view for forward and
backward, docs/benchmarks.md) a 512-8192-8192-8192 projector would be 0.9 GFLOP per view,
thirty times the backbone. Each size is a trade against the epochs a 10-minute budget buys.
Counted with ``FlopCounterMode`` for a whole step (two views, forward and backward, the
loss's ``[D, D]`` products included): SimCLR's default 60 MFLOP per image; with 3 layers
of 1,024 units Barlow Twins 93 and VICReg 100 (as BYOL's 93); with 3 layers of 2,048 units
194 and 219. The defaults are 3 layers of 1,024 units, the papers' depth; a 2-minute run
with 2,048 (Barlow Twins) made half the steps and was 6 points worse by kNN.

Both views go through each network in one pass of 2N images (batch-norm statistics over
both views; the official code runs the views separately).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from fewlabels.augment.multicrop import MultiCropViews
from fewlabels.errors import UserError
from fewlabels.methods.base import Batch, DataInfo, Method, resolve_view_size
from fewlabels.models.heads import ProjectionHead
from fewlabels.options import option


@dataclass
class JointEmbeddingConfig:
    projection_dim: int = option(1024, "output size of the projector (the papers' 8192)")
    projection_hidden_dim: int = option(1024, "hidden size of the projector (the papers' 8192)")
    projection_layers: int = option(3, "linear layers of the projector (the papers: 3)")
    crop_scale: tuple[float, float] = option(
        (0.4, 1.0), "area of a crop, as a fraction of the image: min,max (the papers: 0.08,1)")
    blur_probabilities: tuple[float, float] = option(
        (1.0, 0.1), "probability of blurring the first and the second view")
    solarize_probabilities: tuple[float, float] = option(
        (0.0, 0.2), "probability of solarising the first and the second view")
    view_size: int = option(
        0, "side of the views in pixels; 0: 3/4 of the image side rounded down to a multiple "
           "of 4 (20 for 28 px images); the image size gives the papers' full-size views")


class JointEmbeddingMethod(Method):
    """Backbone and projector shared by both views; subclasses define the loss."""

    def __init__(self, backbone: nn.Module, config: JointEmbeddingConfig,
                 data: DataInfo) -> None:
        super().__init__(backbone, config, data)
        for name in ("projection_dim", "projection_hidden_dim", "projection_layers"):
            if getattr(config, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} must be at least 1, got {getattr(config, name)}")
        view_size = resolve_view_size(backbone, data, config.view_size)
        # Stored resolved, so a resumed run keeps its views if the default rule changes.
        self.config = dataclasses.replace(config, view_size=view_size)
        self.views = MultiCropViews(
            data.mean, data.std, global_size=view_size, global_scale=config.crop_scale,
            global_blur=config.blur_probabilities,
            global_solarize=config.solarize_probabilities)
        self.projection = ProjectionHead(backbone.feature_dim, config.projection_hidden_dim,
                                         config.projection_dim,
                                         num_layers=config.projection_layers)

    def make_views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        views, _ = self.views(batch.unlabeled, generator)
        return views  # [2N, C, S, S]: view 1 (blurred), view 2 (sometimes solarised)

    def embed(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The projections of the two views, ``[N, D]`` each, from one pass over ``[2N]``."""
        projections = self.projection(self.backbone(inputs))  # [2N, D]
        first, second = projections.chunk(2)
        return first, second
