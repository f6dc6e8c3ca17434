"""The loop of episodic training (ProtoNet, MAML): draw episodes of base classes, take one
optimiser step on them, until a step count or a time budget is spent.

Why not the engine's loop: the engine streams batches of images by a permutation of the
dataset, while an episodic step needs a class-balanced index table (N classes × K support
+ Q query, relabelled per episode), and MAML's step differentiates through an inner
optimisation that the engine's single ``loss.backward()`` cannot express. The loop stays
small: seeded episodes, a constant learning rate (as ProtoNet's and MAML's papers), a budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fewlabels.fewshot.episodes import Episodes, EpisodeSampler

LOSS_WINDOW = 20  # steps averaged for the reported final loss


@dataclass
class EpisodicLog:
    """How training went: steps taken, seconds, the mean loss of the first and the last
    ``LOSS_WINDOW`` steps."""

    steps: int
    seconds: float
    first_loss: float
    final_loss: float

    def to_dict(self) -> dict[str, float]:
        return {"steps": self.steps, "seconds": round(self.seconds, 2),
                "first_loss": round(self.first_loss, 4), "final_loss": round(self.final_loss, 4)}


def train_episodically(step: Callable[[Episodes], float], sampler: EpisodeSampler, *,
                       episodes_per_step: int, steps: int | None, minutes: float | None,
                       seed: int) -> EpisodicLog:
    """Call ``step`` (one optimiser step on its episodes; returns the loss) on
    ``episodes_per_step`` fresh episodes from ``sampler`` until ``steps`` steps are taken
    or ``minutes`` have passed (whichever comes first; at least one step). Episodes follow
    ``seed``."""
    if steps is None and minutes is None:
        raise ValueError("episodic training needs a number of steps or minutes")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    started = time.perf_counter()
    deadline = started + 60 * minutes if minutes is not None else math.inf
    losses: list[float] = []
    while not losses or ((steps is None or len(losses) < steps)
                         and time.perf_counter() < deadline):
        losses.append(step(sampler.sample(episodes_per_step, generator)))
    window = min(LOSS_WINDOW, len(losses))
    return EpisodicLog(len(losses), time.perf_counter() - started,
                       sum(losses[:window]) / window, sum(losses[-window:]) / window)
