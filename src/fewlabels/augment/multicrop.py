"""Multi-crop views (BYOL, DINO): global views with per-view blur and solarisation, plus
smaller local views.

Per view and image: random resized crop fused with a horizontal flip (one grid_sample for
all views of a size), colour jitter, grayscale, Gaussian blur, solarisation, normalisation.
BYOL (Grill et al. 2020, Appendix B) and DINO (Caron et al. 2021, after BYOL) blur the first
global view always (p = 1.0) and the second rarely (0.1), and solarise only the second
(0.2); DINO's local views are blurred with p = 0.5. The probabilities differ per view, so
the ops take one probability per image (``gaussian_blur``/``solarize`` with a tensor ``p``)
and each op runs once over all the views of a size.

**Blur size.** The papers draw sigma in [0.1, 2] px on 224 px views. Here sigma is a
fraction of the view's side, so a recipe means the same blur relative to the object at any
resolution. The papers' fraction, (0.1/224, 2/224) of the side, is at most 0.18 px on a
20 px view: the kernel's off-centre weight is exp(-1/(2 * 0.18^2)) ~ 1.5e-7, in effect a no-op
that would drop the augmentation silently while costing its time. Looking at Fashion-MNIST
views blurred with fixed sigmas (20 px and 12 px crops, sigma 0.18-1.5 px): 0.35 px is
barely visible, 0.5 px softens edges, 0.7 px blurs fine texture (a patterned shirt loses
its pattern), 1.0 px removes small details (a pocket) but leaves every garment's shape
readable, 1.5 px smears the shape. The default is therefore (0.005, 0.05) of the side:
0.1-1.0 px on 20 px global views, 0.06-0.6 px on 12 px local views; like the papers' range
at 224 px it goes from no visible change to texture removed. At ImageNet sizes it gives
1.1-11 px, far stronger than the papers': pass ``blur_sigma=(0.1 / 224, 2 / 224)`` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from fewlabels.augment.blur import default_kernel_size, gaussian_blur
from fewlabels.augment.convert import to_float
from fewlabels.augment.geometric import random_resized_crop
from fewlabels.augment.photometric import color_jitter, random_grayscale, solarize
from fewlabels.augment.recipes import (
    _check_images,
    _check_mean_std,
    _check_probability,
    _normalize_,
)
from fewlabels.errors import UserError

DEFAULT_BLUR_SIGMA = (0.005, 0.05)  # fraction of the view side; see the module docstring


@lru_cache(maxsize=32)
def _per_view(probabilities: tuple[float, ...], count: int, device: torch.device) -> Tensor:
    """``[V * count]`` float32 on ``device``: view v's probability for rows v*count..; cached,
    so a step on an accelerator costs no host-to-device copy."""
    values = torch.tensor(probabilities, dtype=torch.float32)
    return values.repeat_interleave(count).to(device)


def _probability_argument(probabilities: tuple[float, ...], count: int,
                          device: torch.device) -> float | Tensor:
    """A float when every view has the same probability (the ops' fast path), else per image."""
    if len(set(probabilities)) == 1:
        return probabilities[0]
    return _per_view(probabilities, count, device)


def _check_scale(scale: tuple[float, float], name: str) -> None:
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise UserError(f"{name} must satisfy 0 < min <= max <= 1, got {scale}")


@dataclass(frozen=True)
class MultiCropViews:
    """Two (or more) global views and ``local_views`` small views per image.

    ``recipe(images_uint8 [N, C, H, W], generator) -> (global_views, local_views)`` with
    ``global_views`` ``[G*N, C, global_size, global_size]`` and ``local_views``
    ``[L*N, C, local_size, local_size]`` (``None`` when ``local_views == 0``), both
    view-major (view v of image i is row ``v*N + i``) and normalised with ``mean`` / ``std``.
    G is ``len(global_blur)``; view g is blurred with probability ``global_blur[g]`` and
    solarised with ``global_solarize[g]``. Local views use ``local_blur`` and
    ``local_solarize``.

    The defaults are DINO's (Caron et al. 2021): global crops of 40-100 % of the image, local
    crops of 5-40 %, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1)
    with p = 0.8, grayscale 0.2, blur (1.0, 0.1) / 0.5, solarisation (0, 0.2). BYOL's crops
    are ``global_scale=(0.08, 1.0)`` with no local views. For 1-channel images saturation,
    hue and grayscale do nothing, as in the single ops. ``blur_sigma`` is sigma as a
    fraction of the view side (see the module docstring for the default); the kernel
    covers +-3 sigma.

    Example::

        recipe = MultiCropViews([0.286], [0.353], global_size=20, local_size=12, local_views=6)
        global_views, local_views = recipe(images_uint8, torch.Generator().manual_seed(0))
    """

    mean: Sequence[float]
    std: Sequence[float]
    global_size: int
    local_size: int = 0
    local_views: int = 0
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    global_blur: tuple[float, ...] = (1.0, 0.1)
    global_solarize: tuple[float, ...] = (0.0, 0.2)
    local_blur: float = 0.5
    local_solarize: float = 0.0
    blur_sigma: tuple[float, float] = DEFAULT_BLUR_SIGMA
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    flip_p: float = 0.5
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        # Plain tuples of floats, so asdict() gives JSON-friendly values and equality works.
        for name in ("mean", "std", "global_scale", "local_scale", "global_blur",
                     "global_solarize", "blur_sigma", "crop_ratio"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        _check_mean_std(self.mean, self.std)
        if self.global_size < 1:
            raise UserError(f"global_size must be positive, got {self.global_size}")
        if self.local_views < 0:
            raise UserError(f"local_views must be 0 or more, got {self.local_views}")
        if self.local_views > 0 and self.local_size < 1:
            raise UserError(f"local_views={self.local_views} needs a positive local_size, "
                            f"got {self.local_size}")
        _check_scale(self.global_scale, "global_scale")
        _check_scale(self.local_scale, "local_scale")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise UserError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        if not self.global_blur or len(self.global_blur) != len(self.global_solarize):
            raise UserError(f"global_blur and global_solarize need one probability per global "
                            f"view, got {self.global_blur} and {self.global_solarize}")
        for name in ("global_blur", "global_solarize"):
            for value in getattr(self, name):
                _check_probability(value, name)
        for name in ("local_blur", "local_solarize", "jitter_p", "grayscale_p", "flip_p"):
            _check_probability(getattr(self, name), name)
        if not 0.0 <= self.blur_sigma[0] <= self.blur_sigma[1] <= 0.5:
            raise UserError(f"blur_sigma (a fraction of the view side) must satisfy "
                            f"0 <= min <= max <= 0.5, got {self.blur_sigma}")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise UserError("brightness, contrast and saturation must be 0 or more, got "
                            f"{self.brightness}, {self.contrast}, {self.saturation}")
        if not 0.0 <= self.hue <= 0.5:
            raise UserError(f"hue must be in [0, 0.5] turns, got {self.hue}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def num_global_views(self) -> int:
        return len(self.global_blur)

    @property
    def num_views(self) -> int:
        """Global and local views per image."""
        return self.num_global_views + self.local_views

    def blur_kernel_size(self, size: int) -> int:
        """The kernel for a view of ``size`` px: covers +-3 sigma_max, at least 3, fits."""
        return default_kernel_size(self.blur_sigma[1] * size, (size, size))

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """uint8 ``[N, C, H, W]`` -> global views ``[G*N, C, S, S]``, local views or None."""
        _check_images(images, self.channels)
        x = to_float(images)  # [N, C, H, W]
        global_views = self._group(x, self.num_global_views, self.global_size,
                                   self.global_scale, self.global_blur, self.global_solarize,
                                   generator)
        if self.local_views == 0:
            return global_views, None
        local_views = self._group(x, self.local_views, self.local_size, self.local_scale,
                                  (self.local_blur,) * self.local_views,
                                  (self.local_solarize,) * self.local_views, generator)
        return global_views, local_views

    def _group(
        self,
        x: Tensor,
        views: int,
        size: int,
        scale: tuple[float, float],
        blur: tuple[float, ...],
        solarize_probabilities: tuple[float, ...],
        generator: torch.Generator | None,
    ) -> Tensor:
        """``views`` views of every image at ``size`` px, each op once over ``[views*N]``."""
        count = x.shape[0]
        x = random_resized_crop(x.repeat(views, 1, 1, 1), size, scale, self.crop_ratio,
                                flip_p=self.flip_p, generator=generator)  # [V*N, C, S, S]
        # The crop allocated x: from here on the ops may work in place.
        x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue,
                         self.jitter_p, inplace=True, generator=generator)
        x = random_grayscale(x, self.grayscale_p, inplace=True, generator=generator)
        if max(blur) > 0 and self.blur_sigma[1] > 0:
            sigma = (self.blur_sigma[0] * size, self.blur_sigma[1] * size)
            x = gaussian_blur(x, sigma, self.blur_kernel_size(size),
                              _probability_argument(blur, count, x.device), generator=generator)
        if max(solarize_probabilities) > 0:
            x = solarize(x, 0.5, _probability_argument(solarize_probabilities, count, x.device),
                         inplace=True, generator=generator)
        return _normalize_(x, self.mean, self.std)
