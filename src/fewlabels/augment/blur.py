"""Gaussian blur with a different sigma per image, as one separable depthwise convolution.

The batch ``[N, C, H, W]`` is seen as one image of ``N*C`` channels and filtered by a grouped
convolution (``groups = N*C``): each channel gets its own image's 1-D kernel, first along
the rows, then along the columns, with reflect padding so that a constant image stays
constant. A sigma of 0 gives the unit impulse, which leaves an image unchanged exactly; the
random wrapper uses it for images its coin does not select. (Per-image banded matrices and
two batched matmuls compute the same filter; measured in CPU time they were no faster for
28-128 px images, so there is one code path.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fewlabels.augment._random import (
    check_batch,
    check_probability,
    draw_uniform,
    uniform_in,
)
from fewlabels.augment.photometric import probability_per_image


def gaussian_kernels(sigmas: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``[N, kernel_size]``, one per sigma (``[N]``).

    Each kernel sums to 1; a sigma of 0 (or below) gives the unit impulse.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    offsets = torch.arange(kernel_size, device=sigmas.device, dtype=torch.float32)
    offsets -= kernel_size // 2  # [K], centred
    # A tiny floor instead of sigma = 0 makes exp(-x^2 / 0+) exactly 0 off-centre and 1 at 0.
    two_variances = sigmas.to(torch.float32).square().mul_(2.0).clamp_(min=1e-12)  # [N]
    kernels = (-offsets.square()[None, :] / two_variances[:, None]).exp_()  # [N, K]
    return kernels / kernels.sum(dim=1, keepdim=True)


def blur_with_sigmas(images: Tensor, sigmas: Tensor, kernel_size: int) -> Tensor:
    """Blur each image ``[N, C, H, W]`` with its own Gaussian (``sigmas`` ``[N]``, 0 = none).

    Separable and reflect-padded: a depthwise grouped convolution over the ``N*C`` channels
    (rows, then columns).
    """
    check_batch(images)
    _, _, height, width = images.shape
    if kernel_size // 2 >= min(height, width):
        raise ValueError(f"kernel_size {kernel_size} is too large for {height}x{width} images")
    count, channels = images.shape[:2]
    pad = kernel_size // 2
    kernels = gaussian_kernels(sigmas.to(images.device), kernel_size).to(images.dtype)  # [N, K]
    weight = kernels.repeat_interleave(channels, dim=0)  # [N*C, K], channel-major per image
    x = images.reshape(1, count * channels, height, width)
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect")  # [1, N*C, H, W + 2 pad]
    x = F.conv2d(x, weight.view(-1, 1, 1, kernel_size), groups=count * channels)
    x = F.pad(x, (0, 0, pad, pad), mode="reflect")  # [1, N*C, H + 2 pad, W]
    x = F.conv2d(x, weight.view(-1, 1, kernel_size, 1), groups=count * channels)
    return x.view(count, channels, height, width)


def default_kernel_size(sigma_max: float, image_size: tuple[int, int]) -> int:
    """``2 ceil(3 sigma) + 1`` (covers +-3 sigma), shrunk to fit the image; at least 3."""
    size = max(3, 2 * math.ceil(3.0 * sigma_max) + 1)
    largest = 2 * (min(image_size) - 1) + 1 if min(image_size) > 1 else 1
    return min(size, largest)


def gaussian_blur(
    images: Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
    p: float | Tensor = 0.5,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Blur each image with probability p, sigma uniform in ``sigma`` (SimCLR: (0.1, 2.0)).

    SimCLR (Chen et al. 2020, Appendix A) blurs ImageNet views with p = 0.5 and a kernel of
    10 % of the image side; BYOL uses p = 1.0 on one view and 0.1 on the other, which a
    float tensor ``p`` of one probability per image (``[N]``) expresses for a batch of
    several views (see ``photometric.probability_per_image``); a tensor filled with a
    float's value draws and gives the same as that float.
    ``kernel_size=None`` covers +-3 sigma (see :func:`default_kernel_size`).
    """
    check_batch(images)
    if isinstance(p, Tensor):
        p = probability_per_image(p, images)
    else:
        check_probability(p)
    if not 0.0 <= sigma[0] <= sigma[1]:
        raise ValueError(f"sigma must satisfy 0 <= low <= high, got {sigma}")
    if not isinstance(p, Tensor) and p == 0.0:
        return images
    if kernel_size is None:
        kernel_size = default_kernel_size(sigma[1], tuple(images.shape[-2:]))
    u = draw_uniform((images.shape[0], 2), generator, images.device)  # [N, 2]: coin, sigma
    sigmas = uniform_in(u[:, 1], sigma[0], sigma[1])
    sigmas = torch.where(u[:, 0] < p, sigmas, torch.zeros_like(sigmas))  # [N]
    return blur_with_sigmas(images, sigmas, kernel_size)
