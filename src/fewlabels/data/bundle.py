"""DataBundle: the parts of one dataset (train, test, unlabeled), each loaded on first access.

A reader does not build the bundle itself: it returns :class:`DatasetParts`, one loader per
part it has, and :func:`fewlabels.data.readers.load_dataset` wraps them with the dataset's
name and spec. Readers hand over NumPy arrays through :func:`image_set_from_arrays`, which
checks shapes and types once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from fewlabels.data.imageset import ImageSet

PartLoader = Callable[[], ImageSet]
PART_NAMES = ("train", "test", "unlabeled")


def _no_skipped_images() -> int:
    return 0


@dataclass
class DatasetParts:
    """What a reader found: a loader for each part it has (``None`` for the parts it has
    not), a count of the images it skipped so far, and where it read from."""

    train: PartLoader | None
    test: PartLoader | None = None
    unlabeled: PartLoader | None = None
    skipped: Callable[[], int] = _no_skipped_images
    location: str = ""


class DataBundle:
    """One dataset: ``.train``, ``.test`` and ``.unlabeled`` are :class:`ImageSet` or ``None``.

    Each part is read the first time it is accessed and kept afterwards. When
    ``image_size`` is given, parts whose images have another size are resized to
    ``image_size x image_size`` (bilinear with antialiasing).
    """

    def __init__(
        self, name: str, spec: str, parts: DatasetParts, image_size: int | None = None
    ) -> None:
        self.name = name
        self.spec = spec
        self.location = parts.location
        self.image_size = image_size
        self._loaders = parts

    @cached_property
    def train(self) -> ImageSet | None:
        """The training images, with labels when the source has them."""
        return self._load("train")

    @cached_property
    def test(self) -> ImageSet | None:
        """The held-out test images, or ``None``."""
        return self._load("test")

    @cached_property
    def unlabeled(self) -> ImageSet | None:
        """Extra images without labels (STL-10's unlabeled split), or ``None``."""
        return self._load("unlabeled")

    @property
    def skipped(self) -> int:
        """How many unreadable images were skipped in the parts loaded so far."""
        return self._loaders.skipped()

    def parts(self) -> dict[str, ImageSet]:
        """The parts this dataset has, by name (loads them all)."""
        loaded = {name: getattr(self, name) for name in PART_NAMES}
        return {name: part for name, part in loaded.items() if part is not None}

    def describe(self) -> str:
        """One line: the name, every part's size, the image shape and the classes."""
        parts = self.parts()
        pieces = [f"{name} {len(part)}" for name, part in parts.items()]
        first = next(iter(parts.values()))
        height, width = first.image_size
        classes = max((part.num_classes for part in parts.values()), default=0)
        line = f"{self.name}: {', '.join(pieces)} images of {first.channels}x{height}x{width}"
        line += f", {classes} classes" if classes else ", no labels"
        if self.skipped:
            line += f", {self.skipped} unreadable images skipped"
        return line

    def __repr__(self) -> str:
        return f"DataBundle(name={self.name!r}, spec={self.spec!r})"

    def _load(self, part: str) -> ImageSet | None:
        loader = getattr(self._loaders, part)
        if loader is None:
            return None
        images = loader()
        if self.image_size is not None and images.image_size != (self.image_size,) * 2:
            images = ImageSet(
                resize_images(images.images, self.image_size),
                images.labels,
                images.class_names,
                images.name,
                images.ids,
            )
        return images


def image_set_from_arrays(
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str],
    name: str,
    ids: list[str] | None = None,
) -> ImageSet:
    """An :class:`ImageSet` sharing memory with ``images`` (uint8 ``[N, C, H, W]``) and
    ``labels`` (integers ``[N]`` in ``range(len(class_names))``, or ``None``); ``ids`` names
    each image (an image folder's file paths), or is ``None``."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"readers must produce uint8 [N, C, H, W], got {images.dtype} {images.shape}"
        )
    label_tensor = None
    if labels is not None:
        label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageSet(torch.from_numpy(images), label_tensor, list(class_names), name,
                    None if ids is None else list(ids))


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 ``[N, C, H, W]`` images to ``[N, C, size, size]``, a chunk at a time so
    that a large set never exists in float all at once."""
    resized = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].float()
        block = F.interpolate(block, size=(size, size), mode="bilinear", antialias=True)
        resized[start : start + chunk] = block.round_().clamp_(0, 255).to(torch.uint8)
    return resized
