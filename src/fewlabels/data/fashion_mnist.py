"""Fashion-MNIST without a path: find the four IDX files on this machine, or download them.

Search order (the first folder holding all four files wins):

1. ``$FEWLABELS_DATA`` itself, then ``$FEWLABELS_DATA/fashion-mnist``;
2. the user cache, ``$XDG_CACHE_HOME/fewlabels/fashion-mnist`` (default
   ``~/.cache/fewlabels/fashion-mnist``);
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package).

Otherwise the files are downloaded from Zalando's server into the user cache. Each download
is checked against the MD5 published with the dataset, and the files are only written (to a
temporary name, then renamed) once all four have passed, so the cache never holds a partial or
corrupt copy. Debian's files are recompressed copies of the same data (their gzip header
differs), so found files are checked by parsing, not by checksum.

For tests, :data:`DOWNLOAD_URL`, :data:`SYSTEM_DIRECTORIES` and :func:`fetch_url` are module
attributes that can be monkeypatched.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from fewlabels.atomic import atomic_write_bytes
from fewlabels.data.idx import has_idx_files
from fewlabels.errors import UserError

logger = logging.getLogger(__name__)

DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIRECTORIES = (Path("/usr/share/datasets/fashion-mnist"),)
DOWNLOAD_TIMEOUT_SECONDS = 60

# MD5 of the .gz files as published by Zalando (they are also what torchvision checks).
FILE_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SAMPLE_FILE = "fashion_mnist_sample.npz"


def fetch_url(url: str) -> bytes:
    """The body of ``url`` (raises ``OSError`` subclasses on network failures)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        return response.read()


def cache_directory() -> Path:
    """Where downloaded Fashion-MNIST files are kept."""
    cache_root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_root) / "fewlabels" / "fashion-mnist"


def candidate_directories() -> list[Path]:
    """The folders searched for the four IDX files, in order."""
    candidates = []
    if data_root := os.environ.get("FEWLABELS_DATA"):
        candidates += [Path(data_root), Path(data_root) / "fashion-mnist"]
    candidates.append(cache_directory())
    candidates += list(SYSTEM_DIRECTORIES)
    return candidates


def locate_fashion_mnist() -> Path:
    """A folder with the four Fashion-MNIST IDX files, downloading them if none is found."""
    candidates = candidate_directories()
    for directory in candidates:
        if has_idx_files(directory):
            return directory
    try:
        return download_fashion_mnist(cache_directory())
    except UserError as error:
        raise UserError(_not_found_message(candidates, reason=str(error))) from None


def download_fashion_mnist(
    directory: Path,
    base_url: str | None = None,
    fetch: Callable[[str], bytes] | None = None,
) -> Path:
    """Download the four files into ``directory``, checking their MD5 first.

    ``base_url`` and ``fetch`` default to :data:`DOWNLOAD_URL` and :func:`fetch_url`,
    looked up at call time so that tests can replace them.
    """
    base_url = base_url or DOWNLOAD_URL
    fetch = fetch or fetch_url
    contents: dict[str, bytes] = {}
    for file_name, expected_md5 in FILE_MD5.items():
        url = base_url.rstrip("/") + "/" + file_name
        logger.info("downloading %s", url)
        try:
            content = fetch(url)
        except (OSError, http.client.HTTPException) as error:  # includes URLError, timeouts
            raise UserError(f"could not download {url}: {error}") from None
        actual_md5 = hashlib.md5(content).hexdigest()
        if actual_md5 != expected_md5:
            raise UserError(
                f"{url} has MD5 {actual_md5}, expected {expected_md5}; the download is "
                "damaged or the server sent something else"
            )
        contents[file_name] = content
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, content in contents.items():
            atomic_write_bytes(directory / file_name, content)
    except OSError as error:
        raise UserError(f"could not write the download to {directory}: {error}") from None
    return directory


def sample_path() -> Path:
    """The Fashion-MNIST sample shipped in the package (6000 train and 1000 test images,
    stratified; made by ``scripts/make_fashion_mnist_sample.py``)."""
    sample = resources.files("fewlabels.data") / "samples" / SAMPLE_FILE
    if not isinstance(sample, Path) or not sample.is_file():
        raise UserError(
            f"the Fashion-MNIST sample is missing from the installed package ({sample}); "
            "reinstall fewlabels"
        )
    return sample


def _not_found_message(searched: list[Path], reason: str) -> str:
    return (
        "Fashion-MNIST not found in " + ", ".join(str(path) for path in searched)
        + f", and the download failed ({reason}). Fix: apt-get install dataset-fashion-mnist, "
        "or set FEWLABELS_DATA to a folder with the four IDX files, "
        "or use fashion-mnist-sample"
    )
