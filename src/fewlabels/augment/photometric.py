"""Photometric ops: colour jitter, grayscale and solarize, batched, one parameter per image.

Every op takes a float batch ``[N, C, H, W]`` in [0, 1] with C = 1 or 3 and returns a batch
in [0, 1]: a new tensor, or the input itself when the op cannot change anything (p = 0, or
grayscale of a 1-channel batch). The input is never modified. Each random op is a thin
wrapper that draws its parameters (one per image, see ``_random``) and calls a deterministic
core that takes them.
Images the coin ``p`` does not select get identity parameters (factor 1, angle 0), which
the cores apply exactly, so no ``torch.where`` over the batch is needed.

Gray means ITU-R BT.601 luma, ``0.299 R + 0.587 G + 0.114 B`` (what torchvision and PIL use).
The Gaussian blur lives in ``blur.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fewlabels.augment._random import (
    check_batch,
    check_probability,
    draw_mask,
    draw_uniform,
    expand_mask,
    select,
    uniform_in,
)

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


def luma(images: Tensor) -> Tensor:
    """Per-pixel gray ``[N, 1, H, W]`` (ITU-R 601 luma for RGB; the image itself for C = 1)."""
    if images.shape[1] == 1:
        return images
    red, green, blue = LUMA_WEIGHTS
    gray = images[:, 0:1] * red  # [N, 1, H, W]
    return gray.add_(images[:, 1:2], alpha=green).add_(images[:, 2:3], alpha=blue)


def probability_per_image(p: Tensor, images: Tensor) -> Tensor:
    """Check a tensor of per-image probabilities ``[N]`` and put it on the images' device.

    The values are checked (in [0, 1]) only for a CPU tensor, so that a tensor already on
    an accelerator costs no host synchronisation; a value outside acts like 0 or 1.
    """
    if p.shape != (images.shape[0],) or not p.is_floating_point():
        raise ValueError(f"expected float probabilities [{images.shape[0]}] (one per image), "
                         f"got {p.dtype} {tuple(p.shape)}")
    if p.device.type == "cpu" and bool(((p < 0) | (p > 1)).any()):
        raise ValueError("per-image probabilities must be in [0, 1]")
    return p.to(images.device)


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    """A ``[N]`` parameter as ``[N, 1, 1, 1]`` in the images' dtype and device."""
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


# In-place steps, used on tensors the op itself allocated. ---------------------------------


def _brightness_(x: Tensor, factors: Tensor) -> Tensor:
    return x.mul_(_per_image(factors, x)).clamp_(0.0, 1.0)


def _contrast_(x: Tensor, factors: Tensor) -> Tensor:
    channel_means = x.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
    mean_gray = luma(channel_means)  # [N, 1, 1, 1]: luma is linear, so luma of the means
    f = _per_image(factors, x)
    return x.mul_(f).add_(mean_gray * (1.0 - f)).clamp_(0.0, 1.0)


def _saturation_(x: Tensor, factors: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    f = _per_image(factors, x)
    gray = luma(x).mul_(1.0 - f)  # [N, 1, H, W]
    return x.mul_(f).add_(gray).clamp_(0.0, 1.0)


def hue_rotation_matrices(turns: Tensor) -> Tensor:
    """RGB rotation matrices ``[N, 3, 3]`` about the gray axis (1, 1, 1) by ``turns`` * 360°.

    Why this rather than RGB->HSV->RGB: it is one 3x3 matrix per image (one batched matmul),
    it keeps grays gray and the channel mean, and the angle it turns is the "circular" hue of
    HSL/HSV, which differs from HSV's hexagonal hue by at most 1.12 degrees (so HSV hue moves
    by the angle +- 2.3 degrees). A third of a turn maps red to green to blue exactly, as HSV
    does. The difference from HSV: HSV keeps each pixel's max and min, the rotation keeps its
    mean, so strongly saturated colours leave the RGB cube and are clamped, ending up darker
    or lighter than HSV's (pure red turned by 60 degrees gives (2/3, 2/3, 0), HSV (1, 1, 0)).
    For the +-0.1 turn of SimCLR's jitter this is a small change of the augmentation's
    distribution, not of its purpose. (A YIQ rotation would keep luma instead of the mean,
    but its angle strays up to ~19 degrees from HSV's hue.)
    """
    angle = turns.to(torch.float32) * (2.0 * math.pi)  # [N]
    cos, sin = angle.cos(), angle.sin()
    # Rodrigues: cos I + (1 - cos) k k^T + sin [k]_x with k = (1, 1, 1) / sqrt(3).
    third = (1.0 - cos) / 3.0
    skew = sin / math.sqrt(3.0)
    diagonal, minus, plus = cos + third, third - skew, third + skew
    rows = (diagonal, minus, plus, plus, diagonal, minus, minus, plus, diagonal)
    return torch.stack(rows, dim=1).view(-1, 3, 3)  # [N, 3, 3]


def _hue(x: Tensor, turns: Tensor) -> Tensor:
    """A new tensor: each RGB pixel times its image's hue matrix, clamped to [0, 1]."""
    if x.shape[1] == 1:
        return x
    count, channels, height, width = x.shape
    matrices = hue_rotation_matrices(turns).to(device=x.device, dtype=x.dtype)  # [N, 3, 3]
    # One batched matmul; on CPU it beat three broadcast multiply-adds and einsum.
    rotated = torch.bmm(matrices, x.reshape(count, channels, height * width))  # [N, 3, H*W]
    return rotated.view(count, channels, height, width).clamp_(0.0, 1.0)


# Deterministic cores. ----------------------------------------------------------------------


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Multiply each image by its factor (``[N]``), clamped to [0, 1]."""
    check_batch(images, colour=True)
    return _brightness_(images.clone(), factors)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each image with its mean gray: ``f x + (1 - f) mean``, clamped to [0, 1]."""
    check_batch(images, colour=True)
    return _contrast_(images.clone(), factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each pixel with its own gray: ``f x + (1 - f) gray``; no-op for C = 1."""
    check_batch(images, colour=True)
    return _saturation_(images.clone(), factors)


def rotate_hue(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate each image's hue by ``turns`` (``[N]``, fractions of a full turn); C = 1: no-op.

    See :func:`hue_rotation_matrices` for the rotation and why it is used.
    """
    check_batch(images, colour=True)
    return _hue(images, turns) if images.shape[1] == 3 else images.clone()


def jitter_color(
    images: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    *,
    inplace: bool = False,
) -> Tensor:
    """Brightness, contrast, saturation and hue adjustments in that fixed order (each ``[N]``).

    Each step clamps to [0, 1], as torchvision's ColorJitter does; unlike SimCLR's reference
    pipeline (which draws a random order per image) the order is fixed, which keeps the op
    a few passes over the batch. Factors of 1 and a hue of 0 leave an image unchanged exactly.
    ``inplace=True`` may overwrite ``images`` (use the returned tensor), saving a copy.
    """
    check_batch(images, colour=True)
    factors = _per_image(brightness, images)
    x = images.mul_(factors) if inplace else images.mul(factors)  # ours from here on
    x.clamp_(0.0, 1.0)
    x = _contrast_(x, contrast)
    x = _saturation_(x, saturation)
    return _hue(x, hue)


def grayscale_where(images: Tensor, mask: Tensor, *, inplace: bool = False) -> Tensor:
    """Replace the images selected by ``mask`` (bool ``[N]``) by their luma in every channel.

    ``inplace=True`` overwrites ``images``.
    """
    check_batch(images, colour=True)
    return select(expand_mask(mask.to(images.device)), luma(images), images, inplace=inplace)


def solarize_where(
    images: Tensor, mask: Tensor, threshold: float = 0.5, *, inplace: bool = False
) -> Tensor:
    """In the selected images, invert pixels at or above ``threshold``: ``x -> 1 - x``.

    Pixels below the threshold are kept. With ``threshold=0.5`` solarizing is idempotent
    (the result is ``min(x, 1 - x)``); with ``threshold=0`` it is inversion, its own inverse.
    ``inplace=True`` overwrites ``images``.
    """
    check_batch(images)
    # Per-image threshold: ``threshold`` where selected, +inf (nothing inverted) elsewhere.
    thresholds = torch.where(mask.to(images.device), threshold, math.inf).to(images.dtype)  # [N]
    inverted = images >= expand_mask(thresholds)  # [N, C, H, W]
    return select(inverted, 1.0 - images, images, inplace=inplace)


# Random wrappers. -------------------------------------------------------------------------


def color_jitter(
    images: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    *,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SimCLR's random colour jitter (Chen et al. 2020, Appendix A), applied with probability p.

    Per image: brightness, contrast and saturation factors uniform in
    ``[max(0, 1 - s), 1 + s]``, and a hue rotation uniform in ``[-hue, hue]`` turns
    (``hue <= 0.5``, torchvision's units). For C = 1 saturation and hue are no-ops (their
    numbers are still drawn, so the random stream does not depend on C). ``inplace=True``
    may overwrite ``images``; use the returned tensor.
    """
    check_batch(images, colour=True)
    check_probability(p)
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5] turns, got {hue}")
    if min(brightness, contrast, saturation) < 0:
        raise ValueError("brightness, contrast and saturation strengths must be >= 0")
    if p == 0.0:
        return images
    u = draw_uniform((images.shape[0], 5), generator, images.device)  # [N, 5]
    applied = u[:, 0] < p  # [N]

    def factors(column: int, strength: float) -> Tensor:
        drawn = uniform_in(u[:, column], max(0.0, 1.0 - strength), 1.0 + strength)
        return torch.where(applied, drawn, torch.ones_like(drawn))

    turns = torch.where(applied, uniform_in(u[:, 4], -hue, hue), torch.zeros_like(u[:, 4]))
    return jitter_color(images, factors(1, brightness), factors(2, contrast),
                        factors(3, saturation), turns, inplace=inplace)


def random_grayscale(
    images: Tensor,
    p: float = 0.2,
    *,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Turn each image to gray with probability p (SimCLR: p = 0.2); C = 1 is a no-op.

    ``inplace=True`` overwrites ``images``.
    """
    check_batch(images, colour=True)
    check_probability(p)
    if images.shape[1] == 1 or p == 0.0:
        return images
    mask = draw_mask(images.shape[0], p, generator, images.device)
    return grayscale_where(images, mask, inplace=inplace)


def solarize(
    images: Tensor,
    threshold: float = 0.5,
    p: float | Tensor = 0.2,
    *,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Solarize each image with probability p (BYOL, Grill et al. 2020: p = 0.2 on one view).

    ``p`` is one probability for all images, or a float tensor ``[N]`` of one per image
    (multi-crop views whose probability depends on the view; see
    :func:`probability_per_image`). Both draw the same numbers, so a tensor filled with
    ``p`` gives what the float ``p`` gives. ``inplace=True`` overwrites ``images``.
    """
    check_batch(images)
    if isinstance(p, Tensor):
        p = probability_per_image(p, images)
        mask = draw_uniform((images.shape[0],), generator, images.device) < p  # [N]
    else:
        check_probability(p)
        if p == 0.0:
            return images
        mask = draw_mask(images.shape[0], p, generator, images.device)
    return solarize_where(images, mask, threshold, inplace=inplace)
