"""Few-shot methods by name. A method is a function ``(task, options) -> MethodOutcome``: it
trains where it trains (on ``task.base`` only) and returns one accuracy per episode of
``task.episodes``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fewlabels.fewshot.config import FewShotOptions
from fewlabels.fewshot.task import FewShotTask
from fewlabels.registry import Registry


@dataclass
class MethodOutcome:
    """Per-episode accuracies ``[E]`` and the settings the method used (for the result)."""

    accuracies: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)


FewShotMethod = Callable[[FewShotTask, FewShotOptions], MethodOutcome]
FEWSHOT_METHODS: Registry[FewShotMethod] = Registry("few-shot method")

# methods that evaluate a pretraining run's features and cannot run without --init
NEEDS_INIT = {"features"}
