"""Results of a label-efficiency evaluation: the data, a text table and JSON.

Accuracies are stored as fractions in [0, 1]; the table shows percentages. A cell's spread is
the sample standard deviation (``ddof=1``) over split seeds, 0 for a single seed. The
clustering protocol's results, when it ran, travel along (``Results.clusters``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from fewlabels.atomic import atomic_write_text
from fewlabels.evaluate.clusters import ClusterResults


def budget_label(labels_per_class: int | None) -> str:
    """``"10/class"`` for a budget of 10 labels per class, ``"all"`` for ``None``."""
    return "all" if labels_per_class is None else f"{labels_per_class}/class"


@dataclass
class Cell:
    """Accuracies of one representation under one protocol at one label budget, one value per
    split seed; ``details`` holds per-seed extras (chosen weight decay and how, k used, ...).

    ``labels_used_per_class`` and ``labels_used`` count the train labels the protocol
    actually read, per class and in total: the budget's, plus a validation part's when one
    was asked for (``None`` in results from before they were recorded). Per class is an int
    when every class has as many, else their mean.
    """

    representation: str
    protocol: str
    labels_per_class: int | None
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    labels_used_per_class: float | None = None
    labels_used: int | None = None

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (``ddof=1``); 0 for a single value."""
        if len(self.values) < 2:
            return 0.0 if self.values else math.nan
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "representation": self.representation,
            "protocol": self.protocol,
            "labels_per_class": self.labels_per_class,
            "budget": budget_label(self.labels_per_class),
            "mean": self.mean,
            "std": self.std,
            "seeds": list(self.seeds),
            "values": list(self.values),
            "details": list(self.details),
            "labels_used_per_class": self.labels_used_per_class,
            "labels_used": self.labels_used,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(
            data["representation"], data["protocol"], data["labels_per_class"],
            list(data["seeds"]), [float(v) for v in data["values"]], list(data["details"]),
            data.get("labels_used_per_class"), data.get("labels_used"),
        )


@dataclass
class Results:
    """All cells of an evaluation and the settings it ran with, and the clustering
    protocol's results when it ran."""

    cells: list[Cell] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    clusters: ClusterResults | None = None

    def cell(self, representation: str, protocol: str, labels_per_class: int | None) -> Cell:
        for cell in self.cells:
            if (cell.representation, cell.protocol, cell.labels_per_class) == (
                representation, protocol, labels_per_class,
            ):
                return cell
        raise KeyError((representation, protocol, labels_per_class))

    def rows(self) -> list[tuple[str, str]]:
        """(representation, protocol) pairs, in the order they were first added."""
        return list(dict.fromkeys((c.representation, c.protocol) for c in self.cells))

    def budgets(self) -> list[int | None]:
        """Budgets in increasing order, ``None`` ("all") last."""
        present = {c.labels_per_class for c in self.cells}
        numbers = sorted(b for b in present if b is not None)
        return [*numbers, None] if None in present else numbers

    def to_dict(self) -> dict[str, Any]:
        data = {"settings": self.settings, "cells": [cell.to_dict() for cell in self.cells]}
        if self.clusters is not None:
            data["clusters"] = self.clusters.to_dict()
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Results:
        data = json.loads(text)
        clusters = ClusterResults.from_dict(data["clusters"]) if "clusters" in data else None
        return cls([Cell.from_dict(c) for c in data["cells"]], dict(data["settings"]), clusters)

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` atomically (temporary file, then rename)."""
        atomic_write_text(path, self.to_json() + "\n")

    def table(self) -> str:
        return format_table(self)


def format_cell(cell: Cell | None) -> str:
    """``"78.3 ± 1.2"`` in percent; a single seed shows only the value; missing is ``"-"``."""
    if cell is None or not cell.values:
        return "-"
    if len(cell.values) == 1:
        return f"{100 * cell.mean:.1f}"
    return f"{100 * cell.mean:.1f} ± {100 * cell.std:.1f}"


def format_table(results: Results) -> str:
    """A plain-text table: one row per representation × protocol, one column per budget,
    cells of test accuracy in percent as mean ± std over seeds, and a footnote; then the
    clustering protocol's table when it ran (alone when no other protocol did)."""
    clusters = results.clusters.table() if results.clusters is not None else ""
    if clusters and not results.cells:
        return clusters
    budgets = results.budgets()
    index = {(c.representation, c.protocol, c.labels_per_class): c for c in results.cells}
    header = ["representation", "protocol", *(budget_label(b) for b in budgets)]
    lines = [header]
    for representation, protocol in results.rows():
        cells = [index.get((representation, protocol, b)) for b in budgets]
        lines.append([representation, protocol, *(format_cell(c) for c in cells)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: list[str]) -> str:
        left = [text.ljust(width) for text, width in zip(line[:2], widths[:2], strict=True)]
        right = [text.rjust(width) for text, width in zip(line[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    rendered = [render(lines[0]), "  ".join("-" * w for w in widths)]
    rendered += [render(line) for line in lines[1:]]
    seeds = results.settings.get("seeds")
    note = "test accuracy (%), mean ± sample std over split seeds"
    if seeds:
        note += f" {', '.join(str(s) for s in seeds)}"
    if None in budgets:
        all_seed = results.settings.get("all_budget_seed", seeds[0] if seeds else None)
        note += f"; 'all' is one split (seed {all_seed})"
    notes = [note]
    if any(protocol == "linear" for _, protocol in results.rows()):
        notes.append(_probe_note(results.settings))
    for protocol in ("finetune", "semi"):
        training = results.settings.get(f"{protocol}_training")
        if training and any(row == protocol for _, row in results.rows()):
            notes.append(f"{protocol}: {training}")
    return "\n".join([*rendered, *(n for n in notes if n), *(["", clusters] if clusters else [])])


def _probe_note(settings: dict[str, Any]) -> str:
    """How the linear probe chose its weight decay, and whether that took labels beyond the
    budget (results from before this was recorded say nothing)."""
    validation = settings.get("validation_per_class")
    if validation:
        return (f"linear: weight decay chosen on {validation} more labeled images per class, "
                f"so k/class used k+{validation} labels per class ('all': every label)")
    if validation == 0 and "weight_decay_selection" in settings:
        default = settings.get("default_weight_decay")
        return ("linear: weight decay cross-validated within the budget's labels "
                f"(fixed at {default:g} when a class has one label)")
    return ""
