"""Active-learning curves over seeds: mean and spread per round, a Markdown table, JSON, and
the numbers that say how many labels a strategy saves against random selection."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from fewlabels.active.simulate import Curve, RoundRecord
from fewlabels.atomic import atomic_write_text


@dataclass
class CurveSummary:
    """One (strategy, first batch): per number of labels, the test accuracies of the seeds."""

    strategy: str
    first: str
    accuracies: dict[int, list[float]]

    def mean(self, labels: int) -> float:
        values = self.accuracies[labels]
        return math.fsum(values) / len(values)

    def std(self, labels: int) -> float:
        """Population standard deviation over the seeds (0 for one seed)."""
        values, mean = self.accuracies[labels], self.mean(labels)
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))

    @property
    def name(self) -> str:
        return self.strategy if self.first == "random" else f"{self.strategy} ({self.first})"


def labels_to_reach(summary: CurveSummary, target: float) -> float | None:
    """The number of labels at which ``summary``'s mean curve first reaches ``target``
    accuracy, interpolated linearly between rounds; ``None`` if it never does."""
    points = sorted((labels, summary.mean(labels)) for labels in summary.accuracies)
    previous = None
    for labels, accuracy in points:
        if accuracy >= target:
            if previous is None or previous[1] >= accuracy:
                return float(labels)
            low_labels, low_accuracy = previous
            fraction = (target - low_accuracy) / (accuracy - low_accuracy)
            return low_labels + fraction * (labels - low_labels)
        previous = (labels, accuracy)
    return None


@dataclass
class ActiveResults:
    """Every curve of a comparison, with the settings that produced them."""

    curves: list[Curve] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def summaries(self) -> list[CurveSummary]:
        grouped: dict[tuple[str, str], dict[int, list[float]]] = {}
        for curve in self.curves:
            table = grouped.setdefault((curve.strategy, curve.first), {})
            for record in curve.rounds:
                table.setdefault(record.labels, []).append(record.accuracy)
        return [CurveSummary(strategy, first, accuracies)
                for (strategy, first), accuracies in grouped.items()]

    def budgets(self) -> list[int]:
        return sorted({record.labels for curve in self.curves for record in curve.rounds})

    def table(self) -> str:
        """Markdown: one row per strategy, one column per number of labels, test accuracy
        in % as mean ± std over seeds."""
        budgets = self.budgets()
        lines = ["| strategy | " + " | ".join(str(b) for b in budgets) + " |",
                 "|---|" + "---:|" * len(budgets)]
        for summary in self.summaries():
            cells = [f"{100 * summary.mean(b):.1f} ± {100 * summary.std(b):.1f}"
                     if b in summary.accuracies else "" for b in budgets]
            lines.append(f"| {summary.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def savings(self, labels: int = 100, baseline_labels: int = 200) -> dict[str, Any]:
        """The aim "the best strategy reaches with ``labels`` labels the accuracy random
        selection needs ``baseline_labels`` for", decided: random's mean accuracy at
        ``baseline_labels``, every strategy's at ``labels`` with the labels random needs to
        reach it (interpolated), the best strategy and whether the aim is met."""
        summaries = {s.name: s for s in self.summaries()}
        random = summaries.get("random")
        if random is None or labels not in random.accuracies:
            return {}
        target = random.mean(baseline_labels) if baseline_labels in random.accuracies else None
        rows = {}
        for name, summary in summaries.items():
            if labels in summary.accuracies and name != "random":
                accuracy = summary.mean(labels)
                rows[name] = {"accuracy": accuracy, "std": summary.std(labels),
                              "random_labels_for_it": labels_to_reach(random, accuracy)}
        best = max(rows, key=lambda name: rows[name]["accuracy"], default=None)
        return {"labels": labels, "baseline_labels": baseline_labels,
                "random_accuracy": random.mean(labels), "random_accuracy_at_baseline": target,
                "strategies": rows, "best": best,
                "met": (best is not None and target is not None
                        and rows[best]["accuracy"] >= target)}

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "summary": [{"strategy": s.strategy, "first": s.first,
                         "labels": sorted(s.accuracies),
                         "mean": [s.mean(b) for b in sorted(s.accuracies)],
                         "std": [s.std(b) for b in sorted(s.accuracies)]}
                        for s in self.summaries()],
            "curves": [dataclasses.asdict(curve) for curve in self.curves],
        }

    def save_json(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActiveResults:
        curves = [Curve(c["strategy"], c["first"], c["seed"],
                        [RoundRecord(**r) for r in c["rounds"]], list(c.get("queried", [])))
                  for c in data.get("curves", [])]
        return cls(curves, dict(data.get("settings", {})))
