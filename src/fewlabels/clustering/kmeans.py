"""k-means (Lloyd's algorithm) in torch, on the features' device, with DeepCluster's handling of
empty clusters.

Lloyd's algorithm alternates two steps that each lower the inertia
``sum_i ||x_i - c_{a(i)}||^2``: assign every point to its nearest centroid, then move every
centroid to the mean of its points. It stops when the assignments no longer change, when the
centroids moved less than ``tolerance`` (scikit-learn's rule: the summed squared shift of the
centroids against ``tolerance`` times the features' mean per-dimension variance), or after
``iterations`` rounds.

Empty clusters. With many clusters (DeepCluster uses k = 10,000 on ImageNet) some lose all
their points, and a network trained on the pseudo-labels then has dead classes. DeepCluster
(Caron et al. 2018, "Deep Clustering for Unsupervised Learning of Visual Features", section
3.3) reassigns them during the k-means: an empty cluster takes the centroid of a non-empty one
with a small perturbation, and the points of that cluster are shared between the two. Their
k-means (faiss's) draws the cluster to split with probability proportional to its size minus
one and perturbs the two copies in opposite directions. Here the same happens in the
assignment step: the donor is drawn from the generator with probability proportional to its
size minus one, a random direction ``d`` is drawn, and the copies ``m + eps d`` and
``m - eps d`` of the donor's mean ``m`` split its points by the hyperplane through ``m``
orthogonal to ``d`` (the limit of a small ``eps``); the next update moves both centroids to
the means of their halves. Points that all coincide are split in two halves by index. Every
cluster of the result is non-empty when there are at least ``k`` points.

Distances are computed in row blocks as ``||x||^2 - 2 x.c + ||c||^2`` (one matrix product per
block, never an ``N x k x D`` tensor), so 60,000 x 512 features with k = 1,000 stay within a
few tens of megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fewlabels.errors import UserError
from fewlabels.threads import single_thread_if_small

Initialisation = Literal["k-means++", "random"]

# Elements of one block of the distance matrix (rows x clusters): 16 MB in float32.
_DISTANCE_BLOCK = 1 << 22
# Below this many multiply-adds per iteration (N x D x k) k-means runs on one thread: on a
# shared 2-core CPU, 6,000 x 784 points into 10 clusters took 1.3 s on two threads and 0.34 s
# on one; 300 x 8 points 0.4 s against 2 ms (threads' hand-offs cost more than they save).
_SINGLE_THREAD_BELOW = 1 << 27


@dataclass
class KMeansResult:
    """``centroids`` [k, D], ``assignments`` int64 [N] (every cluster non-empty when N >= k),
    ``inertia`` (sum of squared distances of the points to their centroid), the number of
    Lloyd ``iterations`` run and of empty clusters ``reassigned`` along the way."""

    centroids: torch.Tensor
    assignments: torch.Tensor
    inertia: float
    iterations: int
    reassigned: int

    @property
    def cluster_sizes(self) -> torch.Tensor:
        return torch.bincount(self.assignments, minlength=self.centroids.shape[0])


def kmeans(
    features: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator,
    iterations: int = 50,
    tolerance: float = 1e-4,
    init: Initialisation | torch.Tensor = "k-means++",
) -> KMeansResult:
    """Cluster ``features`` [N, D] into ``k`` clusters; reproducible for a given generator state.

    ``init`` is ``"k-means++"`` (Arthur & Vassilvitskii 2007: each new centre drawn with
    probability proportional to the squared distance to the nearest centre already chosen)
    or ``"random"`` (k distinct points drawn uniformly, as faiss and so DeepCluster do), or
    the initial centroids themselves as a [k, D] tensor. All random draws come from
    ``generator`` (on any device; the draws are moved to the features' device)."""
    if features.ndim != 2:
        raise ValueError(f"k-means needs features of shape [N, D], got {tuple(features.shape)}")
    count = features.shape[0]
    if not 1 <= k <= count:
        raise UserError(f"cannot make {k} clusters of {count} points: "
                        f"choose a number of clusters between 1 and {count}")
    if iterations < 1:
        raise ValueError("k-means needs at least one iteration")
    with single_thread_if_small(count * features.shape[1] * k, _SINGLE_THREAD_BELOW):
        return _kmeans(features, k, generator, iterations, tolerance, init)


def _kmeans(features: torch.Tensor, k: int, generator: torch.Generator, iterations: int,
            tolerance: float, init: Initialisation | torch.Tensor) -> KMeansResult:
    count = features.shape[0]
    points = features if features.dtype in (torch.float32, torch.float64) else features.float()
    squared_norms = points.pow(2).sum(1)
    if isinstance(init, torch.Tensor):
        if init.shape != (k, points.shape[1]):
            raise ValueError(f"initial centroids must have shape {(k, points.shape[1])}, "
                             f"got {tuple(init.shape)}")
        centroids = init.to(points.device, points.dtype).clone()
    elif init == "k-means++":
        centroids = _kmeans_plus_plus(points, squared_norms, k, generator)
    elif init == "random":
        chosen = torch.randperm(count, generator=generator, device=generator.device)[:k]
        centroids = points[chosen.to(points.device)].clone()
    else:
        raise ValueError(f"unknown k-means initialisation {init!r}: use 'k-means++' or 'random'")
    shift_limit = tolerance * points.var(0, correction=0).mean().item()

    previous = None
    reassigned = 0
    done = 0
    for iteration in range(1, iterations + 1):
        done = iteration
        assignments, _ = nearest_centroids(points, centroids, squared_norms)
        reassigned += _reassign_empty_clusters(points, assignments, k, generator)
        if previous is not None and torch.equal(assignments, previous):
            break
        updated = cluster_means(points, assignments, k)
        shift = (updated - centroids).pow(2).sum().item()
        centroids, previous = updated, assignments
        if shift <= shift_limit:
            break
    centroids = cluster_means(points, assignments, k)
    inertia = _inertia(points, centroids, assignments)
    return KMeansResult(centroids=centroids, assignments=assignments, inertia=inertia,
                        iterations=done, reassigned=reassigned)


def nearest_centroids(
    points: torch.Tensor,
    centroids: torch.Tensor,
    squared_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The index of each point's nearest centroid (int64 [N]) and its squared distance [N],
    computed in row blocks as ``||x||^2 - 2 x.c + ||c||^2``."""
    points = points.to(centroids.dtype)
    if squared_norms is None:
        squared_norms = points.pow(2).sum(1)
    centroid_norms = centroids.pow(2).sum(1)
    rows = max(1, _DISTANCE_BLOCK // max(1, centroids.shape[0]))
    nearest, distances = [], []
    for start in range(0, points.shape[0], rows):
        block = points[start:start + rows]
        # [rows, k] = ||c||^2 - 2 x.c; ||x||^2 does not change which centroid is nearest
        partial = torch.addmm(centroid_norms, block, centroids.T, alpha=-2.0)
        best, index = partial.min(1)
        nearest.append(index)
        distances.append((best + squared_norms[start:start + rows]).clamp_min(0))
    return torch.cat(nearest), torch.cat(distances)


def cluster_means(points: torch.Tensor, assignments: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of each cluster's points [k, D] (zeros for an empty cluster)."""
    sums = torch.zeros(k, points.shape[1], dtype=points.dtype, device=points.device)
    sums.index_add_(0, assignments, points)
    sizes = torch.bincount(assignments, minlength=k).clamp_min(1).to(points.dtype)
    return sums / sizes[:, None]


def _inertia(points: torch.Tensor, centroids: torch.Tensor, assignments: torch.Tensor) -> float:
    rows = max(1, _DISTANCE_BLOCK // max(1, points.shape[1]))
    total = 0.0
    for start in range(0, points.shape[0], rows):
        block = points[start:start + rows]
        total += (block - centroids[assignments[start:start + rows]]).pow(2).sum().item()
    return total


def _uniforms(count: int, generator: torch.Generator) -> list[float]:
    return torch.rand(count, generator=generator, device=generator.device,
                      dtype=torch.float64).tolist()


def _draw_proportional(weights: torch.Tensor, uniform: float) -> int:
    """An index drawn with probability proportional to ``weights`` (uniformly if all are 0)."""
    cumulative = weights.double().cumsum(0)
    total = cumulative[-1].item()
    if total <= 0:
        return min(int(uniform * weights.shape[0]), weights.shape[0] - 1)
    target = torch.tensor([uniform * total], dtype=torch.float64, device=weights.device)
    index = int(torch.searchsorted(cumulative, target, right=True).item())
    if index >= weights.shape[0]:  # rounding at the very top: the last index with weight
        index = int((weights > 0).nonzero().max().item())
    return index


def _kmeans_plus_plus(points: torch.Tensor, squared_norms: torch.Tensor, k: int,
                      generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: one pass over the points per centre (a matrix-vector product)."""
    uniforms = _uniforms(k, generator)
    count = points.shape[0]
    first = min(int(uniforms[0] * count), count - 1)
    centroids = points.new_empty(k, points.shape[1])
    centroids[0] = points[first]
    closest = (squared_norms - 2 * points @ points[first] + squared_norms[first]).clamp_min(0)
    for index in range(1, k):
        chosen = _draw_proportional(closest, uniforms[index])
        centroids[index] = points[chosen]
        distance = squared_norms - 2 * points @ points[chosen] + squared_norms[chosen]
        closest = torch.minimum(closest, distance.clamp_min(0))
    return centroids


def _reassign_empty_clusters(points: torch.Tensor, assignments: torch.Tensor, k: int,
                             generator: torch.Generator) -> int:
    """Give every empty cluster part of a donor cluster's points, in place (see the module's
    docstring); returns how many clusters were empty."""
    sizes = torch.bincount(assignments, minlength=k)
    empty = (sizes == 0).nonzero().flatten().tolist()
    for cluster in empty:
        weights = (sizes - 1).clamp_min(0)
        if weights.sum().item() == 0:  # fewer points than clusters: nothing left to split
            break
        donor = _draw_proportional(weights, _uniforms(1, generator)[0])
        members = (assignments == donor).nonzero().flatten()
        donated = members[_split_in_two(points[members], generator)]
        assignments[donated] = cluster
        sizes[cluster] = donated.numel()
        sizes[donor] -= donated.numel()
    return len(empty)


def _split_in_two(members: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask choosing a non-empty proper subset of ``members`` [M, D] (M >= 2): the
    side of a random hyperplane through their mean, or the second half if they coincide."""
    direction = torch.randn(members.shape[1], generator=generator, device=generator.device)
    projection = (members - members.mean(0)) @ direction.to(members.device, members.dtype)
    side = projection > 0
    taken = int(side.sum().item())
    if taken == 0 or taken == members.shape[0]:
        side = torch.arange(members.shape[0], device=members.device) >= members.shape[0] // 2
    return side
