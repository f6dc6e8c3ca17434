"""Datasets stored as one NumPy ``.npz`` file (``np.savez`` or ``np.savez_compressed``).

Arrays, by name:

==============  ========================================================================
``x_train``     required: the training images
``y_train``     optional: their labels, integers ``0 .. K-1`` of shape ``[N]``
``x_test``      optional: test images; ``y_test`` their labels
``x_unlabeled`` optional: extra images without labels
``class_names`` optional: ``K`` strings (``np.array(["cat", "dog"])``); default ``"0" .. "K-1"``
==============  ========================================================================

Images are ``[N, H, W]`` (grayscale), ``[N, H, W, C]`` or ``[N, C, H, W]`` with ``C`` 1 or 3;
the layout is recognised from which axis has 1 or 3 entries. They are uint8 (0..255), other
integers within 0..255, or floats in [0, 1] (scaled to 0..255 and rounded). Other arrays
in the file are ignored. The file is read without ``allow_pickle``, so it cannot run code.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from fewlabels.data.bundle import DatasetParts, image_set_from_arrays
from fewlabels.data.files import require_exists
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError

KNOWN_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_unlabeled", "class_names")
# part -> (images array, labels array or None)
PART_ARRAYS = {
    "train": ("x_train", "y_train"),
    "test": ("x_test", "y_test"),
    "unlabeled": ("x_unlabeled", None),
}
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def open_npz_dataset(path: Path, name: str) -> DatasetParts:
    """The parts of the ``.npz`` file at ``path``; its array names are checked now, the
    arrays themselves are read on first access."""
    require_exists(path)
    available = set(_array_names(path))
    if "x_train" not in available:
        raise UserError(
            f"{path} has no array x_train (found: {', '.join(sorted(available)) or 'none'}); "
            f"expected {', '.join(KNOWN_ARRAYS)}, of which x_train is required"
        )
    for images_key, labels_key in PART_ARRAYS.values():
        if labels_key in available and images_key not in available:
            raise UserError(f"{path} has {labels_key} but no {images_key} for it")

    def loader(part: str):
        images_key, labels_key = PART_ARRAYS[part]
        if images_key not in available:
            return None
        key = labels_key if labels_key in available else None
        return lambda: _read_part(path, images_key, key, f"{name}/{part}")

    return DatasetParts(
        train=loader("train"),
        test=loader("test"),
        unlabeled=loader("unlabeled"),
        location=str(path),
    )


def images_to_nchw(images: np.ndarray, source: str = "images") -> np.ndarray:
    """uint8 ``[N, C, H, W]`` from NHW, NHWC or NCHW images in uint8, 0..255 integers or
    floats in [0, 1]."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        images = _channels_first(images, source)
    else:
        raise UserError(f"{source} has shape {images.shape}; expected [N, H, W], "
                        "[N, H, W, C] or [N, C, H, W]")
    return np.ascontiguousarray(_to_uint8(images, source))


def _channels_first(images: np.ndarray, source: str) -> np.ndarray:
    _, second, third, last = images.shape
    first_is_channels, last_is_channels = second in (1, 3), last in (1, 3)
    if first_is_channels and last_is_channels:
        # tiny images such as 3x3x3: the layout whose two spatial sizes agree wins
        last_is_channels = second == third and third != last
        first_is_channels = not last_is_channels
    if last_is_channels:
        return images.transpose(0, 3, 1, 2)
    if first_is_channels:
        return images
    raise UserError(
        f"{source} has shape {images.shape}; neither axis 1 nor axis 3 has 1 or 3 channels"
    )


def _to_uint8(images: np.ndarray, source: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.size == 0:
        return images.astype(np.uint8)
    low, high = images.min(), images.max()
    if np.issubdtype(images.dtype, np.integer) and low >= 0 and high <= 255:
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating) and low >= 0 and high <= 1:
        return np.rint(images * 255).astype(np.uint8)
    raise UserError(
        f"{source} holds {images.dtype} values from {low} to {high}; "
        "store uint8 (0..255) or floats in [0, 1]"
    )


def _array_names(path: Path) -> list[str]:
    try:
        with open(path, "rb") as stream:  # our handle, closed even when np.load fails
            loaded = np.load(stream, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise UserError(
                    f"{path} holds a single array, not an .npz archive; save with np.savez"
                )
            with loaded:
                return list(loaded.files)
    except READ_ERRORS as error:
        raise UserError(f"could not read {path} as an .npz file: {error}") from None


def _read_part(path: Path, images_key: str, labels_key: str | None, name: str) -> ImageSet:
    try:
        with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as archive:
            images = archive[images_key]
            labels = archive[labels_key] if labels_key else None
            names = archive["class_names"] if "class_names" in archive.files else None
            all_labels = [archive[key] for key in ("y_train", "y_test") if key in archive.files]
    except READ_ERRORS as error:
        raise UserError(
            f"could not read {path}: {error}; the file is damaged or truncated"
        ) from None
    images = images_to_nchw(images, f"{path}[{images_key}]")
    class_names = _class_names(path, names, all_labels)
    if labels is not None:
        labels = _check_labels(labels, len(images), len(class_names), f"{path}[{labels_key}]")
    return image_set_from_arrays(images, labels, class_names, name)


def _class_names(path: Path, names: np.ndarray | None, labels: list[np.ndarray]) -> list[str]:
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise UserError(f"{path}[class_names] should be a 1-d array of strings")
        return [str(name) for name in names.astype(str)]
    count = max((int(part.max()) + 1 for part in labels if part.size), default=0)
    return [str(index) for index in range(count)]


def _check_labels(labels: np.ndarray, count: int, num_classes: int, source: str) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != count:
        raise UserError(
            f"{source} has shape {labels.shape}; expected one label per image ({count})"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source} holds {labels.dtype}; labels must be integers")
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise UserError(f"{source} has labels outside 0..{num_classes - 1}")
    return labels.astype(np.int64)
