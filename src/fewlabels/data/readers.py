"""Dataset specs -> :class:`DataBundle`: the ``DATASETS`` registry and :func:`load_dataset`.

A spec is ``KIND`` or ``KIND:PATH`` (``~`` is expanded). The kinds, with the form each
wants, are registered in :data:`DATASETS`; ``fewlabels list datasets`` prints them. Each
kind's reader lives in a module of its own (``idx``, ``cifar``, ``stl10``, ``folder``,
``npz``) and returns :class:`DatasetParts`; this module only resolves the spec.

Example::

    bundle = load_dataset("cifar10:~/data/cifar-10-batches-py")
    bundle.train.images.shape   # torch.Size([50000, 3, 32, 32]), read on first access
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from fewlabels.data.bundle import DataBundle, DatasetParts
from fewlabels.data.cifar import open_cifar_dataset
from fewlabels.data.fashion_mnist import locate_fashion_mnist, sample_path
from fewlabels.data.fashion_mnist_m import open_fashion_mnist_m
from fewlabels.data.folder import CORRUPT_CHOICES, open_image_folder
from fewlabels.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, open_idx_dataset
from fewlabels.data.npz import open_npz_dataset
from fewlabels.data.stl10 import open_stl10_dataset
from fewlabels.errors import UserError
from fewlabels.registry import Registry


class PathRule(Enum):
    """Whether a dataset kind takes a ``:PATH``."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


@dataclass(frozen=True)
class ReadOptions:
    """What the caller asked for, passed to every reader (most use none of it)."""

    image_size: int | None
    on_corrupt: str


@dataclass(frozen=True)
class DatasetKind:
    """A kind of dataset: its name, whether it takes a path, and how to open it.

    ``open(path, options)`` returns the parts and the bundle's display name.
    """

    name: str
    path_rule: PathRule
    open: Callable[[Path | None, ReadOptions], tuple[DatasetParts, str]]

    def form(self) -> str:
        """How a spec of this kind is written, e.g. ``cifar10:PATH``."""
        return {
            PathRule.REQUIRED: f"{self.name}:PATH",
            PathRule.OPTIONAL: f"{self.name}[:PATH]",
            PathRule.NONE: self.name,
        }[self.path_rule]


DATASETS: Registry[DatasetKind] = Registry("dataset")


def _register(name: str, path_rule: PathRule, description: str):
    """Register the decorated ``open`` function as the dataset kind ``name``."""

    def add(open_kind: Callable[[Path | None, ReadOptions], tuple[DatasetParts, str]]):
        kind = DatasetKind(name, path_rule, open_kind)
        DATASETS.register(name, f"{kind.form()}  {description}")(kind)
        return open_kind

    return add


@_register("fashion-mnist", PathRule.OPTIONAL,
           "Fashion-MNIST, 28x28 clothes, 10 classes: found locally, downloaded, or IDX in PATH")
def _open_fashion_mnist(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    directory = path if path is not None else locate_fashion_mnist()
    return open_idx_dataset(directory, FASHION_MNIST_CLASSES, "fashion-mnist"), "fashion-mnist"


@_register("fashion-mnist-sample", PathRule.NONE,
           "6000 train + 1000 test Fashion-MNIST images, stratified; ships with fewlabels")
def _open_fashion_mnist_sample(
    path: Path | None, options: ReadOptions
) -> tuple[DatasetParts, str]:
    return open_npz_dataset(sample_path(), "fashion-mnist-sample"), "fashion-mnist-sample"


@_register("fashion-mnist-m", PathRule.NONE,
           "Fashion-MNIST over colour photo patches, 3x28x28 (as MNIST-M); built once, cached")
def _open_fashion_mnist_m(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    return open_fashion_mnist_m(), "fashion-mnist-m"


@_register("mnist", PathRule.REQUIRED,
           "MNIST digits, IDX files (train-images-idx3-ubyte[.gz], ...) in PATH")
def _open_mnist(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    assert path is not None
    return open_idx_dataset(path, MNIST_CLASSES, "mnist"), "mnist"


@_register("cifar10", PathRule.REQUIRED,
           "CIFAR-10 python pickle batches (cifar-10-batches-py, its parent or the .tar.gz)")
def _open_cifar10(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    assert path is not None
    return open_cifar_dataset(path, "cifar10"), "cifar10"


@_register("cifar100", PathRule.REQUIRED,
           "CIFAR-100 python pickles, fine labels (cifar-100-python, its parent or the .tar.gz)")
def _open_cifar100(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    assert path is not None
    return open_cifar_dataset(path, "cifar100"), "cifar100"


@_register("stl10", PathRule.REQUIRED,
           "STL-10 binary (stl10_binary or its parent): 5k train, 8k test, 100k unlabeled")
def _open_stl10(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    assert path is not None
    return open_stl10_dataset(path), "stl10"


@_register("folder", PathRule.REQUIRED,
           "image files: PATH/train[/CLASS]/*, PATH/CLASS/* or PATH/* (jpg, png, webp)")
def _open_folder(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    assert path is not None
    name = path.resolve().name or "folder"
    return open_image_folder(path, options.image_size, options.on_corrupt, name), name


@_register("npz", PathRule.REQUIRED,
           "NumPy .npz with x_train, y_train, optional x_test, y_test, x_unlabeled, class_names")
def _open_npz(path: Path | None, options: ReadOptions) -> tuple[DatasetParts, str]:
    assert path is not None
    return open_npz_dataset(path, path.stem), path.stem


def parse_spec(spec: str) -> tuple[DatasetKind, Path | None]:
    """The kind named by ``spec`` and its path (``None`` when there is none)."""
    kind_name, _, path_text = spec.strip().partition(":")
    kind = DATASETS.get(kind_name.strip())
    path = Path(path_text).expanduser() if path_text else None
    if path is None and kind.path_rule is PathRule.REQUIRED:
        raise UserError(f"{kind.name} needs a path: {kind.form()}")
    if path is not None and kind.path_rule is PathRule.NONE:
        raise UserError(f"{kind.name} takes no path: write just {kind.name}")
    return kind, path


def load_dataset(
    spec: str, *, image_size: int | None = None, on_corrupt: str = "skip"
) -> DataBundle:
    """Open the dataset named by ``spec``; its parts are read on first access.

    ``image_size``: side of the square images returned; ``None`` keeps the dataset's own
    size (32 for image folders, whose files have no common size). ``on_corrupt``: what an
    image folder does with unreadable files, ``"skip"`` (count them in ``bundle.skipped``)
    or ``"error"``. Raises :class:`UserError` for an unknown kind, a missing or malformed
    file, or a spec without the path its kind needs.
    """
    if on_corrupt not in CORRUPT_CHOICES:
        raise UserError(f"on_corrupt must be one of {', '.join(CORRUPT_CHOICES)}, "
                        f"got {on_corrupt!r}")
    if image_size is not None and image_size < 1:
        raise UserError(f"image size must be a positive number of pixels, got {image_size}")
    kind, path = parse_spec(spec)
    parts, name = kind.open(path, ReadOptions(image_size, on_corrupt))
    return DataBundle(name, spec, parts, image_size)
