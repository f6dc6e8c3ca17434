"""The images active learning chooses from, as features with stable ids.

Features come from a pretraining run's frozen network (cached under the run's or the state's
``features`` folder, keyed by the checkpoint's digest as ``fewlabels evaluate`` keys them, so
both commands share one extraction) or, without a run, from the raw pixels.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fewlabels.data import load_dataset
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.errors import UserError
from fewlabels.evaluate import (
    BackboneFeatures,
    FeatureCache,
    FeatureProvider,
    RawPixels,
    file_digest,
)
from fewlabels.runs import load_pretrained


@dataclass
class FeatureSource:
    """Where features come from: a provider, the image size and channels it wants (``None``:
    as stored, any), and a description for messages and results. With ``key_by_ids`` the
    cache key of a part with ids (a folder) holds their digest too: a folder whose files
    changed but not their number gets new features."""

    provider: FeatureProvider | None
    image_size: int | None
    channels: int | None
    description: str
    key_by_ids: bool = False

    def __call__(self, images: ImageSet, part: str) -> torch.Tensor:
        provider = self.provider
        if (self.key_by_ids and isinstance(provider, BackboneFeatures)
                and provider.cache_key is not None and images.ids is not None):
            keyed = copy.copy(provider)
            keyed.cache_key = {**provider.cache_key, "ids": ids_digest(images.ids)}
            return keyed(images, part)
        if self.provider is None:
            # raw pixels, normalised with the statistics of the first images asked for (the
            # train part), the same for every later part
            self.provider = RawPixels(*images.channel_mean_std())
        return self.provider(images, part)


def run_features(run_dir: str | None, spec: str, cache_dir: Path | None, *,
                 device: str | torch.device = "cpu", representation: str | None = None,
                 key_by_ids: bool = False) -> FeatureSource:
    """The features of ``run_dir``'s evaluated network on ``spec`` (raw pixels when
    ``run_dir`` is ``None``), cached in ``cache_dir`` (default ``RUN_DIR/features``) under
    the key ``fewlabels evaluate`` uses (see :class:`FeatureSource` for ``key_by_ids``)."""
    if run_dir is None:
        return FeatureSource(None, None, None, "raw pixels")
    pretrained = load_pretrained(run_dir, representation)
    info = pretrained.data
    directory = Path(run_dir)
    directory = directory if directory.is_dir() else directory.parent
    key = {"checkpoint": file_digest(checkpoint_path(run_dir)), "dataset": spec,
           "image_size": info.image_size, "representation": pretrained.representation}
    provider = BackboneFeatures(pretrained.network, info.mean, info.std,
                                cache=FeatureCache(cache_dir or directory / "features"),
                                cache_key=key, device=device)
    method = pretrained.checkpoint["run"]["method"]
    return FeatureSource(provider, info.image_size, info.channels,
                         f"{method} run {run_dir} ({pretrained.representation})", key_by_ids)


@dataclass
class Pool:
    """Images to choose from: stable ``ids``, the ``paths`` of their files (``""`` when not a
    folder), raw ``features`` ``[N, D]``, and the labels the data itself gives (class folders),
    ``{id: class name}``."""

    ids: list[str]
    paths: list[str]
    features: torch.Tensor
    data_labels: dict[str, str]

    def positions(self, ids: list[str]) -> torch.Tensor:
        """The pool positions of ``ids`` (each must be in the pool)."""
        index = {image_id: position for position, image_id in enumerate(self.ids)}
        return torch.tensor([index[image_id] for image_id in ids], dtype=torch.long)


def part_ids(part: str, images: ImageSet) -> list[str]:
    """Every image's stable id: its file relative to the folder, else ``PART/INDEX``."""
    if images.ids is not None:
        return list(images.ids)
    return [f"{part}/{index}" for index in range(len(images))]


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def load_pool(spec: str, source: FeatureSource, on_corrupt: str = "skip",
              check_classes: Callable[[list[str]], None] | None = None
              ) -> tuple[Pool, list[str]]:
    """The pool of ``spec``: its train and unlabeled parts (a test part is never asked
    about), with features from ``source``; and the data's class names. ``check_classes``
    sees the class names before any feature is extracted (and may refuse them)."""
    bundle = load_dataset(spec, image_size=source.image_size, on_corrupt=on_corrupt)
    parts = {name: images for name, images in bundle.parts().items() if name != "test"}
    if not parts or not any(len(images) for images in parts.values()):
        raise UserError(f"{spec} has no images to label")
    if check_classes is not None:
        check_classes([c for images in parts.values() for c in images.class_names])
    class_names: list[str] = []
    ids, paths, features, data_labels = [], [], [], {}
    root = Path(spec.split(":", 1)[1]) if spec.startswith("folder:") else None
    for name, images in parts.items():
        if source.channels is not None and images.channels != source.channels:
            raise UserError(f"{spec} has {images.channels}-channel images but the run was "
                            f"trained on {source.channels}-channel images; use data like it")
        class_names += [c for c in images.class_names if c not in class_names]
        part = part_ids(name, images)
        ids += part
        paths += [str(root / image_id) if root is not None and images.ids is not None else ""
                  for image_id in part]
        features.append(source(images, name))
        if images.labels is not None and name != "unlabeled":
            data_labels.update({image_id: images.class_names[label]
                                for image_id, label in zip(part, images.labels.tolist(),
                                                           strict=True)})
    return Pool(ids, paths, torch.cat(features), data_labels), class_names
