"""sRGB <-> CIE 1976 L*a*b* on batched float tensors (D65 white, sRGB companding).

The colour space of colorization (Zhang, Isola, Efros, ECCV 2016): the lightness ``L`` is
the network's input and the chroma ``(a, b)`` its target. Images are float ``[..., 3, H, W]``
(the channels third from the end, so one image or a batch) with sRGB values in [0, 1]; Lab
has ``L`` in [0, 100] and ``a, b`` roughly in [-110, 110]. The formulas (IEC 61966-2-1 for
sRGB, CIE 15 for Lab):

- companding: ``lin = c / 12.92`` for ``c <= 0.04045``, else ``((c + 0.055) / 1.055) ** 2.4``;
- ``(X, Y, Z) = M lin`` with sRGB's primaries and the D65 white point (``M`` below), whose
  rows sum to the white ``(Xn, Yn, Zn) = (0.95047, 1, 1.08883)`` (to 1e-7: the sums are
  used, so greys have no chroma);
- ``f(t) = t ** (1/3)`` for ``t > (6/29)**3``, else ``t / (3 (6/29)**2) + 4/29``;
- ``L = 116 f(Y/Yn) - 16``, ``a = 500 (f(X/Xn) - f(Y/Yn))``, ``b = 200 (f(Y/Yn) - f(Z/Zn))``.

:func:`lab_to_rgb` inverts each step (``M``'s inverse computed in float64 from ``M`` itself,
so a round trip is exact up to rounding) and clamps to [0, 1] unless told not to: a Lab
triple outside the sRGB gamut has no exact RGB. Differentiable everywhere (the powers see
clamped arguments), so a network's predicted colours can be converted inside a loss.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

# linear sRGB -> XYZ, D65 (IEC 61966-2-1; Lindbloom's table to 7 digits)
RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# Xn, Yn, Zn: D65 is (0.95047, 1, 1.08883); the white point used is the rows of RGB_TO_XYZ
# summed (Yn = 1.0000001 from the 7-digit table), so that every grey has a = b = 0 exactly.
D65_WHITE = tuple(sum(row) for row in RGB_TO_XYZ)
_DELTA = 6.0 / 29.0


@lru_cache(maxsize=16)
def _matrices(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``M`` and ``M^-1`` (inverted in float64), and the white point, on device and dtype."""
    forward = torch.tensor(RGB_TO_XYZ, dtype=torch.float64)
    inverse = torch.linalg.inv(forward)
    white = torch.tensor(D65_WHITE, dtype=torch.float64)
    return (forward.to(device, dtype), inverse.to(device, dtype), white.to(device, dtype))


def _check(images: Tensor, what: str) -> None:
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"{what} wants [..., 3, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{what} wants float values, got {images.dtype}")


def _mix(matrix: Tensor, images: Tensor) -> Tensor:
    """``matrix @ pixel`` for every pixel of ``[..., 3, H, W]`` (``matrix`` ``[K, 3]``) ->
    ``[..., K, H, W]``."""
    mixed = torch.matmul(matrix, images.flatten(-2))  # [..., K, H * W]
    return mixed.view(*images.shape[:-3], len(matrix), *images.shape[-2:])


def srgb_to_linear(values: Tensor) -> Tensor:
    """Undo sRGB companding: values in [0, 1] -> linear light in [0, 1]."""
    curved = values.clamp_min(0.04045).add_(0.055).div_(1.055).pow(2.4)
    return torch.where(values <= 0.04045, values / 12.92, curved)


def linear_to_srgb(values: Tensor) -> Tensor:
    """sRGB companding: linear light in [0, 1] -> values in [0, 1]."""
    curved = values.clamp_min(0.0031308).pow(1 / 2.4).mul_(1.055).sub_(0.055)
    return torch.where(values <= 0.0031308, 12.92 * values, curved)


def _f(t: Tensor) -> Tensor:
    cube_root = t.clamp_min(_DELTA**3).pow(1 / 3)
    return torch.where(t > _DELTA**3, cube_root, t.mul(1 / (3 * _DELTA**2)).add_(4 / 29))


def _f_inverse(t: Tensor) -> Tensor:
    return torch.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4 / 29))


def rgb_to_lab(images: Tensor) -> Tensor:
    """sRGB ``[..., 3, H, W]`` in [0, 1] -> Lab ``[..., 3, H, W]``: L in [0, 100], then a, b.

    Example: white ``(1, 1, 1)`` -> ``(100, 0, 0)``; pure red ``(1, 0, 0)`` ->
    ``(53.24, 80.09, 67.20)``.
    """
    _check(images, "rgb_to_lab")
    return linear_rgb_to_lab(srgb_to_linear(images))


def linear_rgb_to_lab(linear: Tensor) -> Tensor:
    """:func:`rgb_to_lab` from linear light ``[..., 3, H, W]`` (companding already undone,
    e.g. by :func:`uint8_to_linear`)."""
    forward, _, white = _matrices(linear.device, linear.dtype)
    # rows divided by the white point: X/Xn, Y/Yn, Z/Zn in one product
    fx, fy, fz = _f(_mix(forward / white.view(3, 1), linear)).unbind(dim=-3)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def uint8_to_linear(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """8-bit sRGB ``[..., 3, H, W]`` -> linear light in [0, 1], by a table of the 256 levels
    (exact, and much faster than the power function)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"uint8_to_linear wants uint8 values, got {images.dtype}")
    table = srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255).to(images.device, dtype)
    return table[images.long()]


def lab_to_rgb(lab: Tensor, *, clamp: bool = True) -> Tensor:
    """Lab ``[..., 3, H, W]`` -> sRGB ``[..., 3, H, W]``, clamped to [0, 1] unless
    ``clamp=False`` (then colours outside the sRGB gamut come out below 0 or above 1)."""
    _check(lab, "lab_to_rgb")
    _, inverse, white = _matrices(lab.device, lab.dtype)
    lightness, a, b = lab.unbind(dim=-3)
    fy = (lightness + 16) / 116
    xyz = _f_inverse(torch.stack((fy + a / 500, fy, fy - b / 200), dim=-3))
    linear = _mix(inverse, xyz * white.view(3, 1, 1))
    if clamp:
        linear = linear.clamp(0.0, 1.0)
        return linear_to_srgb(linear).clamp_(0.0, 1.0)
    return linear_to_srgb(linear)


def rgb_to_lightness(images: Tensor) -> Tensor:
    """The L channel alone of sRGB ``[..., 3, H, W]`` in [0, 1]: ``[..., 1, H, W]`` in
    [0, 100] (only ``Y`` is needed, so a third of :func:`rgb_to_lab`'s work)."""
    _check(images, "rgb_to_lightness")
    forward, _, _ = _matrices(images.device, images.dtype)
    luminance = _mix(forward[1:2], srgb_to_linear(images))  # [..., 1, H, W]
    return _f(luminance).mul_(116).sub_(16)


@lru_cache(maxsize=4)
def _gamut_ab_bins(grid_size: float) -> Tensor:
    levels = torch.cat((torch.arange(0, 256, 4), torch.tensor([255]))).float() / 255
    red, green, blue = torch.meshgrid(levels, levels, levels, indexing="ij")
    colours = torch.stack((red, green, blue)).reshape(3, -1, 1)  # [3, 65**3, 1]
    cells = torch.round(rgb_to_lab(colours)[1:].reshape(2, -1) / grid_size).long()  # [2, 65**3]
    span = 2**20  # cell indices are far smaller: one integer key per cell, sorted by a then b
    keys = torch.unique((cells[0] + span // 2) * span + cells[1] + span // 2)
    a, b = keys // span - span // 2, keys % span - span // 2
    return torch.stack((a, b), dim=1).double().mul(grid_size).float()


def gamut_ab_bins(grid_size: float = 10.0) -> Tensor:
    """The centres ``[Q, 2]`` (a, b) of the ab bins that sRGB colours fall in: a grid of
    side ``grid_size`` centred on its multiples, keeping the cells that hold the ab of some
    8-bit colour (Zhang et al. 2016 quantise ab with grid size 10 and keep the in-gamut
    bins). Computed on every 4th 8-bit level of each channel and 255 (65³ colours); for
    ``grid_size`` 10 this gives the same Q = 261 bins as all 16.7M colours (checked once,
    7 s), sorted by a then b."""
    if grid_size <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    return _gamut_ab_bins(float(grid_size)).clone()
