"""Accuracy over episodes: the mean and its 95% confidence interval."""

from __future__ import annotations

import math

import torch

Z_95 = 1.96  # the two-sided 95% quantile of the normal distribution


def mean_and_interval(accuracies: torch.Tensor) -> tuple[float, float]:
    """The mean accuracy over episodes and the half-width of its 95% confidence interval,

        mean ± 1.96 · σ / √n,

    with σ the standard deviation of the ``n`` per-episode accuracies. σ is the population
    one (divided by n, not n − 1), as the few-shot literature reports it (the code of
    Prototypical Networks and of Chen et al. 2019), so our numbers compare with theirs; at
    600 episodes the two differ by 0.08%."""
    values = accuracies.double().flatten()
    if values.numel() == 0:
        raise ValueError("no episode accuracies to summarise")
    spread = values.std(correction=0).item()
    return values.mean().item(), Z_95 * spread / math.sqrt(values.numel())
