"""`fewlabels embed`: one feature row per image of a dataset part, as a float32 ``.npy`` file.

Rows follow the order ``load_dataset(DATA)`` gives. For image folders the file names of the
rows go next to it (``FILE.names.txt``, one path per line relative to the folder), so features
can be joined to files; images are resized to the network's size as ``fewlabels evaluate``
resizes them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from fewlabels.atomic import atomic_output, atomic_write_text
from fewlabels.commands.arguments import (
    add_accelerator_option,
    add_on_corrupt_option,
    positive_int,
)
from fewlabels.commands.evaluate import evaluation_device
from fewlabels.commands.export import load_network
from fewlabels.data import load_dataset, parse_spec
from fewlabels.data.bundle import PART_NAMES
from fewlabels.data.folder import ImageFolder
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError
from fewlabels.evaluate import extract_features


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "embed", help="features of every image of a dataset, as a .npy file",
        description="Write one float32 feature row per image of a dataset part, in the "
                    "dataset's order, from a run folder or a file of fewlabels export. For "
                    "image folders the rows' file names go to FILE.names.txt.")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder (or checkpoint.pt) of fewlabels pretrain, or a file "
                             "of fewlabels export")
    parser.add_argument("--data", default=None,
                        help="dataset: fashion-mnist, fashion-mnist-sample, mnist:PATH, "
                             "cifar10:PATH, cifar100:PATH, stl10:PATH, folder:PATH, npz:PATH "
                             "(default: the data the network was pretrained on)")
    parser.add_argument("--out", required=True, help="the .npy file to write")
    parser.add_argument("--part", choices=list(PART_NAMES), default="train",
                        help="which part of the dataset to embed (default train)")
    parser.add_argument("--representation", default=None,
                        help="which network of a run, e.g. backbone or teacher (default: the "
                             "one the run declares)")
    parser.add_argument("--batch-size", type=positive_int, default=512,
                        help="images per forward pass (default 512)")
    add_on_corrupt_option(parser, "skip it (its row and name are left out)")
    add_accelerator_option(parser, "for feature extraction")


def names_path(out: Path) -> Path:
    """Where the file names of ``out``'s rows go: ``x.npy`` -> ``x.names.txt``."""
    return out.with_suffix(".names.txt") if out.suffix == ".npy" else Path(f"{out}.names.txt")


def folder_file_names(spec: str, part: str, images: ImageSet, image_size: int,
                      on_corrupt: str) -> list[str] | None:
    """The file of every row of a folder dataset's ``part`` (paths relative to the folder,
    ``/``-separated), or ``None`` for data whose images have no files.

    The folder reader keeps no names, so the folder is scanned again (a directory listing,
    in the reader's order); only when it skipped unreadable images are the part's files
    decoded again, to leave out the same ones.
    """
    kind, path = parse_spec(spec)
    if kind.name != "folder" or path is None:
        return None
    folder = ImageFolder(path, image_size, on_corrupt, images.name)
    files = folder.parts[part].files if part in folder.parts else []
    if len(files) != len(images):
        # the reader skipped unreadable files: the same decoder tells which
        files = [file for file in files if not isinstance(folder._decode(file), str)]  # noqa: SLF001
    if len(files) != len(images):
        raise UserError(f"the files of {spec} changed while it was read ({len(files)} files, "
                        f"{len(images)} images); run fewlabels embed again")
    return [file.relative_to(path).as_posix() for file in files]


def run(args: Any) -> np.ndarray:
    loaded = load_network(args.checkpoint, args.representation)
    spec = args.data or loaded.data_spec
    if not spec:
        raise UserError(f"{args.checkpoint} does not say what data it was pretrained on; "
                        "give --data")
    preprocessing = loaded.preprocessing
    _say(f"embedding with {loaded.description}, representation {loaded.representation}")
    bundle = load_dataset(spec, image_size=preprocessing.image_size, on_corrupt=args.on_corrupt)
    images: ImageSet | None = getattr(bundle, args.part)
    if images is None:
        available = ", ".join(bundle.parts()) or "none"
        raise UserError(f"{spec} has no {args.part} part; choose --part from: {available}")
    if images.channels != preprocessing.channels:
        raise UserError(f"{spec} has {images.channels}-channel images but the network takes "
                        f"{preprocessing.channels}-channel images; embed data like it")
    features = extract_features(
        loaded.network, images.images, preprocessing.mean, preprocessing.std,
        batch_size=args.batch_size, device=evaluation_device(args.accelerator),
    ).numpy().astype(np.float32, copy=False)
    names = folder_file_names(spec, args.part, images, preprocessing.image_size,
                              args.on_corrupt)

    out = Path(args.out)
    with atomic_output(out) as stream:
        np.save(stream, features)
    line = (f"wrote {features.shape[0]} rows of {features.shape[1]} float32 features "
            f"({spec}, {args.part}) to {out}")
    if names is not None:
        atomic_write_text(names_path(out), "".join(f"{name}\n" for name in names))
        line += f", their file names to {names_path(out)}"
    print(line)
    return features


def _say(message: str) -> None:
    """Progress lines go to stderr, so stdout holds only what was written."""
    print(f"  {message}", file=sys.stderr, flush=True)
