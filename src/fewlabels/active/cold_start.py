"""The cold start: a first batch chosen with no label at all.

With no labels there is no classifier to be uncertain, and a random first batch of B images
misses classes and repeats common ones by chance. Self-supervised features already group
similar images, so the first batch is taken from their clusters: k-means with k = B on the
(prepared) features of the pool, and from each cluster the image nearest its centre, a
typical member (the "typical" cold start of Hacohen, Dekel & Weinshall 2022, "Active
Learning on a Budget", and the clustering start of Pourahmadi, Nooralinejad & Pirsiavash
2021, "A Simple Baseline for Low-Budget Active Learning"). The picks are distinct because
each image belongs to one cluster.

k-means runs ``restarts`` times from k-means++ seeds drawn from the generator; the run of
lowest inertia is kept (no labels involved).
"""

from __future__ import annotations

import torch

from fewlabels.clustering.kmeans import kmeans

DEFAULT_RESTARTS = 3


def cold_start(features: torch.Tensor, count: int, *, generator: torch.Generator,
               restarts: int = DEFAULT_RESTARTS, candidates: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Pool positions of ``count`` images, one nearest each of ``count`` k-means centres of
    ``features`` ``[N, D]`` (restricted to the ``candidates`` positions when given), ordered
    by cluster size, largest first (the most common kind of image first)."""
    positions = (torch.arange(len(features)) if candidates is None
                 else torch.as_tensor(candidates, dtype=torch.long))
    count = min(count, len(positions))
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    points = features[positions].float()
    best = None
    for _ in range(max(1, restarts)):
        result = kmeans(points, count, generator=generator)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    distances = (points - best.centroids[best.assignments]).square().sum(dim=1)
    picks = []
    for cluster in torch.argsort(best.cluster_sizes, descending=True, stable=True).tolist():
        members = (best.assignments == cluster).nonzero().flatten()
        picks.append(int(members[distances[members].argmin()]))
    return positions[torch.tensor(picks, dtype=torch.long)]
