"""Test-time augmentation: a network's class probabilities averaged over fixed views of
each image, the pseudo-labels of Noisy Student's teacher and of co-training.

The views are a deterministic list (the same images always give the same probabilities,
so a teacher's pseudo-labels are reproducible): the image itself, its horizontal mirror,
and translations by ``shift`` pixels to the right, left, down and up with the border
reflected (the weak augmentation's padding, :func:`fewlabels.augment.geometric.
translate_and_flip`, at fixed offsets instead of random ones)::

    p(y | x) = 1/V · Σ_v softmax(f(t_v(x)))

Views go through the network one at a time per batch of images, so memory is bounded by
``batch_size`` images whatever the number of views. Over the unlabeled pool the work is
sharded across devices and gathered (:func:`~fewlabels.engine.epoch_work.sharded_features`),
so every device holds the same probabilities.

Usage::

    probabilities = augmented_probabilities(teacher, images_uint8, mean, std)  # [N, K]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.engine.epoch_work import sharded_features

ViewSet = Literal["none", "flip", "flip-and-shifts"]
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flip": ("identity", "flip"),
    "flip-and-shifts": ("identity", "flip", "right", "left", "down", "up"),
}
# (rows, columns) moved by a translation view, in units of ``shift``.
_DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}


def default_shift(image_size: int) -> int:
    """The translation of the shifted views: 1/16 of the side, at least one pixel (2 px for
    28-32 px images: half the weak augmentation's largest shift)."""
    return max(1, round(image_size / 16))


def test_time_view(images: torch.Tensor, name: str, shift: int) -> torch.Tensor:
    """One fixed view of a batch ``[N, C, H, W]``: ``identity``, ``flip`` (horizontal
    mirror) or a translation ``right``/``left``/``down``/``up`` by ``shift`` pixels whose
    uncovered border is the reflection of the image (``out[..., x] = in[..., x - shift]``
    for ``right``)."""
    if name == "identity":
        return images
    if name == "flip":
        return images.flip(-1)
    if name not in _DIRECTIONS:
        raise ValueError(f"unknown test-time view {name!r}")
    height, width = images.shape[-2:]
    shift = min(shift, height - 1, width - 1)
    if shift < 1:
        return images
    rows, columns = _DIRECTIONS[name]
    padded = F.pad(images, (shift,) * 4, mode="reflect")  # [N, C, H+2s, W+2s]
    top, left = shift - rows * shift, shift - columns * shift
    return padded[..., top:top + height, left:left + width]


class TestTimeAugmented(nn.Module):
    """``network`` (normalised images -> logits) wrapped to return the mean of its softmax
    over ``views`` (names of :func:`test_time_view`): normalised images ``[N, C, H, W]`` ->
    probabilities ``[N, K]``, float32. Computes no gradient of its own; the caller sets the
    mode (eval for pseudo-labels)."""

    __test__ = False  # not a pytest class

    def __init__(self, network: nn.Module, views: Sequence[str] = VIEW_SETS["flip-and-shifts"],
                 shift: int = 2) -> None:
        super().__init__()
        if not views:
            raise ValueError("test-time augmentation needs at least one view")
        self.network = network
        self.views = tuple(views)
        self.shift = shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for name in self.views:
            probabilities = self.network(test_time_view(images, name, self.shift)).float()
            probabilities = probabilities.softmax(dim=1)
            total = probabilities if total is None else total.add_(probabilities)
        return total.div_(len(self.views))


@torch.no_grad()
def augmented_probabilities(network: nn.Module, images: torch.Tensor, mean: Sequence[float],
                            std: Sequence[float], *, views: ViewSet = "flip-and-shifts",
                            shift: int | None = None, batch_size: int = 512) -> torch.Tensor:
    """Test-time-augmented probabilities ``[N, K]`` of ``network`` (run in eval mode, its
    mode restored) for uint8 ``images [N, C, H, W]`` normalised with ``mean`` and ``std``:
    the mean softmax over the view set ``views`` (see :data:`VIEW_SETS`), in batches of
    ``batch_size`` images, sharded across devices and gathered so every device returns the
    same rows in the images' order. ``shift`` defaults to :func:`default_shift`."""
    if views not in VIEW_SETS:
        raise ValueError(f"views must be one of {', '.join(VIEW_SETS)}, got {views!r}")
    shift = default_shift(images.shape[-1]) if shift is None else shift
    wrapped = TestTimeAugmented(network, VIEW_SETS[views], shift)
    wrapped.train(network.training)  # so restoring the wrapper's mode restores the network's
    return sharded_features(wrapped, images, mean, std, batch_size)
