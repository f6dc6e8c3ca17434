"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018, "Unsupervised feature learning via non-parametric instance
discrimination" (CVPR), as used by the evaluations of MoCo and DINO: features are
L2-normalised, a query's ``k`` most cosine-similar training features vote for their labels,
and each vote weighs ``exp(similarity / T)``. The predicted class has the largest summed weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A chunk of queries holds at most this many similarities at once (4 bytes each: 128 MB).
_SIMILARITIES_PER_CHUNK = 1 << 25


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Predicted labels (int64 ``[Q]``) for ``query_features`` ``[Q, D]`` from the training
    features ``[N, D]`` and their labels ``[N]``.

    ``k`` is clamped to the training set size (at 1 label per class there may be only 10
    neighbours). Queries are processed ``chunk_size`` at a time to bound the memory of the
    ``[chunk, N]`` similarity matrix; by default a chunk holds about 32M similarities. Ties
    between classes go to the lower class index.
    """
    if len(train_features) == 0:
        raise ValueError("knn_predict needs at least one training feature")
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_predict needs k >= 1 and temperature > 0, got {k}, {temperature}")
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device, torch.long)
    k = min(k, len(train))
    if chunk_size is None:
        chunk_size = max(1, _SIMILARITIES_PER_CHUNK // len(train))
    predictions = []
    for start in range(0, len(query_features), chunk_size):
        query = F.normalize(query_features[start : start + chunk_size].to(train).float(), dim=1)
        similarities = query @ train.T  # [q, N]
        top_similarities, top_indices = similarities.topk(k, dim=1)  # [q, k], sorted descending
        # Subtracting each query's best similarity leaves the arg-max unchanged and keeps
        # exp() finite for small temperatures.
        weights = ((top_similarities - top_similarities[:, :1]) / temperature).exp_()
        votes = torch.zeros(len(query), num_classes, device=train.device)
        votes.scatter_add_(1, labels[top_indices], weights)  # [q, classes]
        predictions.append(votes.argmax(dim=1))
    if not predictions:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(predictions).cpu()


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> float:
    """Fraction of queries whose :func:`knn_predict` label equals ``query_labels``."""
    predictions = knn_predict(
        train_features, train_labels, query_features,
        num_classes=num_classes, k=k, temperature=temperature, chunk_size=chunk_size,
    )
    return (predictions == query_labels.cpu().long()).float().mean().item()
