"""Denoising autoencoder: reconstruct the clean image from a corrupted one.

Vincent, Larochelle, Bengio, Manzagol, "Extracting and Composing Robust Features with
Denoising Autoencoders", ICML 2008; Vincent, Larochelle, Lajoie, Bengio, Manzagol, "Stacked
Denoising Autoencoders", JMLR 2010. Each image is corrupted (``--noise``): ``masking``
forces a fixed number of its pixels, ``round(masking_fraction H W)`` chosen at random per
image, to 0 (black; all channels of a pixel together), as the 2008 paper's masking noise
("a fixed number of components ... forced to 0"); ``gaussian`` adds isotropic noise of
standard deviation ``gaussian_std`` to the [0, 1] pixels (the 2010 paper's additive
Gaussian noise); ``both`` masks, then adds noise. The backbone encodes the normalised
corrupted image into its pooled features and a
:class:`~fewlabels.models.decoder.PixelDecoder` reconstructs the clean image
(:func:`~fewlabels.losses.reconstruction.denoising_reconstruction_loss`): by default the
paper's cross-entropy, the decoder's outputs being logits of [0, 1] pixels; ``--loss mse``
takes the squared error on normalised pixels instead (the 2010 paper's choice for
real-valued inputs). Every pixel counts in the loss, corrupted or not (the 2010 paper's
plain criterion; its variant that weighs the corrupted ones more is not here).

Differences from the papers (stacks of fully-connected layers trained layer by layer on
28 px MNIST variants or 12 px natural image patches, SGD without momentum): one deep
encoder (any backbone of the zoo) trained end to end, with the narrow
:class:`~fewlabels.models.decoder.PixelDecoder` (``decoder_width`` 16, about the ConvNet's
cost on 28 px images); 25 % masking noise (among the papers' 10-40 %); random horizontal
flips of the clean image; AdamW at 1e-3 per 256 images with a warm-up epoch and a cosine
decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import horizontal_flip
from fewlabels.losses.reconstruction import denoising_reconstruction_loss
from fewlabels.methods.base import (
    Batch,
    DataInfo,
    Method,
    StepInfo,
    TrainingRecipe,
    check_options,
    embedding_spread,
)
from fewlabels.methods.registry import METHODS
from fewlabels.models.decoder import PixelDecoder
from fewlabels.options import option


@dataclass
class DenoisingAutoencoderConfig:
    noise: Literal["masking", "gaussian", "both"] = option(
        "masking", "corruption: masking (a fixed fraction of each image's pixels set to 0), "
                   "gaussian (additive noise on [0, 1] pixels) or both")
    masking_fraction: float = option(
        0.25, "fraction of each image's pixels that masking noise sets to 0 (the papers: "
              "0.1-0.4)")
    gaussian_std: float = option(
        0.3, "standard deviation of the additive Gaussian noise, on [0, 1] pixels")
    loss: Literal["cross-entropy", "mse"] = option(
        "cross-entropy", "reconstruction error: cross-entropy against [0, 1] pixels (the "
                         "2008 paper) or mse on normalised pixels")
    decoder_width: int = option(
        16, "channels of the decoder's last up-convolution stage, earlier ones doubling")
    flip: bool = option(True, "random horizontal flips of the images")


def masking_noise_mask(count: int, image_size: int, fraction: float,
                       generator: torch.Generator, device: torch.device | str = "cpu"
                       ) -> torch.Tensor:
    """Bool ``[count, 1, S, S]``: exactly ``round(fraction S^2)`` pixels of each image, a
    uniformly random subset (the smallest of per-pixel uniform noise, no loop over images)."""
    noise = torch.rand(count, image_size * image_size, generator=generator,
                       device=generator.device).to(device)  # [N, S*S]
    masked = round(fraction * image_size * image_size)
    chosen = noise.topk(masked, dim=1, largest=False).indices  # [N, masked]
    mask = torch.zeros_like(noise, dtype=torch.bool).scatter_(1, chosen, True)
    return mask.view(count, 1, image_size, image_size)


def corrupt(images: torch.Tensor, noise: str, masking_fraction: float, gaussian_std: float,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt [0, 1] ``images [N, C, S, S]``: returns the corrupted images and the bool mask
    ``[N, 1, S, S]`` of the pixels masking noise set to 0 (all False for Gaussian noise
    alone, which masks nothing and changes every pixel)."""
    count, _, size, _ = images.shape
    corrupted = images
    if noise in ("masking", "both"):
        mask = masking_noise_mask(count, size, masking_fraction, generator, images.device)
        corrupted = corrupted.masked_fill(mask, 0.0)
    else:
        mask = torch.zeros(count, 1, size, size, dtype=torch.bool, device=images.device)
    if noise in ("gaussian", "both"):
        gaussian = torch.randn(images.shape, generator=generator, device=generator.device)
        corrupted = corrupted + gaussian_std * gaussian.to(images.device, images.dtype)
    return corrupted, mask


@METHODS.register("denoising-autoencoder", "denoising autoencoder: reconstruct the clean "
                                           "image from a corrupted one (Vincent et al. 2008)")
class DenoisingAutoencoder(Method):
    """Backbone (encoder) + pixel decoder reconstructing clean images from corrupted ones."""

    name = "denoising-autoencoder"
    Config = DenoisingAutoencoderConfig
    paper = "Vincent, Larochelle, Bengio, Manzagol, ICML 2008"
    collapse_hint = "lower --lr"
    recipe = TrainingRecipe(
        optimizer="adamw", learning_rate=1e-3, weight_decay=1e-5, batch_size=512,
        warmup_epochs=1.0, epochs=100,
    )

    def __init__(self, backbone: nn.Module, config: DenoisingAutoencoderConfig,
                 data: DataInfo) -> None:
        check_options([
            (config.noise in ("masking", "gaussian", "both"),
             f"unknown --noise {config.noise!r}; choose masking, gaussian or both"),
            (0 < config.masking_fraction < 1,
             f"--masking-fraction must be in (0, 1), got {config.masking_fraction}"),
            (config.gaussian_std > 0, f"--gaussian-std must be positive, got "
                                      f"{config.gaussian_std}"),
            (config.loss in ("cross-entropy", "mse"),
             f"unknown --loss {config.loss!r}; choose cross-entropy or mse"),
            (config.decoder_width >= 1, "--decoder-width must be at least 1"),
        ])
        super().__init__(backbone, config, data)
        self.decoder = PixelDecoder(backbone.feature_dim, data.channels, data.image_size,
                                    width=config.decoder_width)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.data.mean, self.data.std)

    def _corrupt(self, clean: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        return corrupt(clean, config.noise, config.masking_fraction, config.gaussian_std,
                       generator)

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        clean = to_float(batch.unlabeled)  # [N, C, S, S] in [0, 1]
        if self.config.flip:
            clean = horizontal_flip(clean, 0.5, generator=generator)
        corrupted, _ = self._corrupt(clean, generator)
        target = clean if self.config.loss == "cross-entropy" else self._normalise(clean)
        return self._normalise(corrupted), target

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        corrupted, target = inputs
        features = self.backbone(corrupted)  # [N, D]
        prediction = self.decoder(features)  # [N, C, S, S]: logits or normalised pixels
        loss = denoising_reconstruction_loss(prediction, target, self.config.loss)
        return {"loss": loss, "embedding_spread": embedding_spread(features)}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
        """Corrupt normalised ``images`` with this run's noise and denoise them: the
        corrupted input (normalised), the reconstruction (normalised) and the mask of the
        pixels masking noise set to 0 (none for Gaussian noise alone: ``fewlabels
        reconstruct`` then shows the noisy input as it is)."""
        mean = torch.as_tensor(self.data.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.data.std, device=images.device).view(1, -1, 1, 1)
        corrupted, mask = self._corrupt(images * std + mean, generator)
        noisy = self._normalise(corrupted)
        prediction = self.decoder(self.backbone(noisy))
        if self.config.loss == "cross-entropy":
            prediction = self._normalise(torch.sigmoid(prediction))
        return {"masked": noisy, "reconstruction": prediction, "mask": mask}
