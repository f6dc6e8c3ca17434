"""Where a ViT looks: the [CLS] token's attention in the last block, over the image.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO, ICCV 2021),
Fig. 1 and 3: the attention of the [CLS] query of the last block over the patches, one map
per head, separates objects from background without any label. Each picture here is one
image, then the mean of the heads, then every head, each map upsampled to the image (nearest,
so a patch stays a square) and laid over it. Drawn with matplotlib's Agg renderer (no display
needed) and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from fewlabels.report.figures import save_png


@torch.no_grad()
def cls_attention(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last block's attention of the [CLS] query over the patches, ``[N, heads, h, w]``.

    ``images`` is a preprocessed float batch ``[N, C, H, W]``; ``network`` has
    ``attention_maps`` and ``patch_size`` (:class:`~fewlabels.models.VisionTransformer`) and
    runs in eval mode. The softmax row of the [CLS] query spreads over the [CLS] token itself
    and the patches; its patch part is renormalised to sum to 1, so every map is a
    distribution over the image and heads compare on one scale.
    """
    was_training = network.training
    try:
        last = network.eval().attention_maps(images)[-1]  # [N, heads, 1 + L, 1 + L]
    finally:
        network.train(was_training)
    over_patches = last[:, :, 0, 1:].float()  # [N, heads, L]
    over_patches = over_patches / over_patches.sum(dim=-1, keepdim=True)
    patch = int(network.patch_size)
    height, width = images.shape[-2] // patch, images.shape[-1] // patch
    return over_patches.reshape(*over_patches.shape[:2], height, width)  # [N, heads, h, w]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps ``[..., h, w]`` -> ``[..., H, W]``, each patch a block of equal values."""
    leading = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=size, mode="nearest").reshape(*leading, *size)


def _displayable(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """uint8 ``[C, H, W]`` -> what ``imshow`` draws, and the colour map (gray for one
    channel; the first channel of images that are neither gray nor RGB)."""
    if image.shape[0] == 3:
        return image.permute(1, 2, 0).cpu().numpy(), None
    return image[0].cpu().numpy(), "gray"


def draw_attention(image: torch.Tensor, maps: torch.Tensor, path: str | os.PathLike[str],
                   *, title: str | None = None) -> Path:
    """One PNG: ``image`` (uint8 ``[C, H, W]``), then the mean of ``maps`` (``[heads, h, w]``,
    as :func:`cls_attention` gives) and each head, upsampled and laid over the image. Each
    map is coloured from 0 to its own maximum. Written atomically; returns the path."""
    size = (image.shape[-2], image.shape[-1])
    heads = maps.shape[0]
    panels = [("mean of heads", maps.mean(dim=0))] + [
        (f"head {head + 1}", maps[head]) for head in range(heads)]
    shown, colours = _displayable(image)
    figure = Figure(figsize=(1.7 * (1 + len(panels)), 2.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 1 + len(panels), squeeze=False)[0]
    axes[0].imshow(shown, cmap=colours, vmin=0, vmax=255, interpolation="nearest")
    axes[0].set_title("image", fontsize=8)
    for axis, (label, attention) in zip(axes[1:], panels, strict=True):
        overlay = upsample(attention, size).cpu().numpy()
        axis.imshow(shown, cmap=colours, vmin=0, vmax=255, interpolation="nearest")
        axis.imshow(overlay, cmap="inferno", alpha=0.6, vmin=0.0,
                    vmax=max(float(overlay.max()), 1e-12), interpolation="nearest")
        axis.set_title(label, fontsize=8)
    for axis in axes:
        axis.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return save_png(figure, path)
