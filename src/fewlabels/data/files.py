"""File helpers shared by the readers: every failure becomes a :class:`UserError` that names
the path and says what was expected there."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from fewlabels.errors import UserError


def require_exists(path: Path) -> Path:
    """``path`` itself, if something is there."""
    if not path.exists():
        raise UserError(f"no such file or directory: {path}")
    return path


def find_dataset_directory(path: Path, marker: str, folder_names: tuple[str, ...]) -> Path | None:
    """The directory holding ``marker``: ``path`` itself, or one of ``folder_names`` inside
    it (so a user may point at the extracted folder or at its parent)."""
    for candidate in (path, *(path / name for name in folder_names)):
        if (candidate / marker).is_file():
            return candidate
    return None


def read_file_bytes(path: Path, what: str) -> bytes:
    """The content of ``path``, decompressed when it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path} (expected {what})") from None
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(
            f"could not read {path} ({what}): {error}; the file is damaged or truncated, "
            "download it again"
        ) from None
