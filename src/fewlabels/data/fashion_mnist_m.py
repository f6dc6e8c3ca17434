"""fashion-mnist-m: Fashion-MNIST blended over patches of colour photographs, as MNIST-M.

Ganin & Lempitsky (ICML 2015, section 4.1) made MNIST-M by blending each MNIST digit over a
random patch of a BSDS500 photograph: ``out = |patch - digit|`` per colour channel, so the
background keeps the photo's colours and texture and the item shows in inverted photo
colours. fashion-mnist-m does the same to every Fashion-MNIST item (60,000 train and
10,000 test, labels unchanged) with 28×28 patches cut at full resolution from photographs
that Python packages ship, so it needs no download:

- scikit-image's sample photographs inside its wheel (``skimage/data``): ``astronaut.png``,
  ``chelsea.png``, ``coffee.png``, ``rocket.jpg``, ``motorcycle_left.png``;
- matplotlib's ``mpl-data/sample_data/grace_hopper.jpg`` (matplotlib is a dependency).

(The wheel's other colour images are a colour wheel, micrographs, a retina and a Hubble
field, mostly black; its greyscale ones would add no colour.) The photographs are 300 to 741
px on a side, the scale of BSDS500's 481×321, so patches are cut without resizing, as
MNIST-M's were. The files are read with Pillow straight from the installed packages
(scikit-image itself is not imported) and checked against the SHA-256 in
:data:`PHOTOGRAPHS`; scikit-image comes with ``pip install 'fewlabels[colour]'``.

Each image draws a photograph uniformly and a patch position uniformly over the positions
where it fits, from NumPy's PCG64 seeded with ``(seed, 0)`` for the train part and
``(seed, 1)`` for the test part, three numbers per image in order, so a part's images do
not depend on the other part, and its first ``k`` images not on the images after them.
The spec ``fashion-mnist-m`` is built with seed :data:`DATASET_SEED` from the Fashion-MNIST
that :func:`~fewlabels.data.fashion_mnist.locate_fashion_mnist` finds, once (2 to 5 s for
the 70,000 images on 2 busy CPU cores), and cached as ``fashion-mnist-m-seed0-v1.npz``
(uncompressed, 165 MB) in ``$XDG_CACHE_HOME/fewlabels/fashion-mnist-m/`` with a JSON
beside it recording the seed, the photographs and their hashes, the source and a hash of
the built arrays. Both files are written atomically; a cache whose JSON does not match
this module's recipe is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewlabels.atomic import atomic_output, atomic_write_text
from fewlabels.data.bundle import DatasetParts
from fewlabels.data.fashion_mnist import cache_directory as fashion_mnist_cache
from fewlabels.data.fashion_mnist import locate_fashion_mnist
from fewlabels.data.idx import FASHION_MNIST_CLASSES, open_idx_dataset
from fewlabels.data.imageset import ImageSet
from fewlabels.data.npz import open_npz_dataset
from fewlabels.errors import UserError

NAME = "fashion-mnist-m"
DATASET_SEED = 0
FORMAT_VERSION = 1
PATCH_SIZE = 28
INSTALL_HINT = "pip install 'fewlabels[colour]' (or pip install scikit-image)"


@dataclass(frozen=True)
class Photograph:
    """A photograph shipped inside an installed package: ``package``'s folder / ``folder``
    / ``file``, with the SHA-256 of the file."""

    package: str
    folder: str
    file: str
    sha256: str

    def path(self) -> Path | None:
        """Where the installed package keeps the file (``None`` if the package is missing).
        The package is found, not imported."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / self.folder / self.file


PHOTOGRAPHS = (
    Photograph("skimage", "data", "astronaut.png",
               "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    Photograph("skimage", "data", "chelsea.png",
               "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    Photograph("skimage", "data", "coffee.png",
               "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    Photograph("skimage", "data", "rocket.jpg",
               "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    Photograph("skimage", "data", "motorcycle_left.png",
               "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    Photograph("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg",
               "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
)


def read_photographs(photographs: tuple[Photograph, ...] = PHOTOGRAPHS) -> list[np.ndarray]:
    """The photographs as uint8 ``[H, W, 3]`` arrays, each checked against its hash.
    Raises :class:`UserError` (one line, saying what to install) when one is missing or
    differs."""
    from PIL import Image  # Pillow is a dependency; imported here, as only this needs it

    arrays = []
    for photo in photographs:
        path = photo.path()
        if path is None or not path.is_file():
            raise UserError(f"{NAME} is built from photographs that {photo.package} ships "
                            f"({photo.file} not found); install them: {INSTALL_HINT}")
        content = path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        if digest != photo.sha256:
            raise UserError(f"{path} has SHA-256 {digest[:12]}..., not the {photo.sha256[:12]}... "
                            f"{NAME} is built from; install scikit-image 0.26: "
                            "pip install 'scikit-image==0.26.*'")
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return arrays


def blend(items: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """MNIST-M's blend: ``|patch - item|`` per channel. ``items`` uint8 ``[N, H, W]`` (grey),
    ``patches`` uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 3, H, W]``."""
    items = items[:, None]  # [N, 1, H, W], against every channel
    return np.maximum(patches, items) - np.minimum(patches, items)  # |a - b| without overflow


def draw_patches(count: int, photos: list[np.ndarray], rng: np.random.Generator,
                 size: int = PATCH_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``count`` images: a photograph index (uniform) and the top-left corner
    ``(top, left)`` of a ``size``² patch (uniform over the positions where it fits), from
    three uniform numbers per image, so the first images' draws do not depend on ``count``."""
    heights = np.array([photo.shape[0] for photo in photos])
    widths = np.array([photo.shape[1] for photo in photos])
    if (heights < size).any() or (widths < size).any():
        raise ValueError(f"every photograph must be at least {size} px on a side")
    uniform = rng.random((count, 3))  # one row per image: the first k rows of any count agree
    which = np.minimum(np.floor(uniform[:, 0] * len(photos)), len(photos) - 1).astype(np.int64)
    top = np.floor(uniform[:, 1] * (heights[which] - size + 1)).astype(np.int64)
    left = np.floor(uniform[:, 2] * (widths[which] - size + 1)).astype(np.int64)
    return which, top, left


def cut_patches(photos: list[np.ndarray], which: np.ndarray, top: np.ndarray,
                left: np.ndarray, size: int = PATCH_SIZE, chunk: int = 8192) -> np.ndarray:
    """The patches ``photos[which][top:top+size, left:left+size]`` channels first: uint8
    ``[N, 3, size, size]``, gathered from the photographs stacked into one padded array (no
    loop over images)."""
    height = max(photo.shape[0] for photo in photos)
    width = max(photo.shape[1] for photo in photos)
    stacked = np.zeros((len(photos), 3, height, width), dtype=np.uint8)
    for index, photo in enumerate(photos):
        stacked[index, :, : photo.shape[0], : photo.shape[1]] = photo.transpose(2, 0, 1)
    pixels = stacked.reshape(-1)  # [P * 3 * height * width]
    offsets = np.arange(size)
    channels = np.arange(3)[None, :, None, None]  # [1, 3, 1, 1]
    patches = np.empty((len(which), 3, size, size), dtype=np.uint8)
    for start in range(0, len(which), chunk):
        part = slice(start, start + chunk)
        plane = which[part, None, None, None] * 3 + channels  # [n, 3, 1, 1]
        rows = top[part, None, None, None] + offsets[None, None, :, None]  # [n, 1, size, 1]
        cols = left[part, None, None, None] + offsets[None, None, None, :]  # [n, 1, 1, size]
        patches[part] = pixels[(plane * height + rows) * width + cols]  # [n, 3, size, size]
    return patches


def make_part(items: np.ndarray, photos: list[np.ndarray], seed: int, part: int) -> np.ndarray:
    """One part of fashion-mnist-m: grey items uint8 ``[N, 28, 28]`` -> ``[N, 3, 28, 28]``,
    drawn from PCG64 seeded with ``(seed, part)``."""
    rng = np.random.default_rng([seed, part])
    which, top, left = draw_patches(len(items), photos, rng, items.shape[-1])
    return blend(items, cut_patches(photos, which, top, left, items.shape[-1]))


def build_arrays(train: ImageSet, test: ImageSet, photos: list[np.ndarray],
                 seed: int) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``,
    ``class_names``) from grey Fashion-MNIST parts; labels are copied unchanged."""
    arrays: dict[str, np.ndarray] = {}
    for index, (key, part) in enumerate((("train", train), ("test", test))):
        if part.channels != 1 or part.labels is None:
            raise ValueError(f"{NAME} is built from labelled grey images, got {part.name}")
        arrays[f"x_{key}"] = make_part(part.images[:, 0].numpy(), photos, seed, index)
        arrays[f"y_{key}"] = part.labels.numpy().astype(np.int64)
    arrays["class_names"] = np.array(train.class_names)
    return arrays


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the images and labels, in a fixed order."""
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def load_source() -> tuple[ImageSet, ImageSet, str]:
    """Fashion-MNIST's train and test parts, found or downloaded, and where they are."""
    directory = locate_fashion_mnist()
    parts = open_idx_dataset(directory, FASHION_MNIST_CLASSES, "fashion-mnist")
    assert parts.train is not None and parts.test is not None
    return parts.train(), parts.test(), str(directory)


def cache_directory() -> Path:
    """``$XDG_CACHE_HOME/fewlabels/fashion-mnist-m`` (beside Fashion-MNIST's own cache)."""
    return fashion_mnist_cache().parent / NAME


def recipe(seed: int) -> dict:
    """What identifies a build: the format, the seed, the blend and the photographs."""
    return {"format": NAME, "version": FORMAT_VERSION, "seed": seed, "patch_size": PATCH_SIZE,
            "blend": "|patch - item| per channel (MNIST-M, Ganin & Lempitsky 2015)",
            "photographs": [{"package": photo.package, "file": f"{photo.folder}/{photo.file}",
                             "sha256": photo.sha256} for photo in PHOTOGRAPHS]}


def cached_paths(seed: int, directory: Path | None = None) -> tuple[Path, Path]:
    """The ``.npz`` and its ``.json`` for ``seed``."""
    directory = directory or cache_directory()
    stem = f"{NAME}-seed{seed}-v{FORMAT_VERSION}"
    return directory / f"{stem}.npz", directory / f"{stem}.json"


def ensure_built(seed: int = DATASET_SEED, directory: Path | None = None) -> Path:
    """The cached ``.npz`` of fashion-mnist-m for ``seed``, built first if it is missing or
    was built by another recipe."""
    npz_path, json_path = cached_paths(seed, directory)
    if npz_path.is_file() and json_path.is_file():
        try:
            stored = json.loads(json_path.read_text())
        except (OSError, ValueError):
            stored = {}
        if stored.get("recipe") == recipe(seed):
            return npz_path
    photos = read_photographs()
    train, test, location = load_source()
    started = time.perf_counter()
    arrays = build_arrays(train, test, photos, seed)
    seconds = time.perf_counter() - started
    try:
        with atomic_output(npz_path) as stream:
            np.savez(stream, **arrays)
        description = {
            "recipe": recipe(seed),
            "photograph_sizes": {photo.file: list(array.shape[:2])
                                 for photo, array in zip(PHOTOGRAPHS, photos, strict=True)},
            "source": location, "images": {"train": len(train), "test": len(test)},
            "arrays_sha256": arrays_digest(arrays), "build_seconds": round(seconds, 2),
        }
        atomic_write_text(json_path, json.dumps(description, indent=2) + "\n")
    except OSError as error:
        raise UserError(f"could not write {NAME} to {npz_path.parent}: {error}; "
                        "set XDG_CACHE_HOME to a writable folder") from None
    return npz_path


def open_fashion_mnist_m() -> DatasetParts:
    """The parts of the ``fashion-mnist-m`` spec (built and cached on first use)."""
    return open_npz_dataset(ensure_built(), NAME)
