"""A pixel decoder: pooled backbone features ``[N, D]`` back to an image-shaped map.

The pretext tasks that reconstruct or predict something per pixel (context-encoder
inpainting, the denoising autoencoder, colorization) need a decoder after the encoder. Here
the encoder is any backbone of the zoo, and the backbone contract (``Method.representations``,
``docs/architecture.md``) is pooled features ``[N, D]``: a ConvNet, ResNet or ViT all end in
a vector, and that vector is what evaluation (kNN, linear probe, clusters) uses. Decoding
from the pooled vector keeps the decoder independent of the backbone's internal layout and
forces everything the reconstruction needs through the representation that is evaluated;
a decoder reading the encoder's spatial maps could bypass it (skip connections would make
inpainting or denoising easy without good features). The context encoder of Pathak et al.
(CVPR 2016) has such a bottleneck too: its channel-wise fully-connected layer mixes the whole
encoder map into every position of the decoder's first map, so each output pixel depends on
the whole context.

Layout (DCGAN-like up-convolutions, as the context encoder's decoder; Radford et al., ICLR
2016): a linear layer with batch norm and ReLU to a small map ``[N, C0, s0, s0]`` (7×7 for 28
px, 4×4 for 32 px, 6×6 for 96 px: the image side halved while it stays even and at least 4),
then ``k`` stages of a 4×4 transposed convolution with stride 2, batch norm and ReLU, each
doubling the side and halving the channels (from ``width * 2**k`` capped at ``max_channels``
down to ``width``), and a last 3×3 convolution to ``out_channels`` with a bias and no
activation, so callers choose what the output means (normalised pixels, per-pixel logits of
colour bins, ...). When no such ``s0 * 2**k`` equals the image side (an odd side larger than
8) the decoder starts from 4×4, doubles until it reaches or passes the side and resizes
bilinearly at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def decoder_layout(image_size: int) -> tuple[int, int]:
    """The side of the decoder's first map and its number of doubling stages: ``(s0, k)``
    with ``s0 * 2**k == image_size`` when the side halves down to 4..8, else ``s0 = 4`` and
    ``k`` the fewest doublings that reach ``image_size`` (the output is then resized)."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    side, stages = image_size, 0
    while side % 2 == 0 and side // 2 >= 4:
        side //= 2
        stages += 1
    if side <= 8:
        return side, stages
    side, stages = 4, 0
    while side * 2**stages < image_size:
        stages += 1
    return side, stages


class PixelDecoder(nn.Module):
    """Pooled features ``[N, feature_dim]`` -> ``[N, out_channels, image_size, image_size]``.

    Args:
        feature_dim: size of the backbone's pooled features.
        out_channels: channels of the output (image channels for pixels, bins for logits).
        image_size: side of the output.
        width: channels of the last up-convolution stage; earlier stages double it.
        max_channels: cap on the channels of any stage (the first map's, for large sides).
    """

    def __init__(self, feature_dim: int, out_channels: int, image_size: int,
                 width: int = 32, max_channels: int = 256) -> None:
        super().__init__()
        side, stages = decoder_layout(image_size)
        channels = [min(max_channels, width * 2**(stages - i)) for i in range(stages + 1)]
        self.image_size = image_size
        self.start_side = side
        self.start_channels = channels[0]
        self.project = nn.Sequential(
            nn.Linear(feature_dim, channels[0] * side * side, bias=False),
            nn.BatchNorm1d(channels[0] * side * side),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for in_channels, out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.ConvTranspose2d(in_channels, out, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*layers)
        # PyTorch's default initialisation: the output starts at a small scale (about a third
        # of its input's second moment), not the ReLU gain a Kaiming init would give it.
        self.output = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(features)  # [N, C0 * s0 * s0]
        x = x.view(len(x), self.start_channels, self.start_side, self.start_side)
        x = self.output(self.upsample(x))  # [N, out_channels, s0 * 2**k, s0 * 2**k]
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return x  # [N, out_channels, image_size, image_size]
