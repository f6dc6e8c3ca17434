"""Relative patch location (context prediction): where is this patch relative to the centre?

Doersch, Gupta, Efros, "Unsupervised Visual Representation Learning by Context Prediction",
ICCV 2015. An image is divided into a 3 x 3 grid of cells; the patch of the centre cell and
the patch of one of its 8 neighbours, drawn uniformly, go through the same backbone (a
siamese pair, in one pass), each pooled feature through a shared fully connected layer
(fc6), the two concatenated (centre first) and a small MLP (fc7, fc8) classifies which
neighbour it was (8-way cross-entropy). Label ``k`` is the neighbour cell
``NEIGHBOUR_CELLS[k]``: cells numbered row by row, 0 1 2 / 3 . 5 / 6 7 8 (the centre, 4, is
skipped), so 0 is the top left and 7 the bottom right.

Against trivial shortcuts, as the paper (Section 3): the patches are separated by a gap and
each is moved by a random ``jitter`` of up to 1 px, so that low-level cues (lines continuing
across boundaries, textures matching at the border) cannot give the answer
(:mod:`fewlabels.augment.tiles`); on colour images, the paper's colour dropping: in each
patch two of the three channels, chosen at random, are replaced by Gaussian noise of 1/100
of a channel's deviation (``color_dropping``), against chromatic aberration, which locates a
patch relative to the lens centre. One-channel data (Fashion-MNIST) has no chromatic
shortcut and skips it.

``pretext_accuracy`` (the fraction of pairs whose neighbour is found; 1/8 at chance) is
logged with the loss: it is what to watch for this method.

Sizes for 28-32 px images. The paper's patches are 96 px on a 144 px pitch (a 48 px gap),
moved by up to 7 px. Here the cells are a third of the image (``cell_size`` 0: 9 px for
28 px images) and the patches 2/3 of the cell as in the paper (``patch_size`` 0: 6 px, so
a nominal gap of 3 px, at least 1 px with the jitter), resized (bilinear) to
``patch_input_size`` (0: rounded up to a multiple of 4, 8 px: the smallest side the default
ConvNet takes, nearly the pixel scale it sees on whole images at evaluation). Other
differences from the paper's recipe (AlexNet-like towers with fc6 of 4,096, batch norm
added later, SGD for weeks on ImageNet): fc6/fc7 of 256 and 512 with batch norm, SGD at 0.1
per 256 images with weight decay 5e-4 and a cosine decay, and evaluation on the backbone's
pooled features of whole images like every method here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import resize
from fewlabels.augment.tiles import cut_tiles, draw_integers, drop_channels, tile_positions
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    embedding_spread,
    pretext_accuracy,
)
from fewlabels.methods.jigsaw import (
    GRID,
    TileClassifier,
    check_geometry,
    resolve_tile_input_size,
)
from fewlabels.methods.registry import METHODS
from fewlabels.options import option

CENTRE_CELL = 4
NEIGHBOUR_CELLS = (0, 1, 2, 3, 5, 6, 7, 8)  # label k -> cell, row by row without the centre
# Colour dropping's noise, in normalised units: 1/100 of a channel's standard deviation.
DROPPED_CHANNEL_NOISE = 0.01


def patch_pairs(positions: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """The positions of each image's centre patch and of its neighbour ``neighbours[i]``
    (labels 0..7) from the positions of all nine cells' patches ``[N, 9, ...]``:
    ``[N, 2, ...]`` (centre first)."""
    cells = torch.tensor(NEIGHBOUR_CELLS, device=positions.device)[neighbours.to(
        positions.device)]
    chosen = torch.stack((torch.full_like(cells, CENTRE_CELL), cells), dim=1)  # [N, 2]
    index = chosen.view(*chosen.shape, *([1] * (positions.dim() - 2)))
    return positions.gather(1, index.expand(*chosen.shape, *positions.shape[2:]))


@dataclass
class RelativePatchConfig:
    cell_size: int = option(0, "side of a grid cell in pixels; 0: a third of the image side")
    patch_size: int = option(
        0, "side of a patch; 0: 2/3 of the cell, rounded (6 px in 9 px cells: the paper's "
           "96 px on a 144 px pitch)")
    jitter: int = option(1, "pixels a patch may move each way from its cell's centre")
    patch_input_size: int = option(
        0, "side the patches are resized to for the backbone; 0: the patch side rounded up to "
           "a multiple of 4 (8 px)")
    color_dropping: bool = option(
        True, "colour images: replace two random channels of each patch by noise (the paper)")
    tile_dim: int = option(256, "output size of the shared per-patch layer (fc6)")
    hidden_dim: int = option(512, "hidden size of the classifier over the pair (fc7)")


@METHODS.register("relative-patch", "Context prediction: where a patch lies relative to the "
                                    "centre patch, 8-way (Doersch et al. 2015)")
class RelativePatch(Method):
    """Relative patch location: centre and neighbour through a shared backbone, joined,
    8-way classified."""

    name = "relative-patch"
    Config = RelativePatchConfig
    paper = "Doersch, Gupta, Efros, ICCV 2015"
    collapse_hint = "lower --lr; check that pretext_accuracy rises above 1/8"
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.1, weight_decay=5e-4, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: RelativePatchConfig,
                 data: DataInfo) -> None:
        cell = config.cell_size or data.image_size // GRID
        patch = config.patch_size or round(2 * cell / 3)
        check_options([
            (config.jitter >= 0, f"--jitter must be at least 0, got {config.jitter}"),
            (config.tile_dim >= 1 and config.hidden_dim >= 1,
             "--tile-dim and --hidden-dim must be at least 1"),
        ])
        check_geometry(data.image_size, cell, patch, config.jitter, "patch")
        super().__init__(backbone, config, data)
        input_size = resolve_tile_input_size(backbone, data.channels, patch,
                                             config.patch_input_size)
        # Stored resolved, so a resumed run keeps its patches if the default rules change.
        self.config = dataclasses.replace(config, cell_size=cell, patch_size=patch,
                                          patch_input_size=input_size)
        self.head = TileClassifier(backbone.feature_dim, 2, config.tile_dim, config.hidden_dim,
                                   len(NEIGHBOUR_CELLS))

    def make_views(self, batch: Batch, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches ``[2N, C, S, S]`` (the N centres, then the N neighbours) and the
        neighbours' labels ``[N]``."""
        config, images = self.config, to_float(batch.unlabeled)  # [N, C, H, W]
        count, channels, device = images.shape[0], images.shape[1], images.device
        positions = tile_positions(count, min(images.shape[-2:]), GRID, config.cell_size,
                                   config.patch_size, config.jitter, generator=generator,
                                   device=device)  # [N, 9, 2]
        labels = draw_integers((count,), 0, len(NEIGHBOUR_CELLS) - 1, generator, device)
        patches = cut_tiles(images, patch_pairs(positions, labels), config.patch_size)
        patches = patches.transpose(0, 1).reshape(2 * count, channels, config.patch_size,
                                                  config.patch_size)  # [2N, C, p, p]
        patches = normalize(patches, self.data.mean, self.data.std, inplace=True)
        if config.color_dropping and channels == 3:
            patches = drop_channels(patches[:, None], DROPPED_CHANNEL_NOISE,
                                    generator=generator)[:, 0]
        return resize(patches, config.patch_input_size), labels

    def training_loss(self, inputs: tuple[torch.Tensor, torch.Tensor], step: StepInfo
                      ) -> dict[str, torch.Tensor]:
        patches, labels = inputs
        features = self.backbone(patches)  # [2N, D]: both patches in one pass
        logits = self.head(features)  # [N, 8]
        return {"loss": F.cross_entropy(logits, labels),
                "pretext_accuracy": pretext_accuracy(logits, labels),
                "embedding_spread": embedding_spread(features)}
