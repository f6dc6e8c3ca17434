"""Base and novel classes: a seeded split of a labeled dataset's classes.

Few-shot evaluation asks how well a model recognises classes it never saw labels of. The
classes are split once into *base* classes (a method may train on their labels) and *novel*
classes (only a handful of labeled support images per episode, at test time). The split is
drawn with a CPU ``torch.Generator`` from the seed, so it is the same on every machine, and
it is stored as plain JSON with every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fewlabels.errors import UserError


@dataclass(frozen=True)
class ClassSplit:
    """Class indices (sorted) of the base and novel classes, with the class names and the
    seed the split was drawn from (``None``: chosen by hand)."""

    base: tuple[int, ...]
    novel: tuple[int, ...]
    class_names: tuple[str, ...]
    seed: int | None

    def __post_init__(self) -> None:
        if set(self.base) & set(self.novel):
            raise ValueError(f"base and novel classes overlap: {set(self.base) & set(self.novel)}")

    def names(self, classes: Sequence[int]) -> list[str]:
        return [self.class_names[index] for index in classes]

    def to_dict(self) -> dict[str, Any]:
        """The split as JSON-ready plain values (names alongside the indices, for readers)."""
        return {"base": list(self.base), "novel": list(self.novel),
                "base_names": self.names(self.base), "novel_names": self.names(self.novel),
                "class_names": list(self.class_names), "seed": self.seed}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ClassSplit:
        return cls(tuple(stored["base"]), tuple(stored["novel"]),
                   tuple(stored["class_names"]), stored.get("seed"))


def split_classes(class_names: Sequence[str], *, novel_count: int | None = None,
                  seed: int = 0) -> ClassSplit:
    """A seeded random split of the classes: ``novel_count`` novel classes (default half,
    rounded down), the rest base. The same seed gives the same split on every machine."""
    total = len(class_names)
    novel_count = total // 2 if novel_count is None else novel_count
    if total < 2:
        raise UserError(f"few-shot evaluation needs at least 2 classes, the data has {total}")
    if not 1 <= novel_count < total:
        raise UserError(f"--novel-count must be between 1 and {total - 1} (the data has "
                        f"{total} classes), got {novel_count}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.randperm(total, generator=generator).tolist()
    novel = tuple(sorted(order[:novel_count]))
    base = tuple(sorted(order[novel_count:]))
    return ClassSplit(base, novel, tuple(class_names), seed)


def chosen_split(class_names: Sequence[str], novel: Sequence[str]) -> ClassSplit:
    """The split with the given novel classes (names or indices), every other class base."""
    chosen: list[int] = []
    for item in novel:
        if item in class_names:
            chosen.append(list(class_names).index(item))
        elif item.isdigit() and int(item) < len(class_names):
            chosen.append(int(item))
        else:
            raise UserError(f"--novel-classes names an unknown class {item!r}; give class "
                            f"names or indices 0-{len(class_names) - 1} of: "
                            f"{', '.join(class_names)}")
    novel_set = sorted(set(chosen))
    if not 1 <= len(novel_set) < len(class_names):
        raise UserError(f"--novel-classes must leave at least one base class and name at "
                        f"least one novel class (the data has {len(class_names)})")
    base = tuple(index for index in range(len(class_names)) if index not in novel_set)
    return ClassSplit(base, tuple(novel_set), tuple(class_names), None)
