"""IDX files, the format of MNIST and Fashion-MNIST, plain or gzipped.

An IDX file starts with a 4-byte magic number: two zero bytes, a type code and the number
of dimensions; then one big-endian uint32 per dimension; then the values, row-major. A
dataset directory holds four of them::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

(``train-images.idx3-ubyte``, with a dot, is accepted too, as some mirrors spell it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewlabels.data.bundle import DatasetParts, image_set_from_arrays
from fewlabels.data.files import read_file_bytes, require_exists
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError

# type code -> element type (IDX values are big-endian)
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# part -> (images file, labels file), without the ".gz"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def parse_idx(content: bytes, source: str = "IDX data") -> np.ndarray:
    """The array stored in the IDX bytes ``content`` (native byte order)."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in IDX_TYPES:
        raise UserError(f"{source} is not an IDX file (bad magic number {content[:4].hex()})")
    dtype, ndim = IDX_TYPES[content[2]], content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise UserError(f"{source} is truncated: its header is incomplete")
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", ndim, offset=4))
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(content) != expected:
        raise UserError(
            f"{source} has {len(content)} bytes, but its header {shape} says {expected}; "
            "the file is damaged or truncated, download it again"
        )
    values = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # a writable copy in native order


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """The file for ``stem`` in ``directory``, gzipped or not, or ``None``."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def has_idx_files(directory: Path) -> bool:
    """Whether ``directory`` holds all four IDX files."""
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    return directory.is_dir() and all(find_idx_file(directory, stem) for stem in stems)


def read_idx_part(
    images_path: Path, labels_path: Path, class_names: list[str], name: str
) -> ImageSet:
    """Images (``[N, 28, 28]`` uint8) and labels (``[N]``) of one part, checked to match."""
    images = parse_idx(read_file_bytes(images_path, "IDX images"), str(images_path))
    labels = parse_idx(read_file_bytes(labels_path, "IDX labels"), str(labels_path))
    if images.dtype != np.uint8 or images.ndim != 3:
        raise UserError(f"{images_path} should hold uint8 images [N, H, W], got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(
            f"{labels_path} has {labels.shape} labels for {len(images)} images in "
            f"{images_path}; the two files do not belong together"
        )
    if labels.size and not 0 <= labels.min() <= labels.max() < len(class_names):
        raise UserError(f"{labels_path} has labels outside 0..{len(class_names) - 1}")
    return image_set_from_arrays(images[:, None], labels.astype(np.int64), class_names, name)


def open_idx_dataset(directory: Path, class_names: list[str], name: str) -> DatasetParts:
    """The train and test parts of an IDX dataset directory (read on first access)."""
    require_exists(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; give the folder with the IDX files")
    found: dict[str, tuple[Path, Path]] = {}
    for part, stems in IDX_FILES.items():
        paths = [find_idx_file(directory, stem) for stem in stems]
        missing = [stem for stem, path in zip(stems, paths, strict=True) if path is None]
        if missing:
            raise UserError(
                f"no {missing[0]}[.gz] in {directory}; an IDX dataset folder holds "
                + ", ".join(f"{stem}[.gz]" for pair in IDX_FILES.values() for stem in pair)
            )
        found[part] = (paths[0], paths[1])  # type: ignore[assignment]

    def loader(part: str):
        images_path, labels_path = found[part]
        return lambda: read_idx_part(images_path, labels_path, class_names, f"{name}/{part}")

    return DatasetParts(train=loader("train"), test=loader("test"), location=str(directory))
