"""A run's description, and rebuilding its method and backbone from it.

A run spec is a plain dict stored in every checkpoint:
``{"method": name, "method_config": {...}, "backbone": {...}, "data": {...}}``, enough to
rebuild the model without the command line that made it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import load_checkpoint
from fewlabels.errors import UserError
from fewlabels.methods import METHODS, DataInfo, Method
from fewlabels.models import build_backbone
from fewlabels.models.backbones import resolve_options, resolve_sizes, stored_options
from fewlabels.options import from_plain, to_plain
from fewlabels.semi import SEMI_METHODS


def data_info(images: ImageSet, num_classes: int = 0) -> DataInfo:
    """Shape, normalisation statistics and number of the training images."""
    mean, std = images.channel_mean_std()
    height, width = images.image_size
    if height != width:
        raise UserError(f"images must be square, got {height}x{width}; resize them first")
    return DataInfo(images.channels, height, tuple(mean), tuple(std), num_classes, len(images))


def backbone_spec(name: str, width: int | None, depth: int | None,
                  image_size: int | None = None, **options: Any) -> dict:
    """The stored description of a backbone; width, depth and the options not given are
    resolved to their defaults (and rules, for ``image_size``), so the run keeps its network if
    a default changes."""
    width, depth = resolve_sizes(name, width, depth)
    return {"name": name, "width": width, "depth": depth,
            "options": resolve_options(name, options, image_size, width)}


def make_backbone(spec: dict[str, Any], data: DataInfo) -> nn.Module:
    """The backbone a stored spec describes (a spec older than one of its options gets the
    value that option had then)."""
    return build_backbone(
        spec["name"], in_channels=data.channels, image_size=data.image_size,
        width=spec.get("width"), depth=spec.get("depth"),
        **stored_options(spec["name"], spec.get("options", {})),
    )


def method_class(name: str) -> type[Method]:
    """A method by name: a self-supervised one (``METHODS``) or a classifier method
    (``SEMI_METHODS``)."""
    return SEMI_METHODS.get(name) if name in SEMI_METHODS else METHODS.get(name)


def method_config(method_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The method's config as stored in a run spec: its defaults with the given fields
    overridden (``None`` = default)."""
    config_class = method_class(method_name).Config
    known = {field.name for field in dataclasses.fields(config_class)}
    config = config_class(**{k: v for k, v in overrides.items() if k in known and v is not None})
    return {k: to_plain(v) for k, v in dataclasses.asdict(config).items()}


def build_method(run_spec: dict[str, Any]) -> Method:
    """The method of a run spec, freshly initialised."""
    data = DataInfo(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in run_spec["data"]["info"].items()})
    chosen = method_class(run_spec["method"])
    config = from_plain(chosen.Config, run_spec["method_config"])
    return chosen(make_backbone(run_spec["backbone"], data), config, data)


@dataclass
class PretrainedRun:
    """A trained run, loaded: the network it evaluates (eval mode), which one it is, the
    checkpoint and the data description."""

    network: nn.Module
    representation: str
    checkpoint: dict[str, Any]
    data: DataInfo


def load_method(run_dir: Path | str) -> tuple[Method, dict[str, Any]]:
    """The method of a run with its trained weights (loaded strictly), and the checkpoint."""
    checkpoint = load_checkpoint(run_dir)
    try:
        method = build_method(checkpoint["run"])
        method.load_state_dict(checkpoint["model"])
    except (KeyError, RuntimeError, TypeError) as error:
        raise UserError(f"the checkpoint in {run_dir} does not match its method and backbone "
                        f"({type(error).__name__}); it was made by another version") from error
    return method.eval(), checkpoint


def load_pretrained(run_dir: Path | str, representation: str | None = None) -> PretrainedRun:
    """The network a run evaluates: ``representation`` (a name among the method's
    ``representations()``), by default the one its run spec records (the method's
    ``default_representation``; ``backbone`` for runs made before it was recorded)."""
    method, checkpoint = load_method(run_dir)
    available = method.representations()
    name = representation or checkpoint["run"].get("representation", "backbone")
    if name not in available:
        raise UserError(f"{checkpoint['run']['method']} runs have no representation {name!r}; "
                        f"choose one of: {', '.join(available)}")
    return PretrainedRun(available[name].eval(), name, checkpoint, method.data)


def describe(checkpoint: dict[str, Any]) -> str:
    spec = checkpoint["run"]
    backbone = spec["backbone"]
    return (f"{spec['method']} on {spec['data']['spec']}, backbone {backbone['name']}, "
            f"step {checkpoint['step']}/{checkpoint['total_steps'] or checkpoint['step']}")

