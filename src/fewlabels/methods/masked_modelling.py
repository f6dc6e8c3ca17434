"""What MAE, SimMIM and BEiT share: the ViT they need, their views (a random resized crop and
a flip, nothing else), and how a reconstruction is returned.

Masked image modelling needs no colour or blur augmentation: the pretext task is hard
already, and MAE found that colour jitter hurts (He et al. 2022, Table 1e). Views are taken
at the stored image size by default (``view_size`` 0), not at the 3/4 side of the
joint-embedding methods: on 28 px images with 4 px patches, 20 px views hold 25 patches and
MAE would see 6 of them; full-size views hold 49 and leave 12 visible.
"""

from __future__ import annotations

import torch

from fewlabels.augment.recipes import SimCLRViews
from fewlabels.errors import UserError
from fewlabels.methods.base import DataInfo, check_view_size
from fewlabels.models.patches import patch_mask_to_pixels
from fewlabels.models.vit import VisionTransformer


def require_vit(backbone: torch.nn.Module, method: str) -> VisionTransformer:
    """The backbone as a ViT, or a one-line :class:`UserError` naming ``--backbone vit``."""
    if not isinstance(backbone, VisionTransformer):
        raise UserError(f"{method} masks patches of a Vision Transformer; train it with "
                        "--backbone vit")
    return backbone


def check_mask_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise UserError(f"--mask-ratio must be between 0 and 1 (exclusive), got {ratio}")


def crop_flip_views(backbone: VisionTransformer, data: DataInfo, view_size: int,
                    crop_scale: tuple[float, float]) -> tuple[SimCLRViews, int]:
    """One view per image: a random resized crop of area ``crop_scale`` and a horizontal
    flip, normalised; at ``view_size`` (0: the image size), which the patch size must
    divide. Returns the recipe and the resolved size."""
    view_size = view_size or data.image_size
    if view_size % backbone.patch_size:
        raise UserError(f"--view-size {view_size} is not a multiple of the ViT's patch size "
                        f"{backbone.patch_size}; choose one that is")
    if view_size != data.image_size:
        check_view_size(backbone, data.channels, view_size)
    views = SimCLRViews(image_size=view_size, mean=data.mean, std=data.std,
                        crop_scale=crop_scale, jitter_p=0.0, grayscale_p=0.0, num_views=1)
    return views, view_size


def reconstruction_result(images: torch.Tensor, reconstruction: torch.Tensor,
                          patch_mask: torch.Tensor, patch_size: int) -> dict[str, torch.Tensor]:
    """What :meth:`~fewlabels.methods.base.Method.reconstruct` returns, from the normalised
    ``images [N, C, H, W]``, the ``reconstruction`` of the same shape and the patch mask
    ``[N, L]`` (True where masked)."""
    grid = (images.shape[-2] // patch_size, images.shape[-1] // patch_size)
    pixels = patch_mask_to_pixels(patch_mask, patch_size, grid)  # [N, 1, H, W]
    return {"masked": images.masked_fill(pixels, 0.0), "reconstruction": reconstruction,
            "mask": pixels}
