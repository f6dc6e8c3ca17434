"""CIFAR-10 and CIFAR-100, "python version": pickled batches of 32x32 RGB images.

``PATH`` may be the extracted folder (``cifar-10-batches-py`` or ``cifar-100-python``), the
folder that contains it, or the ``.tar.gz`` archive as downloaded (read in place, not
extracted). Each batch is a pickled dict with ``data`` (uint8 ``[N, 3072]``: 1024 red, 1024
green, 1024 blue values, each a row-major 32x32 plane) and the labels; CIFAR-100 keeps its
fine labels (100 classes), not the coarse ones.

Unpickling can run arbitrary code, so batches are read with :class:`RestrictedUnpickler`,
which only rebuilds NumPy arrays and refuses every other global.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewlabels.data.bundle import DatasetParts, image_set_from_arrays
from fewlabels.data.files import find_dataset_directory, read_file_bytes, require_exists
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its images, labels and class names."""

    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    labels_key: str
    names_key: str


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{index}" for index in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    labels_key="labels",
    names_key="label_names",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    labels_key="fine_labels",
    names_key="fine_label_names",
)

# (module, name) pairs a CIFAR pickle may refer to: what NumPy needs to rebuild an array, and
# the bytes constructor of pickles that Python 3 wrote with protocol 2
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays, lists, dicts, numbers and strings, and
    refuses every other global (which is how a pickle would run code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "_codecs":
            return _latin1_bytes
        # numpy 2 moved numpy.core to numpy._core; import the current home directly
        home = module.replace("numpy.core", "numpy._core")
        return getattr(__import__(home, fromlist=[name]), name)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What ``_codecs.encode`` does in a protocol-2 pickle of bytes, limited to latin1."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing to encode with {encoding!r} in a data file")
    return text.encode("latin1")


def unpickle_batch(content: bytes, source: str) -> dict[str, Any]:
    """The dict in a CIFAR batch file, with its keys as ``str``."""
    try:
        loaded = RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except Exception as error:  # a damaged pickle can fail in many ways; all mean "corrupt"
        raise UserError(f"could not read {source} as a CIFAR batch: {error}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{source} is not a CIFAR batch (it holds a {type(loaded).__name__})")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value
            for key, value in loaded.items()}


class CifarFiles:
    """Reads named batch files from a folder or from the downloaded archive."""

    def __init__(self, path: Path, layout: CifarLayout, kind: str) -> None:
        self.layout = layout
        self.kind = kind
        self.archive: Path | None = None
        self.folder: Path | None = None
        require_exists(path)
        if path.is_file():
            if not _is_tar_archive(path):
                raise UserError(f"{path} is not a tar archive; {kind}:PATH wants the "
                                f"{layout.folder} folder, its parent or {layout.archive}")
            self.archive = path
        else:
            self.folder = find_dataset_directory(path, layout.meta_file, (layout.folder,))
            if self.folder is None and (path / layout.archive).is_file():
                self.archive = path / layout.archive
        if self.folder is None and self.archive is None:
            raise UserError(
                f"no {layout.meta_file} in {path} or {path / layout.folder}; {kind}:PATH wants "
                f"the {layout.folder} folder, its parent or {layout.archive}"
            )
        if self.folder is not None:
            for file_name in (*layout.train_files, *layout.test_files):
                if not (self.folder / file_name).is_file():
                    raise UserError(f"no {file_name} in {self.folder} (expected the {kind} "
                                    f"batches {', '.join(layout.train_files + layout.test_files)})")

    @property
    def location(self) -> str:
        return str(self.folder or self.archive)

    def read(self, file_names: tuple[str, ...]) -> list[dict[str, Any]]:
        """The unpickled batches ``file_names``, in that order."""
        if self.folder is not None:
            contents = {name: read_file_bytes(self.folder / name, f"a {self.kind} batch")
                        for name in file_names}
        else:
            contents = self._read_from_archive(file_names)
        return [unpickle_batch(contents[name], f"{self.location}: {name}") for name in file_names]

    def _read_from_archive(self, file_names: tuple[str, ...]) -> dict[str, bytes]:
        assert self.archive is not None
        wanted = set(file_names)
        contents: dict[str, bytes] = {}
        try:
            with tarfile.open(self.archive, "r:*") as archive:
                for member in archive:  # one pass through the compressed stream
                    base_name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base_name in wanted and base_name not in contents:
                        contents[base_name] = archive.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            reason = "not a tar archive" if isinstance(error, tarfile.ReadError) else error
            raise UserError(
                f"could not read {self.archive} ({reason}); give the "
                f"{self.layout.archive} archive or the extracted {self.layout.folder} folder"
            ) from None
        missing = sorted(wanted - contents.keys())
        if missing:
            raise UserError(f"{self.archive} has no {missing[0]}; is it the {self.kind} archive "
                            f"({self.layout.archive})?")
        return contents


def open_cifar_dataset(path: Path, kind: str) -> DatasetParts:
    """The train and test parts of CIFAR-10 (``kind="cifar10"``) or CIFAR-100."""
    layout = CIFAR10 if kind == "cifar10" else CIFAR100
    files = CifarFiles(path, layout, kind)

    def loader(part: str, file_names: tuple[str, ...]):
        return lambda: _read_part(files, file_names, f"{kind}/{part}")

    return DatasetParts(
        train=loader("train", layout.train_files),
        test=loader("test", layout.test_files),
        location=files.location,
    )


def _read_part(files: CifarFiles, file_names: tuple[str, ...], name: str) -> ImageSet:
    layout = files.layout
    meta, *batches = files.read((layout.meta_file, *file_names))  # one pass over an archive
    if layout.names_key not in meta:
        raise UserError(f"{files.location}: {layout.meta_file} has no {layout.names_key}; "
                        f"is this {files.kind}?")
    class_names = [_as_text(class_name) for class_name in meta[layout.names_key]]
    images, labels = [], []
    for file_name, batch in zip(file_names, batches, strict=True):
        source = f"{files.location}: {file_name}"
        data, batch_labels = batch.get("data"), batch.get(layout.labels_key)
        if not isinstance(data, np.ndarray) or batch_labels is None:
            raise UserError(f"{source} lacks data or {layout.labels_key}; is this {files.kind}?")
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{source} holds {data.dtype} {data.shape}, expected uint8 [N, 3072]")
        try:
            batch_labels = np.asarray(batch_labels, dtype=np.int64)
        except (TypeError, ValueError):
            raise UserError(f"{source} has labels that are not integers") from None
        if batch_labels.shape != (len(data),):
            raise UserError(f"{source} has {batch_labels.size} labels for {len(data)} images")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    all_labels = np.concatenate(labels)
    if all_labels.size and not 0 <= all_labels.min() <= all_labels.max() < len(class_names):
        raise UserError(f"{files.location} has labels outside 0..{len(class_names) - 1}")
    return image_set_from_arrays(np.concatenate(images), all_labels, class_names, name)


def _is_tar_archive(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, zlib.error):
        return False


def _as_text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
