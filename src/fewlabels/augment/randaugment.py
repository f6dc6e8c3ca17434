r"""FixMatch's strong augmentation: RandAugment with a random magnitude per image, then Cutout.

Batched on float images ``[N, C, H, W]`` in [0, 1] (C = 1 or 3). Each image gets ``n_ops``
operations drawn with replacement from the 14 below (as the official code's
``np.random.choice`` and USB's ``random.choices`` do), each with its own magnitude drawn
uniformly from the op's range, then a Cutout square. Ranges are those of the FixMatch
paper's RandAugment table (Sohn et al. 2020, Appendix, table 12; also USB's and the popular
PyTorch port's):

================  ============================================  ======================
op                parameter (range drawn)                        identity at
================  ============================================  ======================
identity          --                                             always
autocontrast      -- (each channel stretched to [0, 1])          --
brightness        factor in [0.05, 0.95] (blend with black)      1
color             factor in [0.05, 0.95] (blend with the gray)   1 (and C = 1)
contrast          factor in [0.05, 0.95] (blend with mean gray)  1
equalize          -- (per channel, 256 bins, as PIL)             --
posterize         bits in {4, ..., 8}                            8
rotate            degrees in [-30, 30] (counter-clockwise)       0
sharpness         factor in [0.05, 0.95] (blend with smoothed)   1
shear_x, shear_y  shear in [-0.3, 0.3]                           0
solarize          threshold in [0, 1] (x >= t -> 1 - x)          > 1
translate_x/_y    fraction of the side in [-0.3, 0.3]            0
================  ============================================  ======================

Differences from the official TensorFlow code (``libml/augment.py``, "rac"), which applies
each chosen op with probability 1/2 (``op_probability=0.5`` here) at an integer level 1-9
of 10 with narrower ranges for some ops (enhance factors 0.28-1.72, posterize 1-4 bits,
translate 1-9 pixels), and a fixed Cutout of half the side (``random_cutout_size=False``).
Cutout fills gray 0.5: the official code zeroes the square in its [-1, 1] normalised
space, which is gray 0.5 here (its CTAugment uses 127/255). Geometric ops fill the area
they uncover with the same gray (the official code's transparent RGBA pixels also come
back as 0 in [-1, 1]) and sample the nearest pixel, as PIL's ``transform`` does.

How it is batched: for each of the ``n_ops`` slots, the images are grouped by their op and
each op runs once on its group (an ``index_select`` and an ``index_copy``), so a slot
costs about one pass over the batch whatever the number of ops; the five geometric ops
share one affine matrix per image and one ``grid_sample`` call. No loop over images.
The weak augmentation (flip and translate) is :func:`fewlabels.augment.geometric.
translate_and_flip`; this module does not duplicate it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fewlabels.augment._random import check_batch, draw_uniform, select
from fewlabels.augment.photometric import adjust_brightness, adjust_contrast, adjust_saturation
from fewlabels.errors import UserError

__all__ = [
    "GEOMETRIC_OPS",
    "RANDAUGMENT_OPS",
    "StrongAugment",
    "affine_transform",
    "apply_op",
    "autocontrast",
    "cutout_squares",
    "equalize",
    "posterize",
    "sharpen_images",
    "solarize_above",
]

RANDAUGMENT_OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "equalize",
                   "posterize", "rotate", "sharpness", "shear_x", "shear_y", "solarize",
                   "translate_x", "translate_y")
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")

# The range each op's parameter is drawn from (uniform), FixMatch's table 12.
_RANGES = {"brightness": (0.05, 0.95), "color": (0.05, 0.95), "contrast": (0.05, 0.95),
           "sharpness": (0.05, 0.95), "posterize": (4.0, 8.0), "rotate": (-30.0, 30.0),
           "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "solarize": (0.0, 1.0),
           "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3)}


# Deterministic cores: one parameter per image ``[N]``. -----------------------------------


def _quantize(images: Tensor) -> Tensor:
    """The 8-bit levels ``round(255 x)`` as int64, what PIL's ops work on."""
    return images.mul(255.0).round_().clamp_(0, 255).long()


def autocontrast(images: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 1]: ``(x - min) / (max - min)``
    (PIL's ``ImageOps.autocontrast`` without cutoff, per band); a flat channel is kept."""
    check_batch(images)
    low = images.amin(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
    high = images.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    stretched = (images - low) / spread.clamp_min(1e-12)
    return select(spread > 0, stretched.clamp_(0.0, 1.0), images)


def equalize(images: Tensor) -> Tensor:
    """Histogram equalisation of each channel of each image, as PIL's ``ImageOps.equalize``:
    on the 8-bit levels ``q``, with ``h`` the 256-bin histogram and ``step = (H W - h[q_max])
    // 255``, level ``q`` maps to ``(step // 2 + sum_{k < q} h[k]) // step`` (at most 255); a
    channel with ``step = 0`` is kept. Batched: one ``scatter_add`` over 256 bins."""
    check_batch(images)
    count, channels, height, width = images.shape
    levels = _quantize(images).view(count * channels, height * width)  # [NC, HW]
    histogram = torch.zeros(count * channels, 256, dtype=torch.long, device=images.device)
    histogram.scatter_add_(1, levels, torch.ones_like(levels))
    top_count = histogram.gather(1, levels.amax(dim=1, keepdim=True))  # [NC, 1]
    step = (height * width - top_count) // 255  # [NC, 1]
    before = histogram.cumsum(dim=1) - histogram  # pixels strictly below each level
    table = ((step // 2 + before) // step.clamp_min(1)).clamp_(max=255)  # [NC, 256]
    equalized = table.gather(1, levels).to(images.dtype).div_(255.0).view_as(images)
    return select(step.view(count, channels, 1, 1) > 0, equalized, images)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` (``[N]``, 1-8) of each 8-bit level: ``(q >> s) << s`` with
    ``s = 8 - bits``, as PIL's ``ImageOps.posterize``; 8 bits returns the image as it is."""
    check_batch(images)
    shift = (8 - bits.to(images.device).long()).clamp_(0, 8).view(-1, 1, 1, 1)  # [N,1,1,1]
    unit = torch.pow(2.0, shift.to(images.dtype))
    levels = _quantize(images).to(images.dtype)
    posterized = torch.floor(levels / unit).mul_(unit).div_(255.0)
    return select(shift > 0, posterized, images)


def solarize_above(images: Tensor, thresholds: Tensor) -> Tensor:
    """Invert (``x -> 1 - x``) the pixels at or above each image's threshold (``[N]``);
    a threshold above 1 leaves the image as it is."""
    check_batch(images)
    t = thresholds.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    return select(images >= t, 1.0 - images, images)


def sharpen_images(images: Tensor, factors: Tensor) -> Tensor:
    """PIL's ``ImageEnhance.Sharpness``: blend each image with its smoothed copy,
    ``s + f (x - s)``, clamped to [0, 1]; ``s`` is the 3x3 filter ``[[1, 1, 1], [1, 5, 1],
    [1, 1, 1]] / 13`` inside and the image itself on the one-pixel border. ``f = 1`` keeps
    the image, ``f < 1`` blurs, ``f > 1`` sharpens."""
    check_batch(images)
    count, channels, height, width = images.shape
    kernel = torch.ones(3, 3, dtype=images.dtype, device=images.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(channels, 1, 3, 3)
    smooth = images.clone()
    if height > 2 and width > 2:
        smooth[:, :, 1:-1, 1:-1] = F.conv2d(images, kernel, groups=channels)
    f = factors.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
    return torch.lerp(smooth, images, f).clamp_(0.0, 1.0)


def affine_transform(images: Tensor, matrices: Tensor, fill: float = 0.5) -> Tensor:
    """Resample each image through its affine map ``matrices [N, 2, 3]`` from output pixel
    coordinates to input pixel coordinates (pixel units, origin at the top-left corner of
    the image, pixel centres at ``i + 0.5``), nearest pixel, areas outside the input filled
    with ``fill``. One ``affine_grid`` and one ``grid_sample`` for the whole batch."""
    check_batch(images)
    count, _, height, width = images.shape
    dtype, device = images.dtype, images.device
    # Normalised coordinates (align_corners=False): n = 2 p / size - 1, per axis.
    to_pixels = torch.tensor([[width / 2.0, 0.0, width / 2.0], [0.0, height / 2.0, height / 2.0],
                              [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    to_normalised = torch.linalg.inv(to_pixels)
    full = torch.zeros(count, 3, 3, dtype=dtype, device=device)
    full[:, :2] = matrices.to(device=device, dtype=dtype)
    full[:, 2, 2] = 1.0
    theta = (to_normalised @ full @ to_pixels)[:, :2]  # [N, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = F.grid_sample(images - fill, grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)
    return shifted.add_(fill)


def _geometric_matrices(kinds: Tensor, values: Tensor, height: int, width: int) -> Tensor:
    """Output-to-input pixel maps ``[N, 2, 3]`` for the op ``GEOMETRIC_OPS[kinds[i]]`` with
    parameter ``values[i]``: rotate counter-clockwise by degrees about the centre; shear
    ``x_in = x + v y`` (about the top edge, PIL's ``(1, v, 0, 0, 1, 0)``) or ``y_in = y + v
    x``; translate the content by ``v`` times the side (to the right / down for v > 0)."""
    v = values.double()
    kinds = kinds.to(v.device)

    def where(kind: str) -> Tensor:
        return torch.where(kinds == GEOMETRIC_OPS.index(kind), v, torch.zeros_like(v))

    angle = where("rotate") * (math.pi / 180.0)
    cos, sin = angle.cos(), angle.sin()
    cx, cy = width / 2.0, height / 2.0
    # Content turned counter-clockwise on screen (y down): sample at the clockwise turn.
    rows = (cos, where("shear_x") - sin, cx - cos * cx + sin * cy - where("translate_x") * width,
            sin + where("shear_y"), cos, cy - sin * cx - cos * cy - where("translate_y") * height)
    return torch.stack(rows, dim=1).view(-1, 2, 3)


def apply_op(name: str, images: Tensor, values: Tensor | None = None,
             fill: float = 0.5) -> Tensor:
    """Apply one RandAugment op to every image, with its parameter ``values [N]`` (in the
    op's own units, see the module's table; ignored by identity, autocontrast, equalize)."""
    if name not in RANDAUGMENT_OPS:
        raise ValueError(f"unknown RandAugment op {name!r}; choose from {RANDAUGMENT_OPS}")
    check_batch(images, colour=True)
    if name == "identity":
        return images.clone()
    if name == "autocontrast":
        return autocontrast(images)
    if name == "equalize":
        return equalize(images)
    if values is None:
        raise ValueError(f"{name} needs one parameter per image")
    if name in GEOMETRIC_OPS:
        height, width = images.shape[-2:]
        kinds = torch.full((images.shape[0],), GEOMETRIC_OPS.index(name))
        return affine_transform(images, _geometric_matrices(kinds, values, height, width), fill)
    photometric = {"brightness": adjust_brightness, "color": adjust_saturation,
                   "contrast": adjust_contrast, "sharpness": sharpen_images,
                   "posterize": posterize, "solarize": solarize_above}
    return photometric[name](images, values)


def cutout_squares(images: Tensor, centres: Tensor, sides: Tensor, fill: float = 0.5) -> Tensor:
    """Fill with ``fill`` a square of ``sides[i]`` pixels (``[N]``, 0 = none) in each image,
    rows ``cy - side // 2`` to ``cy - side // 2 + side - 1`` (and the same for columns) for
    the integer centre ``centres[i] = (cy, cx)`` ``[N, 2]``, clipped to the image."""
    check_batch(images)
    _, _, height, width = images.shape
    centres = centres.to(images.device).long()
    sides = sides.to(images.device).long()
    top = (centres[:, 0] - sides // 2)[:, None]  # [N, 1]
    left = (centres[:, 1] - sides // 2)[:, None]
    rows = torch.arange(height, device=images.device)[None, :]  # [1, H]
    cols = torch.arange(width, device=images.device)[None, :]
    inside_rows = (rows >= top) & (rows < top + sides[:, None])  # [N, H]
    inside_cols = (cols >= left) & (cols < left + sides[:, None])  # [N, W]
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]  # [N, 1, H, W]
    return select(mask, torch.full_like(images[:1, :1, :1, :1], fill), images)


# The random augmentation. ----------------------------------------------------------------


class StrongAugment:
    """FixMatch's strong augmentation ("RA" with Cutout), batched; see the module docstring.

    ``StrongAugment()(images, generator)`` returns a new batch: ``n_ops`` ops per image
    (drawn with replacement from ``ops``, each applied with probability ``op_probability``
    at a magnitude uniform in its range), then Cutout of a square whose side is
    ``cutout * min(H, W)`` times a uniform number in (0, 1] (``random_cutout_size=True``,
    as USB) or exactly that (``False``, as the official code's 16 pixels on 32x32), at a
    uniform integer centre, filled with ``fill``; ``cutout=0`` switches it off. All
    numbers come from ``generator`` (drawn on its device, then moved to the images').
    """

    def __init__(self, n_ops: int = 2, cutout: float = 0.5, *, op_probability: float = 1.0,
                 random_cutout_size: bool = True, ops: Sequence[str] = RANDAUGMENT_OPS,
                 fill: float = 0.5) -> None:
        unknown = [name for name in ops if name not in RANDAUGMENT_OPS]
        if unknown or not ops:
            raise UserError(f"unknown RandAugment ops {unknown}; choose from "
                            f"{', '.join(RANDAUGMENT_OPS)}")
        if n_ops < 0:
            raise UserError(f"the number of RandAugment ops must be >= 0, got {n_ops}")
        if not 0.0 <= cutout <= 1.0:
            raise UserError(f"cutout is a fraction of the image side in [0, 1], got {cutout}")
        if not 0.0 <= op_probability <= 1.0:
            raise UserError(f"op_probability must be in [0, 1], got {op_probability}")
        self.n_ops = n_ops
        self.cutout = cutout
        self.op_probability = op_probability
        self.random_cutout_size = random_cutout_size
        self.ops = tuple(ops)
        self.fill = fill

    def __repr__(self) -> str:
        return (f"StrongAugment(n_ops={self.n_ops}, cutout={self.cutout}, "
                f"op_probability={self.op_probability}, "
                f"random_cutout_size={self.random_cutout_size}, ops={self.ops})")

    def _values(self, choice: Tensor, u: Tensor) -> Tensor:
        """Each image's parameter for its op ``self.ops[choice]``, from ``u`` uniform [N]."""
        low = torch.tensor([_RANGES.get(name, (0.0, 0.0))[0] for name in self.ops])
        high = torch.tensor([_RANGES.get(name, (0.0, 0.0))[1] for name in self.ops])
        index = choice.clamp_min(0)
        values = u * (high[index] - low[index]) + low[index]
        if "posterize" in self.ops:  # bits 4..8, each with probability 1/5
            bits = (4.0 + torch.floor(u * 5.0)).clamp_(max=8.0)
            values = torch.where(choice == self.ops.index("posterize"), bits, values)
        return values

    def _slot(self, out: Tensor, choice: Tensor, values: Tensor) -> None:
        """Apply in place one op per image: ``choice [N]`` indexes ``self.ops`` (-1: none)."""
        geometric = torch.zeros_like(choice, dtype=torch.bool)
        for index in torch.unique(choice[choice >= 0]).tolist():
            name = self.ops[index]
            if name == "identity":
                continue
            if name in GEOMETRIC_OPS:
                geometric |= choice == index
                continue
            rows = torch.nonzero(choice == index).squeeze(1)
            device_rows = rows.to(out.device)
            updated = apply_op(name, out.index_select(0, device_rows), values[rows])
            out.index_copy_(0, device_rows, updated)
        if bool(geometric.any()):
            rows = torch.nonzero(geometric).squeeze(1)
            kinds = torch.tensor([GEOMETRIC_OPS.index(name) if name in GEOMETRIC_OPS else -1
                                  for name in self.ops])[choice[rows]]
            height, width = out.shape[-2:]
            matrices = _geometric_matrices(kinds, values[rows], height, width)
            device_rows = rows.to(out.device)
            out.index_copy_(0, device_rows, affine_transform(out.index_select(0, device_rows),
                                                             matrices, self.fill))

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A strongly augmented copy of ``images`` ``[N, C, H, W]`` (the input is kept)."""
        check_batch(images, colour=True)
        count, _, height, width = images.shape
        # All draws at once, on the generator's device, then on the CPU for the grouping.
        u = draw_uniform((count, 3 * self.n_ops + 3), generator, torch.device("cpu"))
        out = images.clone()
        for slot in range(self.n_ops):
            choice = torch.floor(u[:, 3 * slot] * len(self.ops)).long()
            choice = choice.clamp_(max=len(self.ops) - 1)
            applied = u[:, 3 * slot + 1] < self.op_probability
            choice = torch.where(applied, choice, torch.full_like(choice, -1))
            self._slot(out, choice, self._values(choice, u[:, 3 * slot + 2]))
        if self.cutout > 0:
            fraction = (1.0 - u[:, -3]) if self.random_cutout_size else torch.ones(count)
            sides = torch.round(fraction * self.cutout * min(height, width)).long()
            centres = torch.stack((torch.floor(u[:, -2] * height),
                                   torch.floor(u[:, -1] * width)), dim=1).long()
            out = cutout_squares(out, centres, sides, self.fill)
        return out
