"""From stored uint8 images to the float batches the ops and the models take."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fewlabels.augment._random import check_batch


def to_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 ``[N, C, H, W]`` in 0..255 -> ``dtype`` in [0, 1] (a new tensor).

    A float batch is taken to be in [0, 1] already and only cast to ``dtype``.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    if images.is_floating_point():
        return images.to(dtype)
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")
    return images.to(dtype).div_(255.0)


def channel_tensor(values: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """Per-channel numbers as ``[1, C, 1, 1]`` on ``like``'s device and dtype."""
    tensor = torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)
    if tensor.shape[1] != like.shape[1]:
        raise ValueError(f"got {tensor.shape[1]} per-channel values for {like.shape[1]} channels")
    return tensor


def normalize(
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    *,
    inplace: bool = False,
) -> Tensor:
    """Standardise each channel: ``(x - mean[c]) / std[c]``, ``[N, C, H, W]`` -> same shape.

    ``inplace=True`` overwrites ``images`` (for a batch the caller has just allocated).
    """
    check_batch(images)
    mean_t, std_t = channel_tensor(mean, images), channel_tensor(std, images)
    if inplace:
        return images.sub_(mean_t).div_(std_t)
    return (images - mean_t).div_(std_t)
