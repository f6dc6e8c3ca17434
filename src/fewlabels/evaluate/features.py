"""Feature extraction from a frozen backbone, and an on-disk cache of extracted features.

Every evaluation protocol (kNN, linear probe, label-efficiency curves) works on features
extracted once per (checkpoint, dataset, part): a probe on cached features is seconds of
full-batch optimisation, not epochs over images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from fewlabels.atomic import atomic_torch_save
from fewlabels.augment.convert import normalize, to_float
from fewlabels.data.imageset import ImageSet


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images_uint8: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The backbone's pooled features for every image, as float32 ``[N, D]`` on the CPU.

    The backbone is moved to ``device`` (in place, as ``nn.Module.to`` does) and runs in eval
    mode (batch-norm uses its running statistics, so a feature does not depend on which other
    images share its batch) without gradients; its previous training mode is restored
    afterwards. Images stay uint8 until their batch is moved to ``device``,
    where they are normalised with the per-channel ``mean``/``std`` (of pixels in [0, 1]) and
    laid out channels_last, the fast layout for convolutions on CPU and GPU.
    """
    if images_uint8.ndim != 4:
        shape = tuple(images_uint8.shape)
        raise ValueError(f"extract_features wants images [N, C, H, W], got {shape}")
    device = torch.device(device)
    backbone.to(device)
    was_training = backbone.training
    backbone.eval()
    try:
        outputs = []
        for start in range(0, len(images_uint8), batch_size):
            batch = images_uint8[start : start + batch_size].to(device, non_blocking=True)
            batch = normalize(to_float(batch), mean, std, inplace=True)
            batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(backbone(batch).float().flatten(1).cpu())
    finally:
        backbone.train(was_training)
    if not outputs:
        dim = int(getattr(backbone, "feature_dim", 0))
        return torch.zeros(0, dim)
    return torch.cat(outputs)


def file_digest(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file (e.g. a checkpoint), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(key_parts: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``key_parts`` (sorted keys, no whitespace)."""
    canonical = json.dumps(key_parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class FeatureCache:
    """Extracted features on disk, one ``<sha256>.pt`` file per key.

    The key is a dict such as ``{"checkpoint": file_digest(path), "dataset": "fashion-mnist",
    "part": "train", "image_size": 28}``; any change in it gives a different file. Files are
    written atomically, so concurrent or interrupted runs never leave a corrupt entry.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path_for(self, key_parts: dict[str, Any]) -> Path:
        return self.directory / f"{cache_key(key_parts)}.pt"

    def get_or_compute(
        self, key_parts: dict[str, Any], compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The cached features for ``key_parts``, computing and storing them on a miss."""
        path = self.path_for(key_parts)
        if path.exists():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return stored["features"]
        features = compute().detach().cpu().contiguous()
        record = {"key_parts": json.dumps(key_parts, default=str), "features": features}
        atomic_torch_save(record, path)
        return features


class FeatureProvider(Protocol):
    """Anything that turns an image set (and the name of its part) into features ``[N, D]``."""

    def __call__(self, images: ImageSet, part: str) -> torch.Tensor: ...


class BackboneFeatures:
    """A :class:`FeatureProvider` for a backbone: extracts features with
    :func:`extract_features`, through a :class:`FeatureCache` when one is given.

    ``cache_key`` identifies the backbone and dataset (e.g. the checkpoint digest and the dataset
    spec); the part name, image count and image shape are added to it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        cache: FeatureCache | None = None,
        cache_key: dict[str, Any] | None = None,
        batch_size: int = 1024,
        device: str | torch.device = "cpu",
    ) -> None:
        if cache is not None and cache_key is None:
            raise ValueError("BackboneFeatures needs a cache_key to use a cache")
        self.backbone, self.mean, self.std = backbone, list(mean), list(std)
        self.cache, self.cache_key = cache, cache_key
        self.batch_size, self.device = batch_size, device

    def __call__(self, images: ImageSet, part: str) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return extract_features(
                self.backbone, images.images, self.mean, self.std,
                batch_size=self.batch_size, device=self.device,
            )

        if self.cache is None or self.cache_key is None:
            return compute()
        key = {**self.cache_key, "part": part, "count": len(images),
               "shape": list(images.images.shape[1:])}
        return self.cache.get_or_compute(key, compute)
