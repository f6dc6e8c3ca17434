"""TypiClust: typical images of the largest clusters no label covers yet.

Hacohen, Dekel & Weinshall 2022, "Active Learning on a Budget: Opposite Strategies Suit High
and Low Budgets" (ICML). With few labels a classifier's uncertainty points at outliers and
ambiguous images, which teach it little; what it lacks is one clear example of every common
kind of image. Each round:

1. cluster the pool's self-supervised features into ``|L| + B`` clusters (k-means),
   ``|L|`` the labeled count and ``B`` the batch;
2. B times, take the cluster with the fewest labeled images, the largest among those (clusters
   of fewer than ``min_cluster_size`` images are skipped: a typical image of a tiny cluster
   is an outlier of the pool), and label its most *typical* unlabeled image:

   ``typicality(x) = 1 / ((1/k) sum_{x_i in kNN(x)} ||x - x_i||)``,

   the inverse mean distance to its ``k`` nearest neighbours inside the cluster (``k`` = 20
   as in the paper), the densest point of the cluster.

Needs no classifier, so it is also a cold start; the paper reports it far ahead of
uncertainty sampling and of random selection below about ten labels per class.
"""

from __future__ import annotations

import torch

from fewlabels.clustering.kmeans import kmeans

DEFAULT_NEIGHBOURS = 20
DEFAULT_MIN_CLUSTER_SIZE = 5
# rows of one block of the within-cluster distance matrix (memory ~ rows x cluster size)
_ROWS_PER_BLOCK = 1024


def typicality(points: torch.Tensor, neighbours: int = DEFAULT_NEIGHBOURS) -> torch.Tensor:
    """``1 / mean distance to the k nearest other points`` for every row of ``points``
    ``[n, D]`` (``k = min(neighbours, n - 1)``), computed in row blocks."""
    count = len(points)
    k = min(neighbours, count - 1)
    if k < 1:
        return torch.ones(count)
    scores = torch.empty(count)
    for start in range(0, count, _ROWS_PER_BLOCK):
        block = points[start:start + _ROWS_PER_BLOCK]
        distances = torch.cdist(block, points)  # [rows, n]
        # the k + 1 smallest include the point itself, at distance 0
        nearest = distances.topk(k + 1, dim=1, largest=False).values[:, 1:]
        scores[start:start + len(block)] = 1.0 / nearest.mean(dim=1).clamp_min(1e-12)
    return scores


def typiclust(features: torch.Tensor, labeled: torch.Tensor, batch: int, *,
              generator: torch.Generator, neighbours: int = DEFAULT_NEIGHBOURS,
              min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE, iterations: int = 30
              ) -> torch.Tensor:
    """Pool positions of ``batch`` unlabeled images chosen by TypiClust from ``features``
    ``[N, D]`` (prepared, e.g. L2-normalised) and the ``labeled`` positions, one per
    cluster, in the order chosen."""
    labeled = torch.as_tensor(labeled, dtype=torch.long)
    is_labeled = torch.zeros(len(features), dtype=torch.bool)
    is_labeled[labeled] = True
    batch = min(batch, int((~is_labeled).sum()))
    if batch <= 0:
        return torch.zeros(0, dtype=torch.long)
    points = features.float()
    clusters = min(len(labeled) + batch, len(points))
    result = kmeans(points, clusters, generator=generator, iterations=iterations)
    sizes = result.cluster_sizes
    labeled_count = torch.bincount(result.assignments[labeled], minlength=clusters)
    unlabeled_count = sizes - labeled_count
    eligible = (sizes >= min(min_cluster_size, int(sizes.max()))) & (unlabeled_count > 0)
    picks: list[int] = []
    for _ in range(batch):
        if not bool(eligible.any()):  # only tiny clusters are left: take them too
            eligible = unlabeled_count > 0
        # fewest labeled first, then the largest: order by (labeled, -size)
        key = labeled_count.double() * (len(points) + 1) - sizes.double()
        key[~eligible] = float("inf")
        cluster = int(key.argmin())
        members = (result.assignments == cluster).nonzero().flatten()
        scores = typicality(points[members], neighbours)  # labeled members are neighbours too
        best = int(members[torch.where(~is_labeled[members], scores, -1.0).argmax()])
        picks.append(best)
        is_labeled[best] = True
        labeled_count[cluster] += 1
        unlabeled_count[cluster] -= 1
        eligible[cluster] = bool(unlabeled_count[cluster] > 0) and bool(eligible[cluster])
    return torch.tensor(picks, dtype=torch.long)
