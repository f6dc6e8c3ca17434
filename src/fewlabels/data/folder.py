"""Folders of image files (jpg, jpeg, png, webp; any case), decoded with Pillow.

Three layouts are recognised, in this order:

1. ``PATH/train`` exists: the parts are ``PATH/train``, ``PATH/test`` (optional) and
   ``PATH/unlabeled`` (optional, labels ignored). ``train`` and ``test`` are each either
   class folders (labeled) or loose images (no labels).
2. ``PATH`` has class folders (``PATH/cat/*.jpg``, ``PATH/dog/*.jpg``): a labeled train part,
   no test part.
3. ``PATH`` holds loose images: a train part **without labels** (``labels is None``), no
   test part. (A flat folder is the training data itself, so it sits in ``.train``, not
   ``.unlabeled``; ``.unlabeled`` only holds extra images next to a train part.)

Class names are the class folder names of train and test together, sorted; images inside a
class folder may sit in subfolders. Files and folders are sorted, so the same folder always
gives the same order. Hidden files and folders (``.name``) are ignored.

Each part's ``ids`` are its images' file paths relative to ``PATH``, ``/``-separated
(``train/cat/001.png``), in the order of its images; skipped files have none.

Every image is cropped to a centred square (the largest that fits) and resized to
``image_size x image_size`` (default 32) with Pillow's bilinear filter, which antialiases
when shrinking; the crop keeps the aspect ratio instead of squashing the image. Images are
RGB, unless every image of the dataset is grayscale: then they have one channel.

The whole dataset is decoded the first time any part is accessed (decoding runs in a few
threads), so that every part has the same number of channels and the same class list.
Unreadable files are skipped and counted (``on_corrupt="skip"``, with one warning) or stop
the loading with a :class:`UserError` naming the file (``on_corrupt="error"``).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from fewlabels.data.bundle import DatasetParts, image_set_from_arrays
from fewlabels.data.files import require_exists
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_IMAGE_SIZE = 32
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L"}  # 16-bit grayscale PNGs open in one of these
CORRUPT_CHOICES = ("skip", "error")
# What Pillow raises for a file it cannot decode (DecompressionBombError is an Exception).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass
class FolderPart:
    """The files of one part, with a label per file (or ``None`` for unlabeled parts)."""

    files: list[Path]
    class_folders: list[str | None] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return bool(self.class_folders) and self.class_folders[0] is not None


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file with an image extension."""
    return (path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
            and path.is_file())


def _visible_children(directory: Path) -> list[Path]:
    return sorted(child for child in directory.iterdir() if not child.name.startswith("."))


def _images_below(directory: Path) -> list[Path]:
    """Image files anywhere below ``directory`` (skipping hidden folders), sorted."""
    found = []
    for root, folders, files in os.walk(directory):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found += [Path(root) / name for name in sorted(files) if is_image_file(Path(root) / name)]
    return found


def scan_part(directory: Path) -> FolderPart | None:
    """Class folders if ``directory`` has subfolders with images, else its loose images;
    ``None`` when it has no images at all."""
    children = _visible_children(directory)
    class_folders = {child.name: _images_below(child) for child in children if child.is_dir()}
    class_folders = {name: members for name, members in class_folders.items() if members}
    loose = [child for child in children if is_image_file(child)]
    if not class_folders:
        return FolderPart(loose, [None] * len(loose)) if loose else None
    if loose:
        warnings.warn(
            f"ignoring {len(loose)} images directly in {directory}, next to its class "
            "folders; move them into a class folder", stacklevel=3,
        )
    files: list[Path] = []
    classes: list[str | None] = []
    for name, members in class_folders.items():  # sorted, as children are
        files += members
        classes += [name] * len(members)
    return FolderPart(files, classes)


class ImageFolder:
    """An image folder dataset: finds the layout now, decodes the images when asked.

    ``on_corrupt`` is ``"skip"`` or ``"error"`` (checked by ``load_dataset``)."""

    def __init__(self, path: Path, image_size: int | None, on_corrupt: str, name: str) -> None:
        require_exists(path)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; folder:PATH wants a folder of images")
        self.path = path
        self.image_size = image_size or DEFAULT_IMAGE_SIZE
        self.on_corrupt = on_corrupt
        self.name = name
        self.skipped = 0
        self.parts = self._find_parts()
        if "train" not in self.parts:
            searched = path / "train" if (path / "train").is_dir() else path
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {searched}")

    def _find_parts(self) -> dict[str, FolderPart]:
        if not (self.path / "train").is_dir():
            part = scan_part(self.path)
            return {"train": part} if part else {}
        parts = {}
        for part_name in ("train", "test", "unlabeled"):
            if (self.path / part_name).is_dir():
                part = scan_part(self.path / part_name)
                if part_name == "unlabeled" and part:  # labels of extra images are ignored
                    part = FolderPart(part.files, [None] * len(part.files))
                if part:
                    parts[part_name] = part
        return parts

    def dataset_parts(self) -> DatasetParts:
        def loader(part: str):
            return (lambda: self.decoded[part]) if part in self.parts else None

        return DatasetParts(
            train=loader("train"),
            test=loader("test"),
            unlabeled=loader("unlabeled"),
            skipped=lambda: self.skipped,
            location=str(self.path),
        )

    @cached_property
    def decoded(self) -> dict[str, ImageSet]:
        """Every part, decoded (the first access does the work)."""
        class_names = sorted({folder for part in self.parts.values()
                              for folder in part.class_folders if folder is not None})
        class_index = {folder: index for index, folder in enumerate(class_names)}
        all_files = [file for part in self.parts.values() for file in part.files]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(self._decode, all_files))
        failures = [(file, result) for file, result in zip(all_files, results, strict=True)
                    if isinstance(result, str)]
        if failures:
            self._report_corrupt(failures)
        grayscale = all(result[1] for result in results if not isinstance(result, str))

        decoded, position = {}, 0
        for part_name, part in self.parts.items():
            part_results = results[position : position + len(part.files)]
            position += len(part.files)
            kept = [index for index, result in enumerate(part_results)
                    if not isinstance(result, str)]
            if not kept:
                raise UserError(f"none of the {len(part.files)} images of {self.path} "
                                f"({part_name}) could be read")
            pixels = np.stack([part_results[index][0] for index in kept])  # [N, H, W, 3]
            pixels = pixels[..., :1] if grayscale else pixels
            labels = None
            if part.labeled:
                labels = np.array([class_index[part.class_folders[index]] for index in kept])
            decoded[part_name] = image_set_from_arrays(
                np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), labels, class_names,
                f"{self.name}/{part_name}",
                ids=[part.files[index].relative_to(self.path).as_posix() for index in kept],
            )
        return decoded

    def _decode(self, path: Path) -> tuple[np.ndarray, bool] | str:
        """RGB pixels ``[S, S, 3]`` and whether the file was grayscale, or why it failed."""
        try:
            with Image.open(path) as image:
                grayscale = image.mode in GRAYSCALE_MODES
                square = _center_square(_as_rgb(image))
                resized = square.resize((self.image_size,) * 2, Image.Resampling.BILINEAR)
                return np.asarray(resized, dtype=np.uint8), grayscale
        except DECODE_ERRORS as error:
            return f"{type(error).__name__}: {error}"

    def _report_corrupt(self, failures: list[tuple[Path, str]]) -> None:
        first_file, first_reason = failures[0]
        if self.on_corrupt == "error":
            raise UserError(f"cannot read image {first_file} ({first_reason}); remove it, or "
                            "pass --on-corrupt skip to skip unreadable images")
        self.skipped += len(failures)
        warnings.warn(
            f"skipped {len(failures)} unreadable images in {self.path}, "
            f"e.g. {first_file} ({first_reason})", stacklevel=2,
        )


def _as_rgb(image: Image.Image) -> Image.Image:
    """``image`` in 8-bit RGB; 16-bit grayscale is scaled down, not clipped at 255."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _center_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def open_image_folder(
    path: Path, image_size: int | None, on_corrupt: str, name: str
) -> DatasetParts:
    """The parts of an image folder (see the module docstring for the layouts)."""
    return ImageFolder(path, image_size, on_corrupt, name).dataset_parts()
