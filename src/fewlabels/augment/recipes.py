"""View recipes: uint8 images on the device -> the normalised float views a method trains on.

A view recipe is a callable ``recipe(images_uint8 [N, C, H, W], generator) -> list[Tensor]``.
Its parameters are dataclass fields, so the engine can store ``dataclasses.asdict(recipe)``
in a checkpoint's config and rebuild the recipe from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from fewlabels.augment.blur import gaussian_blur
from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import random_resized_crop, resize
from fewlabels.augment.photometric import color_jitter, random_grayscale, solarize
from fewlabels.errors import UserError


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise UserError(
            f"mean and std need one value per channel (1 or 3), got {len(mean)} and "
            f"{len(std)}; pass them from the dataset's channel_mean_std()"
        )
    if min(std) <= 0:
        raise UserError(f"std must be positive, got {tuple(std)}")


@lru_cache(maxsize=32)
def _channel_constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    """``[1, C, 1, 1]`` float32 on ``device``, made once: no host-to-device copy per step."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _normalize_(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    return normalize(x, _channel_constant(mean, x.device), _channel_constant(std, x.device),
                     inplace=True)


def _check_probability(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name} must be between 0 and 1, got {value}")


def _check_images(images: Tensor, channels: int) -> None:
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[1] != channels:
        raise UserError(
            f"the view recipe was built for {channels}-channel images but got "
            f"{images.shape[1]} channels; rebuild it with this dataset's mean and std"
        )


def default_view_size(image_size: int) -> int:
    """Side of training views smaller than the images: 3/4 of ``image_size`` rounded down to a
    multiple of 4 (20 px for 28 px images, 24 for 32, 72 for 96); images under 8 px keep
    their size.

    Random resized crops already zoom in, so views a little smaller than the test images
    keep the apparent object size of training closer to that of testing (Touvron et al.,
    "Fixing the train-test resolution discrepancy", NeurIPS 2019), and they cost about
    (3/4)² of the compute. Measured on Fashion-MNIST in docs/benchmarks.md: a step on 20 px
    views is 1.8x faster than on 28 px ones, and the linear probe is better at a fixed budget.
    """
    if image_size < 8:
        return image_size
    return (3 * image_size // 4) // 4 * 4


def default_local_view_size(global_size: int) -> int:
    """3/5 of the global side rounded to a multiple of 4 (12 px for 20 px global views),
    close to multi-crop's 96/224 relative to the image (DINO, SwAV); at least 4."""
    return max(4, round(0.6 * global_size / 4) * 4)


@dataclass(frozen=True)
class SimCLRViews:
    """SimCLR's augmentation (Chen et al. 2020, Appendix A), ``num_views`` views per image.

    Per view and image: random resized crop to ``image_size`` (area ``crop_scale``, aspect
    ``crop_ratio``) fused with a horizontal flip (``flip_p``) in one grid_sample; colour
    jitter with strength s = ``jitter_strength`` (brightness = contrast = saturation = 0.8 s,
    hue = 0.2 s) applied with ``jitter_p``; grayscale with ``grayscale_p``; Gaussian blur
    (sigma in [0.1, 2], kernel 10 % of the side) with ``blur_p``, which SimCLR uses for
    ImageNet-size images only, so the small-image default is 0; solarize with
    ``solarize_p`` (not SimCLR's; BYOL's), then normalisation with ``mean`` / ``std``.

    All views are made in one batch of ``num_views * N`` images (one pass per op); the result
    is a list of ``num_views`` contiguous float32 tensors ``[N, C, size, size]``, slices of
    one block that :meth:`all_views` returns whole.

    Example::

        views = SimCLRViews(image_size=28, mean=[0.286], std=[0.353])
        first, second = views(images_uint8, torch.Generator(images_uint8.device).manual_seed(0))
    """

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0
    num_views: int = 2
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        # Plain tuples of floats, so asdict() gives JSON-friendly values and equality works.
        for name in ("mean", "std", "crop_scale", "crop_ratio"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        _check_mean_std(self.mean, self.std)
        if self.image_size < 1:
            raise UserError(f"image_size must be positive, got {self.image_size}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise UserError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise UserError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        if not 0.0 <= self.jitter_strength <= 2.5:
            raise UserError(f"jitter_strength must be in [0, 2.5], got {self.jitter_strength}")
        for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p", "flip_p"):
            _check_probability(getattr(self, name), name)
        if self.num_views < 1:
            raise UserError(f"num_views must be at least 1, got {self.num_views}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def blur_kernel_size(self) -> int:
        """SimCLR's kernel: 10 % of the image side, made odd, at least 3."""
        size = max(3, int(0.1 * self.image_size))
        return size if size % 2 == 1 else size + 1

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """uint8 ``[N, C, H, W]`` on the device -> ``num_views`` float32 views ``[N, C, S, S]``."""
        return list(self.all_views(images, generator).split(images.shape[0]))

    def all_views(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The same views as one tensor ``[num_views * N, C, S, S]``; view v of image i is row
        ``v * N + i``. Saves a ``torch.cat`` for methods that run all views in one pass."""
        _check_images(images, self.channels)
        # [V*N, C, H, W]: repeating the uint8 images is cheap.
        x = to_float(images.repeat(self.num_views, 1, 1, 1))
        x = random_resized_crop(x, self.image_size, self.crop_scale, self.crop_ratio,
                                flip_p=self.flip_p, generator=generator)
        s = self.jitter_strength
        # The crop allocated x: from here on the ops may work in place.
        x = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5), self.jitter_p,
                         inplace=True, generator=generator)
        x = random_grayscale(x, self.grayscale_p, inplace=True, generator=generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, (0.1, 2.0), self.blur_kernel_size, self.blur_p,
                              generator=generator)
        if self.solarize_p > 0:
            x = solarize(x, 0.5, self.solarize_p, inplace=True, generator=generator)
        return _normalize_(x, self.mean, self.std)


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation / feature-extraction transform: to float, resize if needed, normalise.

    ``transform(images_uint8 [N, C, H, W]) -> float32 [N, C, image_size, image_size]``;
    resizing (bilinear, antialiased when shrinking) happens only if the size differs.
    """

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        _check_mean_std(self.mean, self.std)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``generator`` is unused (no randomness); it is accepted for a uniform signature."""
        _check_images(images, len(self.mean))
        x = resize(to_float(images), self.image_size)  # a new tensor: normalise in place
        return _normalize_(x, self.mean, self.std)
