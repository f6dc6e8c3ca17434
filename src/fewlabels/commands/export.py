"""`fewlabels export`: a run's evaluated network alone, as a safetensors file with its
architecture, preprocessing and origin (see :mod:`fewlabels.models.export`).

Also the loader that ``embed`` and ``attention`` share: a run folder, its checkpoint file, or
an exported file, each giving the network with its preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import fewlabels
from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.errors import UserError
from fewlabels.evaluate import file_digest
from fewlabels.models.export import (
    Preprocessing,
    is_safetensors_file,
    load_backbone,
    save_backbone,
)
from fewlabels.runs import PretrainedRun, describe, load_pretrained


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "export", help="write a run's backbone alone, with its preprocessing (safetensors)",
        description="Write the network a run evaluates as a safetensors file under the "
                    "backbone's own key names, with its architecture, preprocessing, feature "
                    "size and origin in the metadata. Load it with "
                    "fewlabels.models.load_backbone(FILE), strictly.")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder (or checkpoint.pt) made by fewlabels pretrain")
    parser.add_argument("--out", required=True,
                        help="file to write, e.g. backbone.safetensors")
    parser.add_argument("--representation", default=None,
                        help="which network of the run to export, e.g. backbone or teacher "
                             "(default: the one the run declares, as its paper does)")


def preprocessing_of(pretrained: PretrainedRun) -> Preprocessing:
    """The preprocessing a run's network was trained with: its image size and channels,
    and the pixel statistics of its pretraining images."""
    info = pretrained.data
    return Preprocessing(info.image_size, info.channels, tuple(info.mean), tuple(info.std))


def run(args: Any) -> Path:
    out = Path(args.out)
    source_file = checkpoint_path(args.checkpoint)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name, e.g. "
                        f"{out / 'backbone.safetensors'}")
    if out.exists() and source_file.exists() and out.resolve() == source_file.resolve():
        raise UserError(f"--out {out} is the run's checkpoint; give another file name")
    pretrained = load_pretrained(args.checkpoint, args.representation)
    checkpoint = pretrained.checkpoint
    spec = checkpoint["run"]
    source = {
        "method": spec["method"],
        "representation": pretrained.representation,
        "step": checkpoint["step"],
        "checkpoint_sha256": file_digest(source_file),
        "data": spec["data"]["spec"],
        "fewlabels_version": fewlabels.__version__,
    }
    path = save_backbone(pretrained.network, out, architecture=spec["backbone"],
                         preprocessing=preprocessing_of(pretrained), source=source)
    tensors = len(pretrained.network.state_dict())
    print(f"exported the {pretrained.representation} of {describe(checkpoint)} "
          f"({tensors} tensors, {getattr(pretrained.network, 'feature_dim', '?')} features) "
          f"to {path}")
    return path


@dataclass
class LoadedNetwork:
    """A network to run on images, from a run or an export: the network (eval mode), its
    preprocessing, which representation it is, one line saying what it is, and the data it
    was pretrained on (a dataset spec, or ``None`` when unknown)."""

    network: nn.Module
    preprocessing: Preprocessing
    representation: str
    description: str
    data_spec: str | None


def load_network(location: str | Path, representation: str | None = None) -> LoadedNetwork:
    """The network of a run folder, a checkpoint file or a ``fewlabels export`` file.

    An export holds one network; asking it for another representation is a
    :class:`UserError`.
    """
    location = Path(location)
    if is_safetensors_file(location):
        exported = load_backbone(location)
        stored = str(exported.source.get("representation", "backbone"))
        if representation is not None and representation != stored:
            raise UserError(f"{location} holds only the {stored} of its run; --representation "
                            f"{representation} needs the run folder")
        source = exported.source
        what = (f"{source.get('method', 'a')} export {location.name}, "
                f"backbone {exported.architecture['name']}, step {source.get('step', '?')}")
        return LoadedNetwork(exported.network, exported.preprocessing, stored, what,
                             source.get("data"))
    pretrained = load_pretrained(location, representation)
    return LoadedNetwork(pretrained.network, preprocessing_of(pretrained),
                         pretrained.representation, describe(pretrained.checkpoint),
                         pretrained.checkpoint["run"]["data"]["spec"])
