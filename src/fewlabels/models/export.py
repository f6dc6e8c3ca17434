"""A backbone on its own, as a safetensors file that says how to build it and feed it.

A run's checkpoint holds the whole method (heads, teacher, queues) under the method's own key
names. Taking a backbone out of such a checkpoint by stripping ``backbone.`` or ``teacher.``
prefixes by hand is how other libraries' users ended up evaluating a random network (a wrong
prefix, loaded non-strictly: open-mmlab/mmselfsup#330 in the field notes). An export holds
only the evaluated network, under the backbone's own key names, and is loaded **strictly**: a
missing, extra or misshapen tensor is an error, never a random layer.

The file is plain safetensors (no pickle, so loading it runs no code). Its metadata, every
value a JSON string, is:

- ``format``: ``"fewlabels-backbone"``, and ``format_version``: ``"1"``;
- ``architecture``: the backbone spec, ``{"name", "width", "depth", "options"}`` with every
  option the network was built with (what :func:`~fewlabels.models.build_backbone` takes,
  besides the input shape);
- ``preprocessing``: ``{"image_size", "channels", "mean", "std", "pixel_range": [0, 1],
  "resize"}``: images are scaled to [0, 1], resized to ``image_size``² and standardised with
  the per-channel ``mean`` and ``std``;
- ``feature_dim``: the length of a feature vector;
- ``input_conversion`` (only when the network takes a conversion of the images, format
  version 2): ``"lightness"``: the standardised RGB images go to their CIE lightness, then
  ``(L - 50) / 50`` in every channel (:class:`~fewlabels.models.lightness.LightnessBackbone`,
  a colorization run's representation); ``load_backbone`` wraps the backbone in it, so
  ``network`` still takes the standardised images;
- ``source``: where it came from, e.g. ``{"method", "representation", "step",
  "checkpoint_sha256", "data", "fewlabels_version"}``.

Usage::

    import torch
    from fewlabels.models import load_backbone

    backbone = load_backbone("simclr.safetensors")     # eval mode, weights loaded strictly
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)   # [N, C, H, W]
    with torch.no_grad():
        features = backbone.network(backbone.preprocess(images))   # [8, feature_dim]
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.atomic import atomic_write_bytes
from fewlabels.errors import UserError
from fewlabels.models.backbones import build_backbone, stored_options
from fewlabels.models.lightness import LightnessBackbone

EXPORT_FORMAT = "fewlabels-backbone"
EXPORT_FORMAT_VERSION = 2  # 2: ``input_conversion``; files without one are written as 1
# Wrappers that convert the images before the backbone, by their ``input_conversion`` name:
# an export holds the backbone alone and records the name; loading wraps it again.
INPUT_CONVERSIONS: dict[str, type[nn.Module]] = {"lightness": LightnessBackbone}
RESIZE = "bilinear, antialiased, rounded to uint8 (as load_dataset resizes)"

__all__ = ["EXPORT_FORMAT", "ExportedBackbone", "Preprocessing", "is_safetensors_file",
           "load_backbone", "save_backbone"]


@dataclass(frozen=True)
class Preprocessing:
    """How images must look to the network: ``channels`` × ``image_size``², pixels scaled to
    [0, 1] and standardised per channel with ``mean`` and ``std`` (the statistics of the
    pretraining images)."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"preprocessing wants {self.channels} means and stds, got "
                             f"{len(self.mean)} and {len(self.std)}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[N, C, H, W]`` (0..255) -> normalised float32 ``[N, C, S, S]``.

        Square images of another side are first resized to ``image_size`` the way
        :func:`fewlabels.data.load_dataset` resizes (bilinear, antialiased, rounded back to
        uint8), so features match ``fewlabels embed`` exactly; crop other shapes to a square
        first. A float batch is taken to be in [0, 1] already and is not resized.
        """
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"the network wants images [N, {self.channels}, H, W], got "
                             f"{tuple(images.shape)}")
        height, width = images.shape[-2:]
        if images.is_floating_point():
            if (height, width) != (self.image_size, self.image_size):
                raise ValueError(f"float images must be {self.image_size}x{self.image_size} "
                                 f"already, got {height}x{width}; pass uint8 images to resize")
            batch = images.to(torch.float32)
        else:
            if images.dtype != torch.uint8:
                raise ValueError(f"expected uint8 or float images, got {images.dtype}")
            if (height, width) != (self.image_size, self.image_size):
                if height != width:
                    raise ValueError(f"images must be square to be resized, got {height}x"
                                     f"{width}; crop them to a square first")
                images = _resize_uint8(images, self.image_size)
            batch = images.to(torch.float32).div_(255.0)
        mean = torch.as_tensor(self.mean, dtype=batch.dtype, device=batch.device)
        std = torch.as_tensor(self.std, dtype=batch.dtype, device=batch.device)
        # the same operations, in the same order, as fewlabels.evaluate.extract_features
        return batch.sub_(mean.reshape(1, -1, 1, 1)).div_(std.reshape(1, -1, 1, 1))

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std), "pixel_range": [0, 1],
                "resize": RESIZE}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        return cls(int(values["image_size"]), int(values["channels"]),
                   tuple(float(v) for v in values["mean"]),
                   tuple(float(v) for v in values["std"]))


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """``fewlabels.data.bundle.resize_images`` for one batch (models do not import data)."""
    block = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return block.round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class ExportedBackbone:
    """A loaded export: the ``network`` (eval mode, mapping preprocessed images to
    ``[N, feature_dim]``), its ``preprocessing``, and the stored ``architecture`` and
    ``source``."""

    network: nn.Module
    preprocessing: Preprocessing
    architecture: dict[str, Any]
    feature_dim: int
    source: dict[str, Any] = field(default_factory=dict)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[N, C, H, W]`` -> the normalised float batch the network takes."""
        return self.preprocessing(images)


def build_from_spec(architecture: dict[str, Any], preprocessing: Preprocessing) -> nn.Module:
    """A fresh network of the stored architecture for the stored input shape."""
    name = architecture["name"]
    return build_backbone(
        name, in_channels=preprocessing.channels, image_size=preprocessing.image_size,
        width=architecture.get("width"), depth=architecture.get("depth"),
        **stored_options(name, architecture.get("options", {})),
    )


def _check_same_tensors(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
                        what: str, advice: str) -> None:
    """One-line :class:`UserError` unless ``given`` has exactly the keys and shapes of
    ``expected`` (what ``load_state_dict(strict=True)`` checks, said in one line)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshapen = sorted(key for key in set(expected) & set(given)
                       if tuple(expected[key].shape) != tuple(given[key].shape))
    problems = []
    for template, keys in (("{} missing {}", missing), ("{} unexpected {}", unexpected),
                           ("{} {} of the wrong shape", misshapen)):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            noun = "tensors" if len(keys) > 1 else "tensor"
            problems.append(f"{template.format(len(keys), noun)} ({keys[0]!r}{more})")
    if problems:
        raise UserError(f"{what} does not match its architecture: {'; '.join(problems)}; "
                        f"{advice}")


# Options whose stored value 0 means "chosen by the factory", with the attribute of the built
# network that holds the choice. An export stores the choice itself: a different number of
# heads would load without a shape error and silently compute something else.
_CHOSEN_BY_THE_FACTORY: dict[str, dict[str, str]] = {
    "vit": {"patch_size": "patch_size", "heads": "num_heads"},
}


def _complete_architecture(architecture: dict[str, Any], network: nn.Module) -> dict[str, Any]:
    """The spec with every option the network was built with: options added since the spec
    was written get the values it implies, and options left to the factory get its choice."""
    name = architecture["name"]
    options = stored_options(name, dict(architecture.get("options", {})))
    for option, attribute in _CHOSEN_BY_THE_FACTORY.get(name, {}).items():
        if not options.get(option) and hasattr(network, attribute):
            options[option] = int(getattr(network, attribute))
    return {"name": name, "width": architecture.get("width"),
            "depth": architecture.get("depth"), "options": options}


def _plain_tensors(network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state as CPU tensors that own their memory (safetensors refuses
    tensors that share storage)."""
    return {key: value.detach().to("cpu").contiguous().clone()
            for key, value in network.state_dict().items()}


def save_backbone(
    network: nn.Module,
    path: str | os.PathLike[str],
    *,
    architecture: dict[str, Any],
    preprocessing: Preprocessing,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``network`` alone to ``path`` as safetensors, atomically; returns the path.

    ``architecture`` is the backbone spec ``{"name", "width", "depth", "options"}`` (as runs
    store it); the network must be exactly what it builds (same tensor names and shapes),
    checked here so that every export loads. Key names are the network's own state-dict
    names. ``source`` says where the weights came from (any JSON-able values). A network
    with an ``input_conversion`` in :data:`INPUT_CONVERSIONS` (a wrapper whose ``backbone``
    is what ``architecture`` builds) is written as its backbone with the conversion's name.
    """
    conversion = getattr(network, "input_conversion", None)
    if conversion is not None:
        if conversion not in INPUT_CONVERSIONS:
            raise ValueError(f"unknown input conversion {conversion!r}")
        network = network.backbone
    architecture = _complete_architecture(architecture, network)
    tensors = _plain_tensors(network)
    fresh = build_from_spec(architecture, preprocessing)
    _check_same_tensors(fresh.state_dict(), tensors, f"the network to export to {path}",
                        "export a representation that is the backbone itself")
    feature_dim = int(getattr(network, "feature_dim", 0)) or _probe_feature_dim(
        network, preprocessing)
    metadata = {
        "format": EXPORT_FORMAT,
        "format_version": "2" if conversion is not None else "1",
        "architecture": json.dumps(architecture, sort_keys=True),
        "preprocessing": json.dumps(preprocessing.to_dict(), sort_keys=True),
        "feature_dim": json.dumps(feature_dim),
        "source": json.dumps(source or {}, sort_keys=True, default=str),
    }
    if conversion is not None:
        metadata["input_conversion"] = json.dumps(conversion)
    from safetensors.torch import save

    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


@torch.no_grad()
def _probe_feature_dim(network: nn.Module, preprocessing: Preprocessing) -> int:
    """The feature length of a network without a ``feature_dim`` attribute: one blank image
    through it in eval mode."""
    was_training = network.training
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    try:
        blank = torch.zeros(1, preprocessing.channels, preprocessing.image_size,
                            preprocessing.image_size, device=device)
        return int(network.eval()(blank).flatten(1).shape[1])
    finally:
        network.train(was_training)


def is_safetensors_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that starts like safetensors: an 8-byte little-endian
    header length that fits in the file, then a JSON object. Cheap: reads 9 bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(9)
    if len(start) < 9:
        return False
    header_length = struct.unpack("<Q", start[:8])[0]
    return 2 <= header_length <= size - 8 and start[8:9] == b"{"


def _metadata_value(metadata: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path} is a damaged fewlabels export: its {key!r} metadata is "
                        "missing or not JSON; export the run again") from None


def load_backbone(path: str | os.PathLike[str]) -> ExportedBackbone:
    """The network of a ``fewlabels export`` file, built from its metadata, weights loaded
    strictly, in eval mode, with its preprocessing::

        backbone = load_backbone("simclr.safetensors")
        with torch.no_grad():   # uint8 [N, C, H, W] -> float32 [N, backbone.feature_dim]
            features = backbone.network(backbone.preprocess(images_uint8))

    Raises :class:`UserError` (one line) for a file that is not a fewlabels export, one of a
    newer format, or one whose tensors do not match its architecture (a key renamed,
    missing or extra, a wrong shape).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"no file at {path}; give a file written by fewlabels export")
    not_export = (f"{path} is not a fewlabels export (a safetensors file written by "
                  "fewlabels export)")
    if not is_safetensors_file(path):
        raise UserError(not_export)
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != EXPORT_FORMAT:
            raise UserError(f"{not_export}: it has no {EXPORT_FORMAT!r} metadata")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{not_export}: {reason}") from None
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > EXPORT_FORMAT_VERSION:
        raise UserError(f"{path} is a fewlabels export of format {version!r}, newer than this "
                        f"fewlabels reads ({EXPORT_FORMAT_VERSION}); upgrade fewlabels")
    architecture = _metadata_value(metadata, "architecture", path)
    try:
        preprocessing = Preprocessing.from_dict(_metadata_value(metadata, "preprocessing", path))
        network = build_from_spec(architecture, preprocessing)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{path} is a damaged fewlabels export: its architecture or "
                        f"preprocessing cannot be read ({type(error).__name__}: {error}); "
                        "export the run again") from None
    _check_same_tensors(network.state_dict(), tensors, str(path),
                        "the file was changed or damaged; export the run again")
    network.load_state_dict(tensors, strict=True)
    if "input_conversion" in metadata:
        conversion = _metadata_value(metadata, "input_conversion", path)
        if conversion not in INPUT_CONVERSIONS:
            raise UserError(f"{path} feeds its network by the input conversion {conversion!r}, "
                            "which this fewlabels does not know; upgrade fewlabels")
        network = INPUT_CONVERSIONS[conversion](network, preprocessing.mean, preprocessing.std)
    return ExportedBackbone(
        network=network.eval(), preprocessing=preprocessing, architecture=architecture,
        feature_dim=int(_metadata_value(metadata, "feature_dim", path)),
        source=_metadata_value(metadata, "source", path),
    )

