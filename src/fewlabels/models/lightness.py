"""A backbone fed the lightness of colour images (colorization, Zhang et al. 2016).

The backbone sees ``(L - 50) / 50``, the CIE lightness ``L`` in [0, 100] centred and scaled
to [-1, 1], repeated in each of its input channels; evaluation, ``fewlabels embed`` and
exports feed it normalised RGB images through :class:`LightnessBackbone`, which does the
RGB -> L step. Here rather than in the method so that :mod:`fewlabels.models.export` can
rebuild the wrapper around a loaded backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fewlabels.augment.lab import rgb_to_lightness


def lightness_input(lightness: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """The backbone's input from the lightness ``[N, 1, H, W]`` in [0, 100]:
    ``(L - 50) / 50`` in [-1, 1], repeated in ``channels`` channels ``[N, channels, H, W]``."""
    centred = (lightness - 50.0) / 50.0
    return centred.expand(-1, channels, -1, -1).contiguous(memory_format=torch.channels_last)


class LightnessBackbone(nn.Module):
    """The colorization backbone as evaluation uses it: normalised RGB images ``[N, 3, H,
    W]`` (``(x - mean) / std``) -> the lightness input -> the backbone's features ``[N, D]``.
    Holds no parameters or saved buffers of its own: its state is the backbone's, under
    ``backbone.``. ``input_conversion`` names it for exports."""

    input_conversion = "lightness"

    def __init__(self, backbone: nn.Module, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = getattr(backbone, "feature_dim", 0)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images.float() * self.std + self.mean).clamp_(0.0, 1.0)
        return self.backbone(lightness_input(rgb_to_lightness(rgb), images.shape[1]))
