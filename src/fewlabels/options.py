"""Options declared once, as dataclass fields, and parsed from text as a user expects.

A method's ``Config`` and the :class:`~fewlabels.engine.recipe.TrainingRecipe` declare their
fields with :func:`option`: the default, a one-line help and, where the command-line flag
should not be the field's name, the flag. The CLI turns every field into a flag; this module
turns a flag's text into the field's type:

- ``bool``: ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (``--symmetric false``);
- ``tuple[float, float]`` and other tuples: comma-separated (``--global-crop-scale 0.4,1``);
- ``X | None``: ``none`` (any case) gives ``None``, anything else an ``X``;
- ``Literal["a", "b"]``: one of the listed values;
- ``int``, ``float``, ``str``.

It imports nothing of ours, so methods, the engine and the CLI can all use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def option(default: Any, help_text: str, *, flag: str | None = None) -> Any:
    """A dataclass field with a one-line ``help_text`` and an optional command-line ``flag``
    name (without dashes; default: the field's name with ``-`` for ``_``)."""
    metadata = {"help": help_text}
    if flag is not None:
        metadata["flag"] = flag
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for a sequence default, so configs stay immutable")
    return dataclasses.field(default=default, metadata=metadata)


def field_flag(field: dataclasses.Field) -> str:
    """The flag of a field, with its dashes: ``--global-crop-scale``."""
    return "--" + field.metadata.get("flag", field.name.replace("_", "-"))


def field_types(config_class: type) -> dict[str, Any]:
    """The resolved type of every field of a dataclass (string annotations evaluated)."""
    return typing.get_type_hints(config_class, include_extras=False)


def describe_type(kind: Any) -> str:
    """A short name of a field type for help texts: ``FLOAT,FLOAT``, ``true|false``."""
    origin, arguments = get_origin(kind), get_args(kind)
    if kind is bool:
        return "true|false"
    if origin is Literal:
        return "|".join(str(a) for a in arguments)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in arguments if a is not type(None)]
        return describe_type(inner[0]) + "|none" if len(inner) == 1 else "VALUE"
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return f"{describe_type(arguments[0])},..."
        return ",".join(describe_type(a) for a in arguments)
    return getattr(kind, "__name__", str(kind)).upper()


def parse_text(kind: Any, text: str) -> Any:
    """``text`` as a value of type ``kind``; raises ``ValueError`` with a short reason."""
    origin, arguments = get_origin(kind), get_args(kind)
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{text!r} is not true or false")
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in arguments if a is not type(None)]
        if type(None) in arguments and text.lower() == "none":
            return None
        if len(inner) != 1:
            raise ValueError(f"cannot parse {text!r} as {kind}")
        return parse_text(inner[0], text)
    if origin is Literal:
        if text not in [str(a) for a in arguments]:
            raise ValueError(f"{text!r} is not one of {', '.join(str(a) for a in arguments)}")
        return next(a for a in arguments if str(a) == text)
    if origin is tuple:
        parts = [part for part in text.split(",") if part.strip()]
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(parse_text(arguments[0], part) for part in parts)
        if len(parts) != len(arguments):
            raise ValueError(f"{text!r} needs {len(arguments)} comma-separated values")
        return tuple(parse_text(a, part) for a, part in zip(arguments, parts, strict=True))
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if kind is str:
        return text
    raise ValueError(f"options of type {kind} cannot be given on the command line")


def parser_for(kind: Any) -> Callable[[str], Any]:
    """An argparse ``type=`` callable for ``kind`` whose errors argparse reports in one line."""
    import argparse

    def parse(text: str) -> Any:
        try:
            return parse_text(kind, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = describe_type(kind)
    return parse


def format_value(value: Any) -> str:
    """A value as a user would type it: ``0.4,1.0``, ``true``, ``none``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)


def to_plain(value: Any) -> Any:
    """A JSON-friendly copy (tuples become lists) for run specs."""
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    return value


def from_plain(config_class: type, values: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from stored values (lists back to tuples, unknown keys
    refused by the dataclass itself)."""
    kinds = field_types(config_class)
    converted = {}
    for key, value in values.items():
        kind = kinds.get(key)
        if isinstance(value, list) and kind is not None and _is_tuple(kind):
            value = tuple(value)
        converted[key] = value
    return config_class(**converted)


def _is_tuple(kind: Any) -> bool:
    origin = get_origin(kind)
    if origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in get_args(kind))
    return False
