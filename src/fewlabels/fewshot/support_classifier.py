"""A new classifier per episode, learned on the support set's frozen features: the test-time
step of Baseline and Baseline++ (Chen et al., ICLR 2019).

Every episode gets its own weights, but all episodes train at once: the loss is the sum of
the episodes' losses, so each episode's weights receive exactly their own episode's gradient,
and Adam's element-wise update keeps them independent. Full-batch Adam on the few support
features replaces the paper's mini-batches of 4 (100 epochs of SGD): the same problem,
batched, and deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from fewlabels.fewshot.cosine import cosine_logits
from fewlabels.fewshot.episodes import Episodes, episode_accuracies

ClassifierKind = Literal["linear", "cosine"]
EPISODES_PER_CHUNK = 100


@dataclass
class SupportClassifiers:
    """One classifier per episode: weights ``[E, N, D]``, biases ``[E, N]`` (linear only)."""

    kind: ClassifierKind
    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float = 1.0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[E, M, N]`` of features ``[E, M, D]``: ``x·Wᵀ + b`` (linear) or
        :func:`~fewlabels.fewshot.cosine.cosine_logits` (cosine)."""
        if self.kind == "cosine":
            return cosine_logits(features, self.weight, self.scale)
        assert self.bias is not None
        return features @ self.weight.transpose(-1, -2) + self.bias.unsqueeze(-2)


def fit_support_classifiers(support: torch.Tensor, *, kind: ClassifierKind, steps: int,
                            learning_rate: float, weight_decay: float, scale: float = 1.0,
                            seeds: Sequence[int] | None = None) -> SupportClassifiers:
    """Fit one classifier per episode to support features ``[E, N, K, D]`` (class ``n`` has
    label ``n``), minimising per episode

        1/(N·K) Σ_{n,k} CE(logits(x_nk), n) + λ/2 ‖W‖²

    by ``steps`` full-batch Adam steps. Linear weights start at zero (the problem is convex);
    cosine weights at random vectors (a zero vector has no direction), episode ``e``'s drawn
    from ``seeds[e]`` (default ``e``), so an episode's classifier does not depend on which
    episodes share its batch."""
    episodes, ways, shots, dim = support.shape
    features = support.reshape(episodes, ways * shots, dim).detach()
    labels = torch.arange(ways, device=support.device).repeat_interleave(shots)
    if kind == "cosine":
        seeds = range(episodes) if seeds is None else seeds
        weight = torch.stack([
            torch.randn(ways, dim, generator=torch.Generator().manual_seed(int(seed)))
            for seed in seeds]).to(support.device)
        weight = (weight / dim ** 0.5).requires_grad_(True)
        parameters, bias = [weight], None
    elif kind == "linear":
        weight = torch.zeros(episodes, ways, dim, device=support.device, requires_grad=True)
        bias = torch.zeros(episodes, ways, device=support.device, requires_grad=True)
        parameters = [weight, bias]
    else:
        raise ValueError(f"unknown classifier kind {kind!r}")
    classifiers = SupportClassifiers(kind, weight, bias, scale)
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    with torch.enable_grad():
        for _ in range(steps):
            logits = classifiers.logits(features)  # [E, N·K, N]
            # sum over episodes of each episode's mean loss: independent gradients
            loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat(episodes),
                                   reduction="sum") / (ways * shots)
            loss = loss + weight_decay / 2 * weight.square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return SupportClassifiers(kind, weight.detach(), None if bias is None else bias.detach(),
                              scale)


@torch.no_grad()
def support_classifier_accuracies(features: torch.Tensor, episodes: Episodes, *,
                                  kind: ClassifierKind, steps: int, learning_rate: float,
                                  weight_decay: float, scale: float = 1.0,
                                  seed: int = 0) -> torch.Tensor:
    """Per-episode accuracy ``[E]`` of a classifier fitted to each episode's support rows of
    the feature table ``[M, D]`` and tested on its query rows (cosine classifiers start from
    random directions drawn from ``seed`` and the episode's index)."""
    accuracies = []
    for start in range(0, len(episodes), EPISODES_PER_CHUNK):
        chunk = episodes.chunk(start, start + EPISODES_PER_CHUNK)
        classifiers = fit_support_classifiers(
            features[chunk.support], kind=kind, steps=steps, learning_rate=learning_rate,
            weight_decay=weight_decay, scale=scale,
            seeds=[seed * len(episodes) + index for index in range(start, start + len(chunk))])
        query = features[chunk.query].flatten(1, 2)  # [E, N·Q, D]
        accuracies.append(episode_accuracies(classifiers.logits(query), chunk))
    return torch.cat(accuracies)
