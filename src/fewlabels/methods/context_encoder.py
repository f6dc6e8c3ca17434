"""Context encoder: inpaint a masked region of each image from its context.

Pathak, Krähenbühl, Donahue, Darrell, Efros, "Context Encoders: Feature Learning by
Inpainting", CVPR 2016. A region of each image is masked: its pixels are set to the
dataset's mean (0 after normalisation). The backbone encodes the masked image into its
pooled features, a :class:`~fewlabels.models.decoder.PixelDecoder` (the paper's
channel-wise fully-connected bottleneck followed by up-convolutions; here the bottleneck is
the pooled feature vector) predicts the whole image, and the L2 loss is taken on the masked
region (:func:`~fewlabels.losses.reconstruction.masked_reconstruction_loss`).

Regions (``--mask``): ``center``, a square of half the image side in the middle (the
paper's central region); ``random-block``, ``blocks`` squares of a quarter of the side at
random places, possibly overlapping, covering up to a quarter of the image (the paper's
random blocks); ``random-region`` (default), blobs covering exactly ``mask_fraction`` of
each image: bicubically upsampled uniform noise on a ``region_cells`` grid, its lowest
pixels masked (the paper's random regions are PASCAL segmentation shapes; its released code
thresholds smoothed noise at 25 % as here). The paper found random regions give the best
features, as the central square lets the features latch on to the square's border.

The context around the hole. The paper's code predicts a region a few pixels larger than
the hole and weighs the loss on that visible border 10 times (``overlapPred`` 4 px of a 64
px region). Here the band is ``overlap`` = 1 pixel around the hole and its weight
``overlap_weight`` = 1 (:func:`~fewlabels.losses.reconstruction.overlap_weights`): on 28 px
images a 1 pixel band around random blobs has about as many pixels as the blobs, so a weight
of 10 would make reconstructing visible pixels most of the loss; with 1 the hole stays the
main task. ``--overlap 0`` gives the paper's eq. 1 alone.

The adversarial term (``--adversarial-weight``, 0 by default; the paper: 0.001, with 0.999
on the reconstruction). A small discriminator (three strided convolutions with leaky ReLU,
no batch norm, global average pool, one logit) tells real images from composites of the
real context and the predicted region. The engine has one optimiser, so both players' terms
are summed into one loss whose gradients each reach only their own player: the
discriminator's loss sees the composites detached (no gradient to the encoder-decoder), and
the encoder-decoder's non-saturating term runs the discriminator through
``torch.func.functional_call`` with detached parameters (gradient to the encoder-decoder
only). The discriminator is built only when the weight is positive.

Differences from the paper (AlexNet encoder on 227 px ImageNet images, or a DCGAN-style
encoder on 128 px Paris StreetView; Adam at 2e-4 to 2e-3 with beta1 0.5) for 28-32 px
images and runs of minutes on a CPU: any backbone of the zoo with the pooled-feature
bottleneck and a narrow decoder (``decoder_width`` 16: 64, 32 and 16 channels at 7, 14
and 28 px, about as costly as the ConvNet); the 1 pixel, weight 1 border above; random
horizontal flips as the only augmentation (the paper takes random crops of larger images);
AdamW at 2e-3 per 256 images with the paper's beta1 of 0.5, a warm-up epoch and a cosine
decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import horizontal_flip
from fewlabels.losses.reconstruction import (
    discriminator_loss,
    generator_adversarial_loss,
    masked_reconstruction_loss,
    overlap_weights,
)
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

MaskKind = Literal["center", "random-block", "random-region"]


@dataclass
class ContextEncoderConfig:
    mask: MaskKind = option(
        "random-region", "the masked region: center (a square of half the side), "
        "random-block (several squares of a quarter of the side) or random-region (smooth "
        "random blobs; the paper's best for features)")
    mask_fraction: float = option(
        0.25, "fraction of each image that random-region masks (the paper: about 1/4)")
    region_cells: int = option(
        6, "random-region: cells across the noise grid whose upsampling gives the blobs "
           "(more cells: smaller blobs)")
    blocks: int = option(4, "random-block: squares per image, each a quarter of the side")
    overlap: int = option(
        1, "pixels of visible context around the hole that the loss also counts (0: the "
           "hole only, the paper's eq. 1)")
    overlap_weight: float = option(
        1.0, "weight of the context band in the loss, against 1 for the hole (the paper's "
             "code: 10 on a 4 px band of a 64 px region)")
    adversarial_weight: float = option(
        0.0, "lambda_adv: weight of the adversarial term, the reconstruction getting "
             "1 - lambda_adv (the paper: 0.001); 0: no discriminator")
    decoder_width: int = option(
        16, "channels of the decoder's last up-convolution stage, earlier ones doubling (16: "
            "about the ConvNet's cost on 28 px images; 32: about 2.5 times)")
    discriminator_width: int = option(
        16, "channels of the discriminator's first layer, doubling in the next two")
    flip: bool = option(True, "random horizontal flips of the images")


def _uniform(shape: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def center_mask(count: int, image_size: int, region_size: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool ``[count, 1, S, S]``: a ``region_size`` square in the middle of every image."""
    mask = torch.zeros(count, 1, image_size, image_size, dtype=torch.bool, device=device)
    start = (image_size - region_size) // 2
    mask[..., start:start + region_size, start:start + region_size] = True
    return mask


def random_block_mask(count: int, image_size: int, block_size: int, blocks: int,
                      generator: torch.Generator, device: torch.device | str = "cpu"
                      ) -> torch.Tensor:
    """Bool ``[count, 1, S, S]``: the union of ``blocks`` squares of side ``block_size`` per
    image, each at a uniformly drawn position inside the image (they may overlap)."""
    device = torch.device(device)
    positions = (_uniform((count, blocks, 2), generator, device)
                 * (image_size - block_size + 1)).floor_().long()  # [N, B, 2]: top, left
    pixels = torch.arange(image_size, device=device)  # [S]
    start = positions[..., None]  # [N, B, 2, 1]
    inside = (pixels >= start) & (pixels < start + block_size)  # [N, B, 2, S]
    squares = inside[:, :, 0, :, None] & inside[:, :, 1, None, :]  # [N, B, S, S]
    return squares.any(dim=1, keepdim=True)


def random_region_mask(count: int, image_size: int, fraction: float, cells: int,
                       generator: torch.Generator, device: torch.device | str = "cpu"
                       ) -> torch.Tensor:
    """Bool ``[count, 1, S, S]``: smooth random blobs covering exactly
    ``round(fraction S^2)`` pixels of each image, the lowest values of uniform noise on a
    ``cells`` x ``cells`` grid upsampled bicubically to the image."""
    device = torch.device(device)
    noise = _uniform((count, 1, cells, cells), generator, device)
    smooth = F.interpolate(noise, size=(image_size, image_size), mode="bicubic",
                           align_corners=False).flatten(1)  # [N, S*S]
    masked = round(fraction * image_size * image_size)
    lowest = smooth.topk(masked, dim=1, largest=False).indices  # [N, masked]
    mask = torch.zeros_like(smooth, dtype=torch.bool).scatter_(1, lowest, True)
    return mask.view(count, 1, image_size, image_size)


class Discriminator(nn.Module):
    """Real or inpainted: three 4x4 stride-2 convolutions with leaky ReLU (0.2), as DCGAN's
    discriminator without its batch norm, a global average pool and one logit per image."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = channels
        for stage in range(3):
            layers += [nn.Conv2d(in_channels, width * 2**stage, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            in_channels = width * 2**stage
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(in_channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(images).mean(dim=(2, 3))).squeeze(1)  # [N]


@METHODS.register("context-encoder", "context encoder: inpaint a masked region from its "
                                     "context, L2 (+ adversarial) loss (Pathak et al. 2016)")
class ContextEncoder(Method):
    """Backbone (encoder) + pixel decoder reconstructing masked regions; an optional
    discriminator for the adversarial term."""

    name = "context-encoder"
    Config = ContextEncoderConfig
    paper = "Pathak, Krähenbühl, Donahue, Darrell, Efros, CVPR 2016"
    collapse_hint = "lower --lr"
    recipe = TrainingRecipe(
        optimizer="adamw", learning_rate=2e-3, weight_decay=1e-5, batch_size=512,
        warmup_epochs=1.0, epochs=100, adamw_betas=(0.5, 0.999),
    )

    def __init__(self, backbone: nn.Module, config: ContextEncoderConfig,
                 data: DataInfo) -> None:
        size = data.image_size
        check_options([
            (config.mask in ("center", "random-block", "random-region"),
             f"unknown --mask {config.mask!r}; choose center, random-block or random-region"),
            (0 < config.mask_fraction < 1,
             f"--mask-fraction must be in (0, 1), got {config.mask_fraction}"),
            (config.region_cells >= 2, "--region-cells must be at least 2"),
            (config.blocks >= 1, f"--blocks must be at least 1, got {config.blocks}"),
            (config.overlap >= 0, f"--overlap must be at least 0, got {config.overlap}"),
            (config.overlap_weight >= 0, "--overlap-weight must be at least 0"),
            (0 <= config.adversarial_weight < 1,
             f"--adversarial-weight must be in [0, 1), got {config.adversarial_weight}"),
            (config.decoder_width >= 1, "--decoder-width must be at least 1"),
            (config.discriminator_width >= 1, "--discriminator-width must be at least 1"),
            (size >= 8, f"the context encoder needs images of at least 8 px, got {size}"),
        ])
        super().__init__(backbone, config, data)
        self.decoder = PixelDecoder(backbone.feature_dim, data.channels, size,
                                    width=config.decoder_width)
        self.discriminator = (Discriminator(data.channels, config.discriminator_width)
                              if config.adversarial_weight > 0 else None)

    # -- masks -------------------------------------------------------------------------------

    def draw_mask(self, count: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
        """Bool ``[count, 1, S, S]``, True where the region is masked."""
        config, size = self.config, self.data.image_size
        if config.mask == "center":
            return center_mask(count, size, size // 2, device)
        if config.mask == "random-block":
            return random_block_mask(count, size, size // 4, config.blocks, generator, device)
        return random_region_mask(count, size, config.mask_fraction, config.region_cells,
                                  generator, device)

    # -- every step --------------------------------------------------------------------------

    def make_views(self, batch: Batch, generator: torch.Generator) -> tuple:
        images = to_float(batch.unlabeled)
        if self.config.flip:
            images = horizontal_flip(images, 0.5, generator=generator)
        images = normalize(images, self.data.mean, self.data.std, inplace=True)
        mask = self.draw_mask(len(images), generator, images.device)  # [N, 1, S, S]
        return images, images.masked_fill(mask, 0.0), mask  # the hole at the mean

    def training_loss(self, inputs: tuple, step: StepInfo) -> dict[str, torch.Tensor]:
        images, masked, mask = inputs
        features = self.backbone(masked)  # [N, D]
        prediction = self.decoder(features)  # [N, C, S, S]
        weights = overlap_weights(mask, self.config.overlap, self.config.overlap_weight)
        reconstruction = masked_reconstruction_loss(prediction, images, weights)
        numbers = {"reconstruction_loss": reconstruction.detach(),
                   "embedding_spread": embedding_spread(features)}
        if self.discriminator is None:
            return {"loss": reconstruction, **numbers}
        adversarial, critic, real_accuracy = self.adversarial_terms(images, prediction, mask)
        weight = self.config.adversarial_weight
        loss = (1 - weight) * reconstruction + weight * adversarial + critic
        return {"loss": loss, **numbers, "adversarial_loss": adversarial.detach(),
                "discriminator_loss": critic.detach(), "discriminator_accuracy": real_accuracy}

    def adversarial_terms(self, images: torch.Tensor, prediction: torch.Tensor,
                          mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder-decoder's adversarial loss (gradient to the encoder-decoder only), the
        discriminator's loss (gradient to the discriminator only) and the discriminator's
        accuracy on this batch (real and composite images)."""
        discriminator = self.discriminator
        composite = torch.where(mask, prediction, images)  # predicted hole, real context
        real_logits = discriminator(images)  # [N]
        fake_logits = discriminator(composite.detach())  # [N]
        critic = discriminator_loss(real_logits, fake_logits)
        frozen = {name: tensor.detach() for name, tensor in discriminator.named_parameters()}
        adversarial = generator_adversarial_loss(
            torch.func.functional_call(discriminator, frozen, (composite,)))
        with torch.no_grad():
            accuracy = torch.cat([real_logits > 0, fake_logits <= 0]).float().mean()
        return adversarial, critic, accuracy

    # -- declarations ------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
        """Mask normalised ``images`` with this run's regions and inpaint them: the masked
        input, the decoder's prediction of the whole image and the mask."""
        mask = self.draw_mask(len(images), generator, images.device)
        masked = images.masked_fill(mask, 0.0)
        prediction = self.decoder(self.backbone(masked))
        return {"masked": masked, "reconstruction": prediction, "mask": mask}
