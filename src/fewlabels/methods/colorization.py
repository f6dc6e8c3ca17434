"""Colorization: predict the colours (quantised ab of CIE Lab) of an image from its lightness.

Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016. Each training image goes to
Lab (:mod:`fewlabels.augment.lab`); the backbone sees only the lightness ``L``, a
:class:`~fewlabels.models.decoder.PixelDecoder` turns its pooled features into scores over
``Q`` ab bins at every output pixel, and the loss is the cross-entropy against soft-encoded
targets with class rebalancing (:func:`~fewlabels.losses.colorization.colorization_loss`):
bins of side ``grid_size`` = 10 in the ab plane, the Q = 261 that 8-bit sRGB colours fall in
(:func:`~fewlabels.augment.lab.gamut_ab_bins`; the paper keeps 313 "in-gamut" bins by its own
rule), targets spread over the 5 nearest bins with a Gaussian of sigma 5, and each pixel
weighted by its nearest bin's weight from the training pixels' bin distribution, smoothed
(sigma 5) and mixed half and half with uniform (lambda 0.5), normalised to an expected
weight of 1. The distribution is counted once, before the first epoch (``on_epoch_start``),
over every pixel of ``prior_images`` = 10,000 training images drawn at random (7.8M pixels
of 28 px images for 261 bins; all 60,000 take about 4 times longer, seconds of the budget
for no visible change), and kept in buffers (``bin_prior``, ``bin_weights``), so a resumed
run has it without counting again.

What the backbone sees. The backbone is built for the data's 3 channels; its input is
``(L - 50) / 50`` repeated in all three (:func:`lightness_input`), so it sees the lightness
alone. Evaluation and export feed normalised RGB images, so :meth:`Colorization.
representations` wraps the backbone in :class:`LightnessBackbone`, which undoes the
normalisation and takes the lightness first: the features of an image do not depend on its
ab channels, in training and in evaluation alike. ``fewlabels export`` writes the backbone
alone and records the conversion, and ``load_backbone`` wraps it again, so an export gives
the features evaluation uses.

Colour data only: on grey images there is nothing to predict, and the method refuses with a
message naming ``--data fashion-mnist-m``.

Differences from the paper (a VGG-style network on 224 px ImageNet images predicting at 56
px, trained with Adam), for 28-32 px images and runs of minutes on a CPU: any backbone of
the zoo, whose pooled features must carry everything the colours need (the decoder reads
only them); the bins are predicted at a quarter of the image side as in the paper
(``output_stride`` 4: 7 px for 28 px images, against the ab averaged over 4x4 blocks;
stride 2 predicts at 14 px and makes the step about twice as slow on a CPU, the decoder's
last layer and the loss growing with the output's pixels); random horizontal flips as the
only augmentation; AdamW at 1e-3 per 256 images with betas 0.9, 0.99 and a decoupled weight
decay of 1e-3, a warm-up epoch and a cosine decay (not tuned yet). The paper's
annealed-mean decoding of colours is for showing colourised images and not needed to learn
features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import to_float
from fewlabels.augment.geometric import horizontal_flip, random_resized_crop
from fewlabels.augment.lab import (
    gamut_ab_bins,
    linear_rgb_to_lab,
    rgb_to_lab,
    uint8_to_linear,
)
from fewlabels.errors import UserError
from fewlabels.losses.colorization import (
    colorization_loss,
    rebalancing_weights,
    smooth_distribution,
)
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    EpochContext,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    embedding_spread,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.decoder import PixelDecoder
from fewlabels.models.lightness import LightnessBackbone, lightness_input
from fewlabels.options import option


@dataclass
class ColorizationConfig:
    grid_size: float = option(10.0, "side of the ab bins (the paper: 10, giving 261 bins)")
    neighbours: int = option(5, "nearest bins each pixel's soft target spreads over (paper: 5)")
    sigma: float = option(
        5.0, "Gaussian width of the soft targets and of the prior's smoothing (paper: 5)")
    rebalance_mix: float = option(
        0.5, "lambda, the uniform distribution's share in the rebalancing prior (paper: 0.5); "
             "1: no rebalancing")
    output_stride: int = option(
        4, "the bins are predicted at 1/stride of the image side, 7 px for 28 px images "
           "(the paper: 4, 56 of 224 px)")
    decoder_width: int = option(32, "channels of the decoder's last up-convolution stage")
    crop_scale_min: float = option(
        1.0, "smallest random crop, as a fraction of the image area; 1: whole images")
    flip: bool = option(True, "mirror each image left-right with probability 1/2")
    prior_images: int = option(
        10_000, "training images, drawn at random, whose pixels give the bins' distribution "
                "before the first epoch; 0: all (the paper: all of ImageNet)")


def nearest_bin_table(bins: torch.Tensor, grid_size: float) -> tuple[torch.Tensor, int, int]:
    """A lookup from grid cells to bins: ``table[i - low_a, j - low_b]`` is the index of the
    bin nearest to the cell centred at ``(i, j) * grid_size``; with ``low_a, low_b``. The
    bins are grid cells themselves, so a colour whose nearest cell is a bin finds itself."""
    cells = torch.round(bins / grid_size).long()  # [Q, 2]
    low = cells.min(dim=0).values - 1
    high = cells.max(dim=0).values + 1
    a = torch.arange(int(low[0]), int(high[0]) + 1)
    b = torch.arange(int(low[1]), int(high[1]) + 1)
    centres = torch.stack(torch.meshgrid(a, b, indexing="ij"), dim=-1).float() * grid_size
    table = torch.cdist(centres.view(-1, 2), bins.float()).argmin(dim=1)
    return table.view(len(a), len(b)), int(low[0]), int(low[1])


@METHODS.register("colorization", "Colorization: quantised ab colours from the L channel, "
                                  "rebalanced classification (Zhang et al. 2016)")
class Colorization(Method):
    """Colorization: backbone on the lightness, pixel decoder to ab-bin scores, rebalanced
    soft-encoded cross-entropy."""

    name = "colorization"
    Config = ColorizationConfig
    paper = "Zhang, Isola, Efros, ECCV 2016"
    collapse_hint = "lower --lr"
    recipe = TrainingRecipe(
        optimizer="adamw", learning_rate=1e-3, weight_decay=1e-3, batch_size=256,
        warmup_epochs=1.0, epochs=100, adamw_betas=(0.9, 0.99),
    )

    def __init__(self, backbone: nn.Module, config: ColorizationConfig, data: DataInfo) -> None:
        if data.channels != 3:
            raise UserError(f"colorization predicts colours and needs colour images, but this "
                            f"data has {data.channels} channel(s); use --data fashion-mnist-m")
        stride = config.output_stride
        check_options([
            (config.grid_size > 0, f"--grid-size must be positive, got {config.grid_size}"),
            (config.neighbours >= 1, f"--neighbours must be at least 1, got {config.neighbours}"),
            (config.sigma > 0, f"--sigma must be positive, got {config.sigma}"),
            (0 <= config.rebalance_mix <= 1,
             f"--rebalance-mix must be in [0, 1], got {config.rebalance_mix}"),
            (stride >= 1 and data.image_size % stride == 0,
             f"--output-stride must divide the image side {data.image_size}, got {stride}"),
            (config.decoder_width >= 1, "--decoder-width must be at least 1"),
            (config.prior_images >= 0, "--prior-images must be at least 0 (0: all)"),
            (0 < config.crop_scale_min <= 1,
             f"--crop-scale-min must be in (0, 1], got {config.crop_scale_min}"),
        ])
        super().__init__(backbone, config, data)
        bins = gamut_ab_bins(config.grid_size)  # [Q, 2]
        self.register_buffer("bins", bins)
        self.register_buffer("bin_prior", torch.full((len(bins),), 1.0 / len(bins)))
        self.register_buffer("bin_weights", torch.ones(len(bins)))
        self.register_buffer("prior_ready", torch.zeros((), dtype=torch.bool))
        self.decoder = PixelDecoder(backbone.feature_dim, len(bins), data.image_size // stride,
                                    width=config.decoder_width)

    # -- before the first epoch --------------------------------------------------------------

    @torch.no_grad()
    def bin_counts(self, images: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """How many pixels of ``images`` (uint8 ``[N, 3, H, W]``) fall nearest to each bin:
        ``[Q]`` float64, counted in chunks of images."""
        table, low_a, low_b = nearest_bin_table(self.bins.cpu(), self.config.grid_size)
        table = table.to(images.device)
        counts = torch.zeros(len(self.bins), dtype=torch.float64, device=images.device)
        for start in range(0, len(images), chunk):
            linear = uint8_to_linear(images[start : start + chunk])  # [n, 3, H, W]
            ab = linear_rgb_to_lab(linear)[:, 1:]  # [n, 2, H, W]
            cells = torch.round(ab / self.config.grid_size).long()
            rows = (cells[:, 0] - low_a).clamp_(0, table.shape[0] - 1)
            cols = (cells[:, 1] - low_b).clamp_(0, table.shape[1] - 1)
            nearest = table[rows, cols].flatten()
            counts += torch.bincount(nearest, minlength=len(self.bins)).double()
        return counts

    def on_epoch_start(self, context: EpochContext) -> dict[str, float] | None:
        if bool(self.prior_ready):
            return None
        images = context.images
        if 0 < self.config.prior_images < len(images):
            chosen = torch.randperm(len(images), generator=context.generator,
                                    device=context.generator.device)[: self.config.prior_images]
            images = images[chosen.to(images.device)]
        counts = self.bin_counts(images)
        prior = smooth_distribution(counts, self.bins, self.config.sigma)
        weights = rebalancing_weights(prior, self.config.rebalance_mix)
        self.bin_prior.copy_(prior)
        self.bin_weights.copy_(weights)
        self.prior_ready.fill_(True)
        return {"bins_seen": float((counts > 0).sum()), "bins": float(len(self.bins)),
                "weight_min": float(weights.min()), "weight_max": float(weights.max())}

    # -- every step --------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        images = to_float(batch.unlabeled)  # [N, 3, S, S] in [0, 1]
        if self.config.crop_scale_min < 1:
            images = random_resized_crop(images, self.data.image_size,
                                         (self.config.crop_scale_min, 1.0), generator=generator)
        if self.config.flip:
            images = horizontal_flip(images, 0.5, generator=generator)
        lab = rgb_to_lab(images)  # [N, 3, S, S]
        targets = lab[:, 1:]
        if self.config.output_stride > 1:
            targets = F.avg_pool2d(targets, self.config.output_stride)  # [N, 2, S/s, S/s]
        return lightness_input(lab[:, :1], images.shape[1]), targets.contiguous()

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        lightness, targets = inputs
        features = self.backbone(lightness)  # [N, D]
        logits = self.decoder(features)  # [N, Q, S/s, S/s]
        loss = colorization_loss(logits, targets, self.bins, self.bin_weights,
                                 self.config.neighbours, self.config.sigma)
        return {"loss": loss, "embedding_spread": embedding_spread(features)}

    # -- declarations ------------------------------------------------------------------------

    def representations(self) -> dict[str, nn.Module]:
        return {"backbone": LightnessBackbone(self.backbone, self.data.mean, self.data.std)}
