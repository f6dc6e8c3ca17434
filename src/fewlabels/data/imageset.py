"""ImageSet: a dataset held in memory as one uint8 tensor."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images as one uint8 tensor ``[N, C, H, W]``, labels (int64 ``[N]``) or ``None``,
    the class names (index ``i`` names label ``i``), and optionally one id per image (image
    folders: each file's path relative to the folder, ``/``-separated) or ``None``."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ImageSet wants uint8 images [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels is not None:
            if self.labels.shape != (len(self.images),):
                raise ValueError("ImageSet labels must be one int per image")
            self.labels = self.labels.long()
        if self.ids is not None and len(self.ids) != len(self.images):
            raise ValueError(f"ImageSet has {len(self.images)} images but {len(self.ids)} ids")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[2], self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The images (and labels and ids) at ``indices``, in that order."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        labels = None if self.labels is None else self.labels[indices]
        ids = None if self.ids is None else [self.ids[index] for index in indices.tolist()]
        return ImageSet(self.images[indices], labels, list(self.class_names), self.name, ids)

    def channel_mean_std(self, max_images: int = 10_000) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the pixels in [0, 1]."""
        sample = self.images[:max_images].float().div_(255)
        mean = sample.mean(dim=(0, 2, 3))
        std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()
