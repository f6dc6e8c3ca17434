"""Jigsaw puzzles: which permutation of a fixed set shuffled the nine tiles of an image?

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV 2016. Each image is cut into a 3 x 3 grid of cells and one tile is cut at a
random place inside each cell (:mod:`fewlabels.augment.tiles`), so tiles are separated by
gaps and their edges do not line up: the task cannot be solved by continuing lines across
tile borders. The tiles are shuffled by one permutation drawn from a fixed set of
``permutations`` (:func:`~fewlabels.augment.permutations.select_permutations`: chosen
greedily for a large minimum Hamming distance from ``permutation_seed``; stored as a buffer,
so a resumed run and its evaluation use the very same set). Position ``t`` of the shuffled
puzzle holds tile ``order[t]``. Every tile goes through the backbone (one shared encoder,
siamese over the nine tiles, in one pass), each tile's pooled features through a shared
fully connected layer (the paper's fc6), the nine results are concatenated in puzzle order
and a small MLP (fc7, fc8) classifies the permutation (cross-entropy).

Against shortcuts, as the paper: each tile is normalised to zero mean and unit standard
deviation on its own (``normalize_tiles``); on colour images a puzzle is turned gray with
probability ``grayscale_probability`` and each colour channel of a tile is cut up to
``channel_jitter`` pixels away from the others (chromatic aberration). One-channel data
(Fashion-MNIST) has no colour shortcut and skips both.

The set's minimum Hamming distance is stored resolved in the run's options
(``min_hamming_distance``: a value asked for is a requirement the set must meet) and logged
with every step as ``permutation_min_hamming``; ``pretext_accuracy`` (the fraction of
puzzles solved) is logged with the loss: it is what to watch, 1/permutations at chance.

Sizes for 28-32 px images. The paper cuts 64 px tiles from 75 px cells of a 225 px crop.
Here the cells are a third of the image (``cell_size`` 0: 9 px for 28 px images, 10 for 32),
the grid at a random offset of the 0-1 spare pixels, and the tiles 4/5 of the cell
(``tile_size`` 0: 7 px, so a tile moves by up to 1 px each way and gaps are 0-4 px, 2 on
average; the paper's tiles are 0.85 of the cell). The ConvNet's space-to-depth stem needs an
even side, and its three poolings want a few pixels, so tiles are resized (bilinear) to
``tile_input_size`` (0: the tile side rounded up to a multiple of 4, 8 px): the smallest
size the default backbone takes, which keeps the pixels at nearly the scale the backbone
sees at evaluation (full 28 px images), and keeps a step at 9 x 64 = 576 pixels per image
(a 20 px SimCLR view has 400, two per image).

Other differences from the paper's ImageNet recipe (AlexNet, 1,000 permutations, SGD at
0.01 with batch 256 for 350k iterations): 100 permutations by default (the paper's study
of the set trades more permutations for a harder task; a 10-minute CPU run sees too few
puzzles to learn 1,000 classes), a smaller fc6/fc7 (256 and 512 instead of 512 and 4,096), batch
norm in the head, SGD at 0.1 per 256 images with a cosine decay after a warm-up epoch, and
evaluation on the backbone's pooled features of whole images like every method here
(the paper transfers the convolutional layers and fine-tunes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment._random import draw_mask
from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import resize
from fewlabels.augment.permutations import (
    apply_orders,
    minimum_hamming_distance,
    select_permutations,
)
from fewlabels.augment.tiles import (
    check_tile_geometry,
    cut_tiles,
    draw_integers,
    gray_tiles_where,
    normalize_tiles,
    tile_positions,
)
from fewlabels.errors import UserError
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    check_view_size,
    embedding_spread,
    pretext_accuracy,
)
from fewlabels.methods.registry import METHODS
from fewlabels.options import option

GRID = 3
TILES = GRID * GRID
# Per-tile normalisation divides by at least this standard deviation (pixels in [0, 1]), so
# a nearly blank tile (Fashion-MNIST's background) is not blown up into noise.
MIN_TILE_STD = 0.05


class TileClassifier(nn.Module):
    """Late fusion of tiles (Noroozi & Favaro's and Doersch et al.'s heads): a shared layer
    per tile (fc6), the tiles' outputs concatenated in order, a hidden layer (fc7) and the
    classifier (fc8). Takes the backbone's features of ``tiles`` tiles per image,
    tile-major (row ``t N + i`` is tile ``t`` of image ``i``): ``[tiles N, D] -> [N,
    classes]``."""

    def __init__(self, feature_dim: int, tiles: int, tile_dim: int, hidden_dim: int,
                 classes: int) -> None:
        super().__init__()
        self.tiles = tiles
        self.per_tile = nn.Sequential(nn.Linear(feature_dim, tile_dim), nn.BatchNorm1d(tile_dim),
                                      nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(
            nn.Linear(tiles * tile_dim, hidden_dim), nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True), nn.Linear(hidden_dim, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        per_tile = self.per_tile(features)  # [T N, tile_dim]
        count = features.shape[0] // self.tiles
        # [T, N, tile_dim] -> [N, T * tile_dim]: image i's tiles side by side, in order
        joined = per_tile.view(self.tiles, count, -1).transpose(0, 1).reshape(count, -1)
        return self.classifier(joined)  # [N, classes]


def resolve_tile_input_size(backbone: nn.Module, channels: int, tile_size: int,
                            size: int) -> int:
    """The side tiles are resized to before the backbone: ``size``, or when it is 0 the tile
    side rounded up to a multiple of 4 (what a space-to-depth stem and a ViT's 4 px patches
    divide), checked against ``backbone``."""
    size = size or -(-tile_size // 4) * 4
    check_view_size(backbone, channels, size)
    return size


def check_geometry(image_size: int, cell_size: int, tile_size: int, jitter: int,
                   tile_name: str) -> None:
    """:func:`~fewlabels.augment.tiles.check_tile_geometry` as a user's error."""
    try:
        check_tile_geometry(image_size, GRID, cell_size, tile_size, jitter)
    except ValueError as error:
        raise UserError(f"{error}; choose a smaller --{tile_name}-size or a larger "
                        "--cell-size (at most a third of the image side)") from None


@dataclass
class JigsawConfig:
    permutations: int = option(
        100, "size of the permutation set, the classes of the task (the paper: 1,000)")
    permutation_seed: int = option(0, "seed of the greedy choice of the permutation set")
    min_hamming_distance: int = option(
        0, "smallest Hamming distance the set must keep between two permutations; 0: what "
           "the greedy choice reaches (the run stores the distance reached)")
    cell_size: int = option(0, "side of a grid cell in pixels; 0: a third of the image side")
    tile_size: int = option(
        0, "side of a tile cut at a random place in its cell; 0: 4/5 of the cell, rounded "
           "down (7 px in 9 px cells)")
    tile_input_size: int = option(
        0, "side the tiles are resized to for the backbone; 0: the tile side rounded up to a "
           "multiple of 4 (8 px)")
    normalize_tiles: bool = option(
        True, "normalise each tile to zero mean and unit deviation on its own (the paper); "
              "false: the dataset's mean and deviation")
    grayscale_probability: float = option(
        0.3, "colour images: probability of a gray puzzle (the paper: 0.3)")
    channel_jitter: int = option(
        1, "colour images: pixels each channel of a tile may move (the paper: 2 of 64 px)")
    tile_dim: int = option(256, "output size of the shared per-tile layer (fc6)")
    hidden_dim: int = option(512, "hidden size of the classifier over the joined tiles (fc7)")


@METHODS.register("jigsaw", "Jigsaw puzzles: classify the permutation of 3x3 tiles with gaps "
                            "(Noroozi & Favaro 2016)")
class Jigsaw(Method):
    """Jigsaw puzzles: 9 tiles through a shared backbone, joined, permutation classified."""

    name = "jigsaw"
    Config = JigsawConfig
    paper = "Noroozi & Favaro, ECCV 2016"
    collapse_hint = "lower --lr; check that pretext_accuracy rises above 1/--permutations"
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.1, weight_decay=5e-4, batch_size=256,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: JigsawConfig, data: DataInfo) -> None:
        cell = config.cell_size or data.image_size // GRID
        tile = config.tile_size or 4 * cell // 5
        check_options([
            (config.permutations >= 2, f"--permutations must be at least 2, got "
                                       f"{config.permutations}"),
            (config.min_hamming_distance >= 0, "--min-hamming-distance must be at least 0"),
            (0.0 <= config.grayscale_probability <= 1.0,
             "--grayscale-probability must be in [0, 1]"),
            (config.channel_jitter >= 0, "--channel-jitter must be at least 0"),
            (config.tile_dim >= 1 and config.hidden_dim >= 1,
             "--tile-dim and --hidden-dim must be at least 1"),
        ])
        check_geometry(data.image_size, cell, tile, max(0, (cell - tile) // 2), "tile")
        super().__init__(backbone, config, data)
        orders = select_permutations(config.permutations, TILES, config.permutation_seed)
        distance = minimum_hamming_distance(orders)
        if config.min_hamming_distance > distance:
            raise UserError(
                f"the greedy set of {config.permutations} permutations keeps a minimum Hamming "
                f"distance of {distance}, less than --min-hamming-distance "
                f"{config.min_hamming_distance}; ask for fewer permutations or a smaller distance")
        input_size = resolve_tile_input_size(backbone, data.channels, tile,
                                             config.tile_input_size)
        # Stored resolved, so a resumed run keeps its tiles if the default rules change.
        self.config = dataclasses.replace(
            config, cell_size=cell, tile_size=tile, tile_input_size=input_size,
            min_hamming_distance=distance)
        self.register_buffer("permutations", torch.from_numpy(orders))  # [P, 9]
        self.head = TileClassifier(backbone.feature_dim, TILES, config.tile_dim,
                                   config.hidden_dim, config.permutations)

    def make_views(self, batch: Batch, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles ``[9 N, C, S, S]`` (tile-major: row ``t N + i`` is position ``t`` of image
        ``i``'s shuffled puzzle) and the permutation indices ``[N]``."""
        config, images = self.config, to_float(batch.unlabeled)  # [N, C, H, W]
        count, channels, device = images.shape[0], images.shape[1], images.device
        cell, tile = config.cell_size, config.tile_size
        positions = tile_positions(
            count, min(images.shape[-2:]), GRID, cell, tile, (cell - tile) // 2,
            channels=channels, channel_jitter=config.channel_jitter if channels == 3 else 0,
            generator=generator, device=device)  # [N, 9, 2] or [N, 9, C, 2]
        labels = draw_integers((count,), 0, config.permutations - 1, generator, device)
        # Shuffling the positions shuffles the tiles: position t gets tile order[t].
        positions = apply_orders(positions, self.permutations[labels])
        tiles = cut_tiles(images, positions, tile)  # [N, 9, C, t, t]
        if channels == 3 and config.grayscale_probability > 0:
            gray = draw_mask(count, config.grayscale_probability, generator, device)
            tiles = gray_tiles_where(tiles, gray)
        tiles = tiles.transpose(0, 1).reshape(TILES * count, channels, tile, tile)
        if config.normalize_tiles:
            tiles = normalize_tiles(tiles, MIN_TILE_STD)
        else:
            tiles = normalize(tiles, self.data.mean, self.data.std, inplace=True)
        return resize(tiles, config.tile_input_size), labels

    def training_loss(self, inputs: tuple[torch.Tensor, torch.Tensor], step: StepInfo
                      ) -> dict[str, torch.Tensor]:
        tiles, labels = inputs
        features = self.backbone(tiles)  # [9N, D]: every tile in one pass
        logits = self.head(features)  # [N, P]
        return {"loss": F.cross_entropy(logits, labels),
                "pretext_accuracy": pretext_accuracy(logits, labels),
                "permutation_min_hamming": torch.tensor(float(self.config.min_hamming_distance)),
                "embedding_spread": embedding_spread(features)}
