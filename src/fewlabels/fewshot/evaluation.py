"""Run a few-shot method on a task and summarise it: mean accuracy over the episodes with its
95% interval, the class split, the episodes' fingerprint and the settings, as one JSON-ready
record."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.intervals import mean_and_interval
from fewlabels.fewshot.registry import FEWSHOT_METHODS
from fewlabels.fewshot.task import FewShotTask
from fewlabels.options import to_plain


@dataclass
class FewShotResult:
    """One method's accuracy on one task's episodes (fractions in [0, 1])."""

    method: str
    ways: int
    shots: int
    queries: int
    episodes: int
    mean: float
    interval: float
    class_split: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary_line(self) -> str:
        return (f"{self.method}: {self.ways}-way {self.shots}-shot accuracy "
                f"{100 * self.mean:.2f}% ± {100 * self.interval:.2f}% (95% interval over "
                f"{self.episodes} episodes of {self.queries} queries per class) on novel "
                f"classes {', '.join(self.class_split['novel_names'])}")


def evaluate_method(name: str, task: FewShotTask, options: FewShotOptions) -> FewShotResult:
    """Train method ``name`` where it trains (base classes only) and test it on the task's
    novel episodes."""
    method = FEWSHOT_METHODS.get(name)
    options.check()
    started = time.perf_counter()
    outcome = method(task, options)
    if outcome.accuracies.shape != (len(task.episodes),):
        raise AssertionError(f"{name} returned {tuple(outcome.accuracies.shape)} accuracies "
                             f"for {len(task.episodes)} episodes")
    mean, interval = mean_and_interval(outcome.accuracies)
    episodes = task.episodes
    settings = {
        "data": task.spec, "seed": task.seed,
        "init": None if task.init_dir is None else str(task.init_dir),
        "backbone": task.backbone,
        "base_images": len(task.base), "novel_images": len(task.novel),
        "episodes_fingerprint": episodes.fingerprint(),
        "options": {field.name: to_plain(getattr(options, field.name))
                    for field in dataclasses.fields(options)},
        "method": outcome.settings,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return FewShotResult(name, episodes.ways, episodes.shots, episodes.queries, len(episodes),
                         mean, interval, task.split.to_dict(), settings)
