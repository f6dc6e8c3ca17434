"""Schedules of hyperparameters over training, known from step 0.

A :class:`Schedule` gives a value at every step from two numbers the engine's
:class:`TrainingClock` supplies: the global step and the *progress*, the fraction of training
done (0 at the first step, 1 at the end). With a number of epochs, progress is
``step / (total_steps - 1)``; under a wall-clock budget it is the fraction of the budget spent.
So a schedule starts at its first value on step 0 and ends at its last value when training
ends, whether the length is counted in steps or in minutes, and never jumps when the pace of
training changes (a momentum teacher's coefficient rises monotonically from its base to 1).

A warm-up is counted in epochs (steps are known from the start either way): the value ramps
linearly from ``warmup_start`` to ``start`` over the warm-up's steps, then follows its shape
over the rest of the progress, from the progress at which the warm-up ended to 1. DINO's
``main_dino.py`` precomputes its schedules as arrays indexed by the step; this is the same
idea with the length allowed to be a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SHAPES = ("constant", "cosine", "linear", "fixmatch")


@dataclass(frozen=True)
class Schedule:
    """A hyperparameter's value over training.

    Shapes, with ``t`` in [0, 1] the progress after the warm-up:

    - ``constant``: ``start``;
    - ``cosine``: ``end + (start - end) * (1 + cos(pi t)) / 2`` (Loshchilov & Hutter, SGDR,
      ICLR 2017, without restarts; BYOL's and DINO's momentum, DINO's weight decay);
    - ``linear``: ``start + (end - start) * t``;
    - ``fixmatch``: ``start * cos(7 pi t / 16)`` (Sohn et al., FixMatch, NeurIPS 2020).

    ``warmup_epochs`` > 0 prepends a linear ramp from ``warmup_start`` to ``start`` (Goyal et
    al. 2017 for learning rates; DINO's teacher temperature).
    """

    start: float
    end: float | None = None  # None: the same as start
    shape: str = "constant"
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown schedule shape {self.shape!r}; choose one of {SHAPES}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    @classmethod
    def warmup_cosine(cls, peak: float, end: float, warmup_epochs: float,
                      warmup_start: float = 0.0) -> Schedule:
        """Linear warm-up to ``peak``, then a half cosine to ``end`` (learning rates)."""
        return cls(peak, end, "cosine", warmup_epochs, warmup_start)

    @classmethod
    def warmup_constant(cls, start: float, value: float, warmup_epochs: float) -> Schedule:
        """Linear from ``start`` to ``value`` over the warm-up, then constant (DINO's teacher
        temperature)."""
        return cls(value, value, "constant", warmup_epochs, start)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return round(self.warmup_epochs * steps_per_epoch)

    def value(self, step: int, progress: float, warmup_steps: int,
              warmup_end_progress: float) -> float:
        """The value at ``step`` with ``progress`` done; ``warmup_end_progress`` is the progress
        at which the warm-up of ``warmup_steps`` steps ended (see :class:`TrainingClock`)."""
        if step < warmup_steps:
            return self.warmup_start + (self.start - self.warmup_start) * step / warmup_steps
        span = 1.0 - warmup_end_progress
        t = 1.0 if span <= 0 else min(1.0, max(0.0, (progress - warmup_end_progress) / span))
        end = self.start if self.end is None else self.end
        if self.shape == "constant":
            return self.start
        if self.shape == "cosine":
            return end + (self.start - end) * (1.0 + math.cos(math.pi * t)) / 2.0
        if self.shape == "linear":
            return self.start + (end - self.start) * t
        return self.start * math.cos(7.0 * math.pi * t / 16.0)  # fixmatch

    def scaled(self, factor: float) -> Schedule:
        """The same schedule with every value multiplied by ``factor`` (learning rates scaled
        with the batch size)."""
        return Schedule(self.start * factor, None if self.end is None else self.end * factor,
                        self.shape, self.warmup_epochs, self.warmup_start * factor)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "shape": self.shape,
                "warmup_epochs": self.warmup_epochs, "warmup_start": self.warmup_start}


class TrainingClock:
    """Where training is, as schedules see it: the step and the progress in [0, 1].

    With ``total_steps`` (epochs), progress is ``step / (total_steps - 1)``, so the last step
    has progress 1. With ``budget_seconds``, progress is the seconds spent over the seconds
    available (the engine passes the same figure to every device). The progress at which each
    warm-up ended is computed (epochs) or recorded when the warm-up's last step is reached
    (budget), and kept in :meth:`state_dict` so a resumed run continues the same curve.
    """

    def __init__(self, steps_per_epoch: int, total_steps: int | None = None,
                 budget_seconds: float | None = None) -> None:
        if (total_steps is None) == (budget_seconds is None):
            raise ValueError("a TrainingClock needs exactly one of total_steps and budget_seconds")
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.budget_seconds = budget_seconds
        self.warmup_ends: dict[int, float] = {}
        self.step, self.progress = 0, 0.0

    def progress_at(self, step: int, elapsed_seconds: float) -> float:
        if self.total_steps is not None:
            return min(1.0, step / max(1, self.total_steps - 1))
        assert self.budget_seconds is not None
        return min(1.0, max(0.0, elapsed_seconds / self.budget_seconds))

    def advance(self, step: int, elapsed_seconds: float) -> None:
        """Set the clock for ``step``, which starts ``elapsed_seconds`` into training."""
        self.step, self.progress = step, self.progress_at(step, elapsed_seconds)

    def warmup_end(self, warmup_steps: int) -> float:
        """The progress at which a warm-up of ``warmup_steps`` steps ended (0 for none)."""
        if warmup_steps <= 0:
            return 0.0
        if self.total_steps is not None:
            return min(1.0, warmup_steps / max(1, self.total_steps - 1))
        if warmup_steps not in self.warmup_ends and self.step >= warmup_steps:
            self.warmup_ends[warmup_steps] = self.progress
        return self.warmup_ends.get(warmup_steps, 0.0)

    def value(self, schedule: Schedule) -> float:
        """``schedule``'s value at the current step."""
        warmup_steps = schedule.warmup_steps(self.steps_per_epoch)
        return schedule.value(self.step, self.progress, warmup_steps,
                              self.warmup_end(warmup_steps))

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_ends": {str(k): v for k, v in self.warmup_ends.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup_ends = {int(k): float(v) for k, v in state.get("warmup_ends", {}).items()}
