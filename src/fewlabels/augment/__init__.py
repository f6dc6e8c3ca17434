"""Batched tensor augmentation with per-image random parameters, and view recipes.

Every op takes a float batch ``[N, C, H, W]`` in [0, 1] (C = 1 or 3) on any device and
dtype, draws one parameter per image as a tensor (never a Python loop over images) and
has a deterministic core that takes the parameters:

==========================  ==================================  ===========================
random op                   deterministic core                  module
==========================  ==================================  ===========================
``random_resized_crop``     ``sample_crop_boxes`` +             ``geometric``
                            ``resized_crop`` / ``crop_grid``
``horizontal_flip``         ``flip_where``                      ``geometric``
``color_jitter``            ``jitter_color`` (``adjust_*``,     ``photometric``
                            ``rotate_hue``)
``random_grayscale``        ``grayscale_where``                 ``photometric``
``solarize``                ``solarize_where``                  ``photometric``
``gaussian_blur``           ``blur_with_sigmas``                ``blur``
==========================  ==================================  ===========================

Random ops take ``generator=`` (keyword): numbers are drawn on the generator's device and
moved to the images' device, so a CPU generator works for CUDA images and a generator on
the images' device avoids the copy. ``gaussian_blur`` and ``solarize`` also take one
probability per image (a tensor ``p``), for recipes whose views differ in probability.
``to_float`` and ``normalize`` convert stored uint8 images; ``SimCLRViews``,
``MultiCropViews`` (BYOL, DINO) and ``EvalTransform`` are the recipes.
"""

from fewlabels.augment.blur import blur_with_sigmas, gaussian_blur, gaussian_kernels
from fewlabels.augment.convert import normalize, to_float
from fewlabels.augment.geometric import (
    crop_grid,
    flip_where,
    horizontal_flip,
    random_resized_crop,
    resize,
    resized_crop,
    sample_crop_boxes,
)
from fewlabels.augment.multicrop import MultiCropViews
from fewlabels.augment.photometric import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    color_jitter,
    grayscale_where,
    hue_rotation_matrices,
    jitter_color,
    luma,
    probability_per_image,
    random_grayscale,
    rotate_hue,
    solarize,
    solarize_where,
)
from fewlabels.augment.recipes import EvalTransform, SimCLRViews, default_view_size

__all__ = [
    "EvalTransform",
    "MultiCropViews",
    "SimCLRViews",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "blur_with_sigmas",
    "color_jitter",
    "crop_grid",
    "default_view_size",
    "flip_where",
    "gaussian_blur",
    "gaussian_kernels",
    "grayscale_where",
    "horizontal_flip",
    "hue_rotation_matrices",
    "jitter_color",
    "luma",
    "normalize",
    "probability_per_image",
    "random_grayscale",
    "random_resized_crop",
    "resize",
    "resized_crop",
    "rotate_hue",
    "sample_crop_boxes",
    "solarize",
    "solarize_where",
    "to_float",
]
