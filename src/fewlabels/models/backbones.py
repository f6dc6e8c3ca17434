"""The backbone registry and :func:`build_backbone`.

Every backbone maps images ``[N, C, H, W]`` to pooled features ``[N, feature_dim]`` (no
classifier) and has the attribute ``feature_dim``. ``width`` and ``depth`` mean what is natural for
each family (see the factory docstrings); other options are keyword arguments of the factory.
Options given as strings (from a command line) are converted to the type of their default.
Bad input raises :class:`~fewlabels.errors.UserError` with the valid range.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from fewlabels.errors import UserError
from fewlabels.models.convnet import ConvNet
from fewlabels.models.resnet import resnet18 as _resnet18
from fewlabels.models.resnet import resnet50 as _resnet50
from fewlabels.models.resnet import resnet_cifar
from fewlabels.models.vit import VisionTransformer, default_patch_size
from fewlabels.models.wide_resnet import WideResNet
from fewlabels.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def build_backbone(
    name: str,
    *,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    depth: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build the backbone registered as ``name`` for images of ``in_channels`` × ``image_size``².

    ``width``/``depth`` of ``None`` take the backbone's default. Unknown names, unknown options
    and options out of range raise :class:`UserError`.
    """
    factory = BACKBONES.get(name)
    _require(in_channels >= 1, f"in_channels must be >= 1, got {in_channels}")
    _require(image_size >= 1, f"image_size must be >= 1, got {image_size}")
    parameters = _option_parameters(factory)
    for key, value in list(options.items()):
        if key not in parameters:
            valid = ", ".join(parameters) or "none"
            raise UserError(f"unknown option {key!r} for backbone {name!r}; valid options: {valid}")
        options[key] = _coerce(name, key, value, parameters[key].default)
    return factory(
        in_channels=in_channels, image_size=image_size, width=width, depth=depth, **options
    )


# Each backbone's default (width, depth); None where the depth is fixed by the architecture.
# Run specs store the resolved values, so a checkpoint keeps loading if a default changes.
DEFAULT_SIZES: dict[str, tuple[int, int | None]] = {
    "convnet": (32, 3),
    "resnet": (16, 3),
    "resnet18": (64, None),
    "resnet50": (64, None),
    "wide-resnet": (2, 28),
    "vit": (192, 6),
}


def resolve_sizes(
    name: str, width: int | None, depth: int | None
) -> tuple[int | None, int | None]:
    """``(width, depth)`` of backbone ``name`` with ``None`` replaced by its default."""
    BACKBONES.get(name)  # an unknown name raises UserError listing the valid ones
    default_width, default_depth = DEFAULT_SIZES.get(name, (None, None))
    return (default_width if width is None else width,
            default_depth if depth is None else depth)


def resolve_options(name: str, options: dict[str, Any], image_size: int | None = None,
                    width: int | None = None) -> dict[str, Any]:
    """The options of backbone ``name`` (besides width and depth) with every one not given set
    to the factory's default; options whose default is ``None`` are left out unless given.
    Options whose default is a rule (the ViT's patch size and heads, 0 = automatic) are
    resolved to the values the rule gives for ``image_size`` and ``width``, so a stored spec
    keeps its network if a rule changes."""
    resolved = {key: parameter.default
                for key, parameter in _option_parameters(BACKBONES.get(name)).items()
                if parameter.default is not None}
    resolved |= {key: value for key, value in options.items() if value is not None}
    if name == "vit" and image_size is not None:
        width = resolve_sizes(name, width, None)[0]
        resolved["patch_size"] = resolved.get("patch_size") or default_patch_size(image_size)
        resolved["heads"] = resolved.get("heads") or default_heads(width)
    return resolved


# Options added after run specs were first stored, with the value that a stored spec lacking
# them implies (the network as it was built then), so that older checkpoints keep loading.
OPTIONS_BEFORE_THEY_EXISTED: dict[str, dict[str, Any]] = {
    "convnet": {"feature_dim": 0},
}


def stored_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options to rebuild a stored backbone with: ``options`` plus, for the options added
    since the spec was written, the values it was built with."""
    return OPTIONS_BEFORE_THEY_EXISTED.get(name, {}) | options


def _option_parameters(factory: Callable[..., nn.Module]) -> dict[str, inspect.Parameter]:
    """A factory's keyword options besides the shared ``in_channels``, ``image_size``,
    ``width`` and ``depth``."""
    return {key: parameter for key, parameter in inspect.signature(factory).parameters.items()
            if key not in ("in_channels", "image_size", "width", "depth")}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _coerce(backbone: str, key: str, value: Any, default: Any) -> Any:
    """Convert a string option to the type of its default (int, float, bool)."""
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return type(default)(value)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[type(default)]
        message = f"option {key!r} of backbone {backbone!r} must be {kind}, got {value!r}"
        raise UserError(message) from None


def _range(option: str, value: int, low: int, high: int, backbone: str) -> None:
    _require(
        low <= value <= high,
        f"{backbone} {option} must be between {low} and {high}, got {value}",
    )


@BACKBONES.register(
    "convnet", "VGG-style ConvNet for 28-32 px on a CPU (space-to-depth stem, 512 features)")
def convnet(
    *,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    depth: int | None = None,
    space_to_depth: int = 2,
    feature_dim: int = 512,
) -> nn.Module:
    """width: channels of the first stage (default 32); depth: stages (default 3);
    feature_dim: channels of the 1×1 feature layer after the last stage (0 = none).

    Measured with ``bench/backbone_speed.py`` on machine A of docs/benchmarks.md (2 cores,
    batch 512, 1×28×28, fwd+bwd+SGD, no feature layer): width 32 (128 features, 0.29M
    parameters) ~3,500-3,900 images/s; width 48 ~1,600-1,800; width 64 ~900-1,000. The default
    feature layer (512 features, 0.35M parameters) costs about 10% of a SimCLR step.
    """
    width, depth = resolve_sizes("convnet", width, depth)
    _range("width", width, 1, 4096, "convnet")
    _range("space_to_depth", space_to_depth, 1, 8, "convnet")
    _require(
        image_size % space_to_depth == 0,
        f"convnet space_to_depth {space_to_depth} must divide the image size {image_size}",
    )
    max_depth = math.ceil(math.log2(image_size // space_to_depth)) + 1
    _range("depth", depth, 1, max_depth, "convnet")
    _range("feature_dim", feature_dim, 0, 1 << 16, "convnet")
    return ConvNet(in_channels, width, depth, space_to_depth, feature_dim)


@BACKBONES.register("resnet", "small CIFAR ResNet (3 stages of BasicBlocks; ResNet-20 = 16 x 3)")
def resnet(
    *,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    depth: int | None = None,
    zero_init_residual: bool = False,
    space_to_depth: int = 1,
) -> nn.Module:
    """width: channels of the first stage (default 16); depth: blocks per stage (default 3)."""
    width, depth = resolve_sizes("resnet", width, depth)
    _range("width", width, 1, 4096, "resnet")
    _range("depth", depth, 1, 50, "resnet")
    _range("space_to_depth", space_to_depth, 1, 8, "resnet")
    _require(
        image_size % space_to_depth == 0,
        f"resnet space_to_depth {space_to_depth} must divide the image size {image_size}",
    )
    return resnet_cifar(
        in_channels,
        width,
        depth,
        zero_init_residual=zero_init_residual,
        space_to_depth=space_to_depth,
    )


def _fixed_depth(name: str, depth: int | None) -> None:
    _require(
        depth is None,
        f"{name} has a fixed depth; leave depth unset, or use 'resnet' for a selectable depth",
    )


@BACKBONES.register("resnet18", "ResNet-18 with the CIFAR stem (11.2M parameters, 512 features)")
def resnet18(
    *,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    depth: int | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """width: base width (default 64, stages 64-512)."""
    _fixed_depth("resnet18", depth)
    width, _ = resolve_sizes("resnet18", width, None)
    _range("width", width, 1, 4096, "resnet18")
    return _resnet18(in_channels, width, zero_init_residual)


@BACKBONES.register("resnet50", "ResNet-50 with the CIFAR stem (23.5M parameters, 2048 features)")
def resnet50(
    *,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    depth: int | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """width: base width (default 64, bottleneck outputs 256-2048)."""
    _fixed_depth("resnet50", depth)
    width, _ = resolve_sizes("resnet50", width, None)
    _range("width", width, 1, 4096, "resnet50")
    return _resnet50(in_channels, width, zero_init_residual)


@BACKBONES.register("wide-resnet", "pre-activation Wide ResNet, WRN-28-2 by default (FixMatch)")
def wide_resnet(
    *,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    depth: int | None = None,
    dropout: float = 0.0,
    negative_slope: float = 0.0,
    bn_momentum: float = 0.1,
) -> nn.Module:
    """width: widen factor k (default 2); depth: total depth 6n + 4 (default 28)."""
    width, depth = resolve_sizes("wide-resnet", width, depth)
    _range("width (widen factor)", width, 1, 64, "wide-resnet")
    _require(
        depth >= 10 and (depth - 4) % 6 == 0,
        f"wide-resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}",
    )
    _require(0 <= dropout < 1, f"wide-resnet dropout must be in [0, 1), got {dropout}")
    _require(negative_slope >= 0, f"wide-resnet negative_slope must be >= 0, got {negative_slope}")
    _require(0 < bn_momentum <= 1, f"wide-resnet bn_momentum must be in (0, 1], got {bn_momentum}")
    return WideResNet(in_channels, depth, width, dropout, negative_slope, bn_momentum)


def default_heads(width: int) -> int:
    """The ViT's heads when not given: width / 64 when width is a multiple of 64, else 1."""
    return width // 64 if width % 64 == 0 else 1


@BACKBONES.register("vit", "Vision Transformer (CLS token, pre-norm, sin-cos positions)")
def vit(
    *,
    in_channels: int,
    image_size: int,
    width: int | None = None,
    depth: int | None = None,
    patch_size: int = 0,
    heads: int = 0,
    mlp_ratio: float = 4.0,
    position_embedding: str = "sincos",
) -> nn.Module:
    """width: embedding dim (default 192); depth: blocks (default 6).

    patch_size 0 picks the divisor of the image size nearest to size / 8 (4 for 28 and 32 px);
    heads 0 picks width / 64 when width is a multiple of 64, else 1 (3 heads for 192).
    """
    width, depth = resolve_sizes("vit", width, depth)
    patch_size = patch_size or default_patch_size(image_size)
    heads = heads or default_heads(width)
    _range("width", width, 1, 8192, "vit")
    _range("depth", depth, 1, 64, "vit")
    _range("heads", heads, 1, width, "vit")
    _range("patch_size", patch_size, 1, image_size, "vit")
    _require(
        image_size % patch_size == 0,
        f"vit patch_size {patch_size} must divide the image size {image_size}; "
        f"choose one of {[p for p in range(1, image_size + 1) if image_size % p == 0]}",
    )
    _require(width % heads == 0, f"vit width {width} must be divisible by heads {heads}")
    _require(mlp_ratio > 0, f"vit mlp_ratio must be > 0, got {mlp_ratio}")
    _require(
        position_embedding in ("sincos", "learned"),
        f"vit position_embedding must be 'sincos' or 'learned', got {position_embedding!r}",
    )
    _require(
        position_embedding == "learned" or width % 4 == 0,
        f"vit width {width} must be divisible by 4 for sin-cos position embeddings",
    )
    return VisionTransformer(
        image_size, in_channels, patch_size, width, depth, heads, mlp_ratio, position_embedding
    )
