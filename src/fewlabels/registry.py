"""Name -> factory registries for methods, backbones and datasets.

A registry lists its valid names in the error it raises for an unknown one, so the CLI can
print it as is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fewlabels.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects (usually factories), filled by a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._summaries: dict[str, str] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            doc = summary or (getattr(entry, "__doc__", None) or "").strip().split("\n")[0]
            self._summaries[name] = doc
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries))
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: {valid}")
        return self._entries[name]

    def summary(self, name: str) -> str:
        return self._summaries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
