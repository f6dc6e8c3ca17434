"""The loop of episodic training (ProtoNet, MAML): draw episodes of base classes, take one
optimiser step on them, until a step count or a time budget is spent.

Why not the engine's loop: the engine streams batches of images by a permutation of the
dataset, while an episodic step needs a class-balanced index table (N classes × K support
+ Q query, relabelled per episode), and MAML's step differentiates through an inner
optimisation that the engine's single ``loss.backward()`` cannot express. The loop stays
small: seeded episodes, a constant learning rate (as ProtoNet's and MAML's papers), a budget.

On several devices (``torch.distributed`` initialised, e.g. by ``fewlabels fewshot
--devices N``) every rank draws the same global set of ``episodes_per_step × W`` episodes from
the same seed and trains on its own share; the step averages the gradients over ranks
(:func:`fewlabels.distributed.average_gradients`) before the optimiser step, so a step of W
devices equals one device's step on all W shares (the mean of the episode losses). The ranks
agree at every step on the loss they report and on whether the time budget is spent (one
all-reduce of two numbers), so none waits for a step the others never take.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fewlabels.distributed import all_reduce_sum_no_gradient, rank, world_size
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
                       seed: int, device: torch.device | str = "cpu") -> EpisodicLog:
    """Call ``step`` (one optimiser step on its episodes, gradients averaged over devices;
    returns the loss) on ``episodes_per_step`` fresh episodes per device from ``sampler``
    until ``steps`` steps are taken or ``minutes`` have passed (whichever comes first; at
    least one step). Episodes follow ``seed``; the logged loss is the mean over devices.
    ``device``: where the agreement's all-reduce runs (the training device: NCCL needs a
    GPU tensor)."""
    if steps is None and minutes is None:
        raise ValueError("episodic training needs a number of steps or minutes")
    devices, me = world_size(), rank()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    started = time.perf_counter()
    deadline = started + 60 * minutes if minutes is not None else math.inf
    losses: list[float] = []
    while True:
        everyone = sampler.sample(episodes_per_step * devices, generator)
        loss = step(everyone.chunk(me * episodes_per_step, (me + 1) * episodes_per_step))
        late = float(time.perf_counter() >= deadline)
        agreed = all_reduce_sum_no_gradient(
            torch.tensor([loss, late], dtype=torch.float64, device=device))
        losses.append(agreed[0].item() / devices)
        if (steps is not None and len(losses) >= steps) or agreed[1].item() > 0:
            break
    window = min(LOSS_WINDOW, len(losses))
    return EpisodicLog(len(losses), time.perf_counter() - started,
                       sum(losses[:window]) / window, sum(losses[-window:]) / window)
