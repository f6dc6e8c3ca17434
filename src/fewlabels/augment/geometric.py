"""Geometric ops: random resized crop, horizontal flip and translation, batched, one
parameter per image.

A crop box is four numbers per image, ``(left, top, width, height)`` as fractions of the
image's width and height, so a box lies inside the image exactly when
``0 <= left``, ``left + width <= 1`` (and the same for top/height). The crop of the whole
batch is one sampling grid and one ``F.grid_sample`` call (bilinear, ``align_corners=False``,
border padding); the output size is free, so multi-crop views of two resolutions come from
the same images. The crop samples at sub-pixel box positions and does not antialias: a box
much larger than the output (strong downscaling) aliases a little, as torchvision's
``antialias=False`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def sample_crop_boxes(
    count: int,
    image_size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw ``count`` crop boxes inside an image of ``image_size = (height, width)`` pixels.

    As in Inception / SimCLR's RandomResizedCrop (Szegedy et al. 2015; Chen et al. 2020):
    the box area is a fraction ``U(scale)`` of the image and its aspect ratio
    (width / height, in pixels) is log-uniform in ``ratio``. Instead of torchvision's retry
    loop, a box wider or taller than the image is clamped to the image's width or height
    (so such boxes cover a little less area than drawn), then the offset is uniform over all
    positions where the box fits. Returns float32 ``[count, 4]`` = (left, top, width, height)
    as fractions of the image.
    """
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {ratio}")
    height, width = image_size
    device = torch.device(device)
    u = draw_uniform((count, 4), generator, device)  # area, log-aspect, left, top
    area = uniform_in(u[:, 0], scale[0], scale[1])  # [N], fraction of the image
    aspect = uniform_in(u[:, 1], math.log(ratio[0]), math.log(ratio[1])).exp_()  # [N]
    # Box width * height = area * H * W pixels with width / height = aspect, in fractions:
    box_w = (area * aspect * (height / width)).sqrt_().clamp_(max=1.0)  # [N]
    box_h = (area / aspect * (width / height)).sqrt_().clamp_(max=1.0)  # [N]
    left = (1.0 - box_w) * u[:, 2]
    top = (1.0 - box_h) * u[:, 3]
    return torch.stack((left, top, box_w, box_h), dim=1)  # [N, 4]


def crop_grid(
    boxes: Tensor,
    size: int | tuple[int, int],
    flip: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The ``F.grid_sample`` grid that resizes each box to ``size``: ``[N, out_h, out_w, 2]``.

    ``boxes`` is ``[N, 4]`` as from :func:`sample_crop_boxes`. Output pixel centres are
    spread evenly over the box, edge to edge (``align_corners=False`` convention), so the
    whole-image box at the input's size samples exactly the input's pixel centres.
    ``flip`` (bool ``[N]``, optional) mirrors the crop of the selected images left-right,
    which equals cropping then flipping, in the same single grid.
    """
    out_h, out_w = _pair(size)
    boxes = boxes.to(dtype)
    left, top, box_w, box_h = boxes.unbind(dim=1)  # each [N]
    centre_x = 2.0 * left + box_w - 1.0  # box centre in [-1, 1] coordinates; half-width = box_w
    centre_y = 2.0 * top + box_h - 1.0
    if flip is not None:
        box_w = torch.where(flip.to(boxes.device), -box_w, box_w)
    # Output pixel centres in [-1, 1]: (2 j + 1) / out_w - 1.
    base_x = torch.arange(out_w, device=boxes.device, dtype=dtype).mul_(2.0 / out_w)
    base_x.add_(1.0 / out_w - 1.0)  # [out_w]
    base_y = torch.arange(out_h, device=boxes.device, dtype=dtype).mul_(2.0 / out_h)
    base_y.add_(1.0 / out_h - 1.0)  # [out_h]
    grid = torch.empty(boxes.shape[0], out_h, out_w, 2, device=boxes.device, dtype=dtype)
    # Axis-aligned affine map, written as two small broadcasts instead of F.affine_grid's bmm.
    grid[..., 0].copy_(torch.addcmul(centre_x[:, None, None], box_w[:, None, None],
                                     base_x[None, None, :]))  # [N, 1, out_w] -> all rows
    grid[..., 1].copy_(torch.addcmul(centre_y[:, None, None], box_h[:, None, None],
                                     base_y[None, :, None]))  # [N, out_h, 1] -> all columns
    return grid


def resized_crop(
    images: Tensor,
    boxes: Tensor,
    size: int | tuple[int, int],
    flip: Tensor | None = None,
) -> Tensor:
    """Crop each image ``[N, C, H, W]`` to its box and resize to ``size`` (bilinear).

    The deterministic core of :func:`random_resized_crop`; ``flip`` as in :func:`crop_grid`.
    Returns a new ``[N, C, out_h, out_w]`` tensor.
    """
    check_batch(images)
    grid = crop_grid(boxes.to(images.device), size, flip, dtype=images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def random_resized_crop(
    images: Tensor,
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    flip_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random resized crop (Inception / SimCLR), each image its own box: ``[N, C, *size]``.

    See :func:`sample_crop_boxes` for the boxes. With ``flip_p > 0`` each image is also
    mirrored with probability ``flip_p`` inside the same grid_sample (crop + flip in one
    pass, what SimCLR's recipe wants); :func:`horizontal_flip` remains available on its own.
    The boxes are drawn before the flips, so ``flip_p`` does not change which boxes a seed gives.
    """
    check_batch(images)
    check_probability(flip_p, "flip_p")
    count, _, height, width = images.shape
    boxes = sample_crop_boxes(count, (height, width), scale, ratio, generator=generator,
                              device=images.device)
    flip = draw_mask(count, flip_p, generator, images.device) if flip_p > 0 else None
    return resized_crop(images, boxes, size, flip)


def flip_where(images: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the images whose ``mask`` (bool ``[N]``) is True; a new tensor."""
    check_batch(images)
    return select(expand_mask(mask.to(images.device)), images.flip(-1), images)


def horizontal_flip(
    images: Tensor, p: float = 0.5, *, generator: torch.Generator | None = None
) -> Tensor:
    """Mirror each image left-right with probability ``p`` (one coin per image)."""
    check_batch(images)
    check_probability(p)
    return flip_where(images, draw_mask(images.shape[0], p, generator, images.device))


def resize(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize the batch to ``size`` (bilinear, antialiased when shrinking); as is if equal."""
    check_batch(images)
    out_h, out_w = _pair(size)
    if (out_h, out_w) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=(out_h, out_w), mode="bilinear", align_corners=False,
                         antialias=out_h < images.shape[-2] or out_w < images.shape[-1])


def translate_and_flip(
    images: torch.Tensor, *, max_shift: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Light augmentation of a float batch ``[N, C, H, W]``: a random translation by up to
    ``max_shift`` pixels each way (reflect padding, then a per-image crop by gather) and a
    horizontal flip with probability 1/2. One draw per image, no loop over images. FixMatch's
    weak augmentation with ``max_shift`` = 1/8 of the side (Sohn et al. 2020); the
    supervised baseline's."""
    N, C, H, W = images.shape
    max_shift = min(max_shift, H - 1, W - 1)
    if max_shift > 0:
        padded = F.pad(images, (max_shift,) * 4, mode="reflect")  # [N, C, H+2s, W+2s]
        offsets = torch.randint(0, 2 * max_shift + 1, (N, 2), generator=generator)
        offsets = offsets.to(images.device)
        rows = offsets[:, :1] + torch.arange(H, device=images.device)  # [N, H]
        cols = offsets[:, 1:] + torch.arange(W, device=images.device)  # [N, W]
        padded = padded.gather(2, rows[:, None, :, None].expand(N, C, H, padded.shape[3]))
        images = padded.gather(3, cols[:, None, None, :].expand(N, C, H, W))  # [N, C, H, W]
    if flip:
        flipped = (torch.rand(N, generator=generator) < 0.5).to(images.device)
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    return images
