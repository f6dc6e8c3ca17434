"""STL-10, binary version: 96x96 RGB images, 5000 labeled for training, 8000 for testing and
100,000 without labels.

``PATH`` is the ``stl10_binary`` folder or its parent. Files: ``train_X.bin``,
``train_y.bin``, ``test_X.bin``, ``test_y.bin``, ``unlabeled_X.bin`` (optional; without it
there is no unlabeled part) and ``class_names.txt`` (optional; the standard names are used
without it). Each image is stored as 3 planes of 96x96 bytes, each plane column by column
(Fortran order), so a plane read row-major comes out transposed and is transposed back.
Labels are bytes 1..10, shifted to 0..9.

The unlabeled part (2.7 GB) is memory-mapped: its tensor reads pages of the file as images
are indexed, instead of loading all of it. It is a strided view (the transpose), read-only in
effect: writes go to private copy-on-write pages, never to the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewlabels.data.bundle import DatasetParts, image_set_from_arrays
from fewlabels.data.files import find_dataset_directory, require_exists
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError

IMAGE_SHAPE = (3, 96, 96)
IMAGE_BYTES = 3 * 96 * 96
STL10_FOLDER = "stl10_binary"
STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]  # fmt: skip
REQUIRED_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def open_stl10_dataset(path: Path) -> DatasetParts:
    """The train, test and (when ``unlabeled_X.bin`` is there) unlabeled parts of STL-10."""
    require_exists(path)
    directory = find_dataset_directory(path, "train_X.bin", (STL10_FOLDER,))
    if directory is None:
        raise UserError(
            f"no train_X.bin in {path} or {path / STL10_FOLDER}; stl10:PATH wants the "
            f"{STL10_FOLDER} folder (with {', '.join(REQUIRED_FILES)}) or its parent"
        )
    for file_name in REQUIRED_FILES:
        if not (directory / file_name).is_file():
            raise UserError(f"no {file_name} in {directory} (STL-10 needs "
                            f"{', '.join(REQUIRED_FILES)})")

    def labeled(part: str):
        def load() -> ImageSet:
            class_names = read_class_names(directory)
            images = map_images(directory / f"{part}_X.bin")
            labels = read_labels(directory / f"{part}_y.bin", len(images), len(class_names))
            return image_set_from_arrays(np.ascontiguousarray(images), labels, class_names,
                                         f"stl10/{part}")

        return load

    def unlabeled() -> ImageSet:
        images = map_images(directory / "unlabeled_X.bin")
        return image_set_from_arrays(images, None, read_class_names(directory), "stl10/unlabeled")

    has_unlabeled = (directory / "unlabeled_X.bin").is_file()
    return DatasetParts(
        train=labeled("train"),
        test=labeled("test"),
        unlabeled=unlabeled if has_unlabeled else None,
        location=str(directory),
    )


def map_images(path: Path) -> np.ndarray:
    """The images of an STL-10 ``*_X.bin`` file as a memory-mapped uint8 ``[N, 3, H, W]``
    view (transposed from the file's column-major planes, not copied)."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(
            f"{path} has {size} bytes, not a whole number of 3x96x96 images; "
            "the file is damaged or truncated, download it again"
        )
    try:
        stored = np.memmap(path, np.uint8, mode="c", shape=(size // IMAGE_BYTES, *IMAGE_SHAPE))
    except OSError as error:
        raise UserError(f"could not read {path}: {error}") from None
    return stored.transpose(0, 1, 3, 2)  # [N, C, W, H] as stored -> [N, C, H, W]


def read_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    """Labels 0..9 from an STL-10 ``*_y.bin`` file (bytes 1..10), one per image."""
    try:
        stored = np.fromfile(path, np.uint8)
    except OSError as error:
        raise UserError(f"could not read {path}: {error}") from None
    if len(stored) != count:
        raise UserError(f"{path} has {len(stored)} labels for {count} images; "
                        "the files are damaged or do not belong together")
    if count and not 1 <= stored.min() <= stored.max() <= num_classes:
        raise UserError(f"{path} has labels outside 1..{num_classes}; the file is damaged")
    return stored.astype(np.int64) - 1


def read_class_names(directory: Path) -> list[str]:
    """The names in ``class_names.txt``, one a line, or the standard ten."""
    path = directory / "class_names.txt"
    if not path.is_file():
        return list(STL10_CLASSES)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"could not read {path}: {error}") from None
    return [name for name in names if name]
