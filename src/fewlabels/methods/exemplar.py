"""Exemplar CNN: every seed patch with its random transformations is one surrogate class.

Dosovitskiy, Springenberg, Riedmiller, Brox, "Discriminative Unsupervised Feature Learning
with Convolutional Neural Networks", NIPS 2014 (and Dosovitskiy, Fischer, Springenberg,
Riedmiller, Brox, TPAMI 2016). ``seeds`` patches of ``view_size`` pixels are taken once,
before the first epoch, from the training images: each from a different image (images are
drawn without replacement, cycling when there are more seeds than images), at a position
drawn with probability proportional to the patch's gradient energy (the sum over the
patch of the Sobel gradient magnitude of the image's luma), as the paper samples "from
regions containing considerable gradients" (:func:`seed_positions`). A seed's random
transformations (:func:`transform_patches`: translation by up to ``translation`` of the
patch side, scaling by a factor in ``scale``, rotation by up to ``rotation_degrees``, and
colour: brightness, contrast, saturation and hue, :func:`~fewlabels.augment.photometric.
color_jitter`) form its class, and the backbone with a linear layer learns to tell the
``seeds`` classes apart by cross-entropy. Each batch draws seeds uniformly and transforms
each independently. ``pretext_accuracy`` (the fraction of views whose seed the classifier
names; 1/``seeds`` at chance) is logged with the loss, as for the other pretext tasks.

The seeds are registered buffers (the source window around each seed, its centre and where
it came from), so a resumed run keeps its classes; they are taken with the epoch context's
generator (the run's seed), the same on every device.

Differences from the paper (32 px patches from 96 px STL-10 images, 8,000-32,000 classes,
a fixed set of 100-300 transformed samples per class made in advance, dropout, SGD at 0.01
with weight decay 0.004): 4,000 classes by default (a small dataset and a 10-minute run:
60,000 images an epoch visit each class about 15 times); patches of 3/4 of the image side
(20 px of Fashion-MNIST's 28: the network is evaluated on whole images, and a patch of a
third of a 28 px image holds little of an object); fresh transformations at every draw
instead of a fixed sample set; SimCLR-style colour jitter in place of the paper's PCA
contrast and HSV power transforms; SGD at 0.05 per 256 images with weight decay 5e-4, a
warm-up epoch and a cosine decay.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.photometric import color_jitter, luma
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    EpochContext,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    embedding_spread,
    pretext_accuracy,
    resolve_view_size,
)
from fewlabels.methods.registry import METHODS
from fewlabels.options import option


@dataclass
class ExemplarConfig:
    seeds: int = option(
        4000, "surrogate classes N: seed patches, one per image (the paper: 8,000-32,000 on "
              "STL-10)")
    view_size: int = option(
        0, "side of the seed patches and training views in pixels; 0: 3/4 of the image "
           "side rounded down to a multiple of 4 (20 for 28 px images)")
    translation: float = option(
        0.2, "largest shift of a patch, as a fraction of its side (the paper: 0.2)")
    scale: tuple[float, float] = option(
        (0.7, 1.4), "range of the zoom factor of a patch (the paper: 0.7,1.4)")
    rotation_degrees: float = option(20.0, "largest rotation of a patch (the paper: 20)")
    jitter_strength: float = option(
        1.0, "colour jitter strength s: brightness 0.4 s, contrast and saturation 0.5 s, hue "
             "0.1 s turns (the paper's contrast and colour transformations)")


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude ``[N, 1, H, W]`` of float images ``[N, C, H, W]`` (their luma for
    colour), by 3x3 Sobel filters with the border replicated (no edge at the image's
    border). Written as differences of shifted images, so a flat region gives exactly 0."""
    gray = luma(images) if images.shape[1] == 3 else images[:, :1]
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")  # [N, 1, H+2, W+2]
    across = padded[..., :, 2:] - padded[..., :, :-2]  # [N, 1, H+2, W]
    down = padded[..., 2:, :] - padded[..., :-2, :]  # [N, 1, H, W+2]
    horizontal = across[..., :-2, :] + 2 * across[..., 1:-1, :] + across[..., 2:, :]
    vertical = down[..., :, :-2] + 2 * down[..., :, 1:-1] + down[..., :, 2:]
    return torch.hypot(horizontal, vertical)


def seed_positions(images: torch.Tensor, patch_size: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """Top-left corners ``int64 [N, 2]`` (row, column) of one patch per image of float
    ``images [N, C, H, W]``, drawn with probability proportional to the patch's gradient
    energy (:func:`sobel_magnitude` summed over the patch); uniform in an image without
    gradients."""
    energy = F.avg_pool2d(sobel_magnitude(images), patch_size, stride=1)  # [N, 1, h, w]
    count, _, rows, columns = energy.shape
    weights = energy.flatten(1).double()  # [N, h*w]
    weights = weights + 1e-12 * weights.amax(dim=1, keepdim=True).clamp_min(1e-30)
    flat = torch.multinomial(weights.to(generator.device), 1, generator=generator)
    flat = flat.squeeze(1).to(images.device)
    return torch.stack([flat // columns, flat % columns], dim=1)


def transform_patches(windows: torch.Tensor, centres: torch.Tensor, patch_size: int,
                      zoom: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor
                      ) -> torch.Tensor:
    """Patches ``[B, C, P, P]`` sampled from float ``windows [B, C, W, W]`` around
    ``centres [B, 2]`` (x, y in pixels, 0 at the window's left/top edge), zoomed by
    ``zoom [B]`` (more than 1 magnifies), rotated by ``angles [B]`` (radians) and shifted by
    ``shifts [B, 2]`` (x, y in pixels); bilinear, the border repeated. With zoom 1, angle 0
    and no shift a patch whose corner is at whole pixels is copied exactly."""
    side = windows.shape[-1]
    extent = patch_size / (zoom * side)  # [B]: half the patch, in [-1, 1] units of the window
    cos, sin = torch.cos(angles) * extent, torch.sin(angles) * extent
    centre = (centres + shifts) * (2.0 / side) - 1.0  # [B, 2]
    theta = torch.stack([torch.stack([cos, -sin, centre[:, 0]], dim=1),
                         torch.stack([sin, cos, centre[:, 1]], dim=1)], dim=1)  # [B, 2, 3]
    grid = F.affine_grid(theta.to(windows.dtype), [len(windows), windows.shape[1], patch_size,
                                                   patch_size], align_corners=False)
    return F.grid_sample(windows, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


@METHODS.register("exemplar", "Exemplar CNN: each seed patch's transformations form one "
                              "surrogate class (Dosovitskiy et al. 2014)")
class Exemplar(Method):
    """Backbone + linear classifier over ``seeds`` surrogate classes of transformed patches."""

    name = "exemplar"
    Config = ExemplarConfig
    paper = "Dosovitskiy, Springenberg, Riedmiller, Brox, NIPS 2014"
    collapse_hint = "lower --lr or use fewer --seeds"
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=0.05, weight_decay=5e-4, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: ExemplarConfig, data: DataInfo) -> None:
        low, high = config.scale
        check_options([
            (config.seeds >= 2, f"--seeds must be at least 2, got {config.seeds}"),
            (0 <= config.translation <= 1,
             f"--translation must be in [0, 1], got {config.translation}"),
            (0 < low <= high, f"--scale must be two positive numbers low,high, got "
                              f"{config.scale}"),
            (config.rotation_degrees >= 0, "--rotation-degrees must be at least 0"),
            (0 <= config.jitter_strength <= 2,
             f"--jitter-strength must be in [0, 2], got {config.jitter_strength}"),
            (config.view_size <= data.image_size,
             f"--view-size {config.view_size} is larger than the {data.image_size} px "
             "images; choose at most the image side"),
        ])
        super().__init__(backbone, config, data)
        patch_size = resolve_view_size(backbone, data, config.view_size)
        # Stored resolved, so a resumed run keeps its patches if the default rule changes.
        self.config = dataclasses.replace(config, view_size=patch_size)
        self.window_size = min(data.image_size, 2 * patch_size)
        self.classifier = nn.Linear(backbone.feature_dim, config.seeds)
        window = (config.seeds, data.channels, self.window_size, self.window_size)
        self.register_buffer("seed_windows", torch.zeros(window, dtype=torch.uint8))
        self.register_buffer("seed_centres", torch.zeros(config.seeds, 2))
        self.register_buffer("seed_sources", torch.zeros(config.seeds, 3, dtype=torch.long))
        self.register_buffer("seeds_taken", torch.zeros((), dtype=torch.bool))

    # -- before the first epoch --------------------------------------------------------------

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        if bool(self.seeds_taken):
            return None
        return self.take_seeds(context.images, context.generator)

    @torch.no_grad()
    def take_seeds(self, images: torch.Tensor, generator: torch.Generator,
                   chunk: int = 1024) -> dict[str, float]:
        """Draw the seed patches from uint8 ``images [N, C, H, W]`` into the buffers."""
        count, patch, side = self.config.seeds, self.config.view_size, self.window_size
        size = images.shape[-1]
        if images.shape[1:] != (self.data.channels, self.data.image_size, self.data.image_size):
            raise ValueError(f"exemplar was built for {self.data.channels}x"
                             f"{self.data.image_size}px images, got {tuple(images.shape[1:])}")
        rounds = math.ceil(count / len(images))
        order = torch.cat([torch.randperm(len(images), generator=generator,
                                          device=generator.device) for _ in range(rounds)])
        sources = order[:count].to(images.device)  # [seeds]
        corners = torch.cat([seed_positions(to_float(images[sources[start:start + chunk]]),
                                            patch, generator)
                             for start in range(0, count, chunk)])  # [seeds, 2]: row, column
        # the window around each patch, inside the image
        window_corner = (corners + patch // 2 - side // 2).clamp(0, size - side)  # [seeds, 2]
        rows = window_corner[:, 0, None] + torch.arange(side, device=images.device)  # [s, W]
        columns = window_corner[:, 1, None] + torch.arange(side, device=images.device)
        picked = images[sources]  # [seeds, C, H, W]
        windows = picked.gather(2, rows[:, None, :, None].expand(-1, picked.shape[1], -1, size))
        windows = windows.gather(3, columns[:, None, None, :].expand(-1, picked.shape[1],
                                                                     side, -1))
        centres = (corners - window_corner).float() + patch / 2  # [seeds, 2]: y, x
        self.seed_windows.copy_(windows)
        self.seed_centres.copy_(centres.flip(1))  # x, y
        self.seed_sources.copy_(torch.cat([sources[:, None], corners], dim=1))
        self.seeds_taken.fill_(True)
        return {"seeds": float(count), "seed_images": float(sources.unique().numel())}

    # -- every step --------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        if not bool(self.seeds_taken):
            raise RuntimeError("exemplar's seed patches are taken at the first epoch start "
                               "(on_epoch_start); none yet")
        config, device = self.config, self.seed_windows.device
        count = len(batch.unlabeled)
        labels = torch.randint(config.seeds, (count,), generator=generator,
                               device=generator.device).to(device)  # [B]
        u = torch.rand(count, 4, generator=generator, device=generator.device).to(device)
        low, high = config.scale
        zoom = low + (high - low) * u[:, 0]
        angles = math.radians(config.rotation_degrees) * (2 * u[:, 1] - 1)
        shifts = config.translation * config.view_size * (2 * u[:, 2:] - 1)  # [B, 2]
        windows = to_float(self.seed_windows[labels])  # [B, C, W, W]
        patches = transform_patches(windows, self.seed_centres[labels], config.view_size,
                                    zoom, angles, shifts).clamp_(0.0, 1.0)
        s = config.jitter_strength
        if s > 0:
            patches = color_jitter(patches, 0.4 * s, 0.5 * s, 0.5 * s, min(0.5, 0.1 * s),
                                   p=1.0, inplace=True, generator=generator)
        return normalize(patches, self.data.mean, self.data.std, inplace=True), labels

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        patches, labels = inputs
        features = self.backbone(patches)  # [B, D]
        logits = self.classifier(features)  # [B, seeds]
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "pretext_accuracy": pretext_accuracy(logits, labels),
                "embedding_spread": embedding_spread(features)}
