"""Core-set selection: greedy k-centre on features (Sener & Savarese 2018, "Active Learning for
Convolutional Neural Networks: A Core-Set Approach", algorithm 1).

The labeled images should cover the pool: every pool image close to some labeled one. The
greedy k-centre algorithm picks, one at a time, the image farthest from everything chosen so
far (the labeled set and the earlier picks), so each pick shrinks the covering radius
``max_i min_j ||x_i - x_j||`` the most that one point can (a 2-approximation of the best
k-centre cover, Gonzalez 1985).

Distances to the labeled set are computed in row blocks (never an ``N x L`` matrix at once);
afterwards each pick costs one ``N x D`` pass to update the distance to the nearest centre.
With no labeled image the first pick is the image nearest to the mean of the features, a
deterministic, central start (a random first pick, as scikit-activeml#392 shipped, makes the
query depend on luck) -- but a labeled-free start is better served by the cold start
(:mod:`fewlabels.active.cold_start`).
"""

from __future__ import annotations

import torch

from fewlabels.clustering.kmeans import nearest_centroids


def squared_distances_to_set(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The squared Euclidean distance of every row of ``features`` ``[N, D]`` to its nearest
    row of ``centres`` ``[L, D]``, ``[N]``; ``inf`` everywhere when there are no centres."""
    if len(centres) == 0:
        return torch.full((len(features),), float("inf"))
    _, distances = nearest_centroids(features.float(), centres.float())
    return distances


def k_centre_greedy(
    features: torch.Tensor,
    labeled: torch.Tensor,
    budget: int,
    *,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of ``budget`` rows of ``features`` ``[N, D]`` chosen by greedy k-centre, in the
    order picked, given the ``labeled`` row indices (int64, may be empty).

    Each pick is the candidate farthest (Euclidean) from the labeled rows and the earlier
    picks; ties go to the lowest index. ``candidates`` (row indices) limits the picks, by
    default to every unlabeled row; labeled rows are never picked. Fewer than ``budget``
    indices come back when there are fewer candidates.
    """
    features = features.float()
    labeled = torch.as_tensor(labeled, dtype=torch.long)
    allowed = torch.zeros(len(features), dtype=torch.bool)
    if candidates is None:
        allowed[:] = True
    else:
        allowed[torch.as_tensor(candidates, dtype=torch.long)] = True
    allowed[labeled] = False
    budget = min(budget, int(allowed.sum()))
    if budget <= 0:
        return torch.zeros(0, dtype=torch.long)

    distances = squared_distances_to_set(features, features[labeled])
    if len(labeled) == 0:
        # no centre yet: start from the image nearest the mean
        distances = -squared_distances_to_set(features, features.mean(dim=0, keepdim=True))
    # a row that may not be picked never wins the argmax
    distances = torch.where(allowed, distances, torch.full_like(distances, -float("inf")))
    picks = []
    for _ in range(budget):
        pick = int(distances.argmax())
        picks.append(pick)
        new = (features - features[pick]).square_().sum(dim=1)
        if len(picks) == 1 and len(labeled) == 0:
            distances = torch.where(allowed, new, distances)
        else:
            distances = torch.minimum(distances, new)
        distances[pick] = -float("inf")
    return torch.tensor(picks, dtype=torch.long)
