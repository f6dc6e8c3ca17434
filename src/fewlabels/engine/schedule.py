"""Schedules precomputed as arrays indexed by the global step (as in DINO's main loop)."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(
    base_value: float, final_value: float, total_steps: int, warmup_steps: int,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base_value`` over ``warmup_steps``, then a
    half-cosine from ``base_value`` down to ``final_value`` at the last step.

    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017
    (cosine without restarts); Goyal et al. 2017 (linear warm-up for large batches).
    """
    warmup_steps = min(warmup_steps, total_steps)
    warmup = np.linspace(warmup_start, base_value, warmup_steps, endpoint=False)
    decay_steps = total_steps - warmup_steps
    t = np.arange(decay_steps) / max(1, decay_steps - 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * t))
    schedule = np.concatenate([warmup, cosine])
    assert len(schedule) == total_steps
    return schedule
