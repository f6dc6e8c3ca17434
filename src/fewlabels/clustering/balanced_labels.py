"""Hard labels with exact cluster sizes, rounded from a soft (transport) plan.

SeLa (Asano, Rupprecht, Vedaldi, "Self-labelling via simultaneous clustering and
representation learning", ICLR 2020) asks for hard labels that split the N images into K
clusters of N/K each (its equipartition constraint), and relaxes the problem to the
entropy-regularised transport plan that Sinkhorn-Knopp computes. Its code then takes each
image's arg-max of the plan, which balances the clusters only approximately. Here the plan
is rounded to labels that meet the sizes exactly, keeping each image's arg-max wherever the
sizes allow:

1. every unlabelled image proposes to its best cluster that still has room;
2. a cluster with more proposals than room accepts the ones with the largest plan values and
   is then full; the others propose again to their next best cluster with room.

Each round labels every proposer or fills at least one cluster, so there are at most K + 1
rounds, each one ``[remaining, K]`` pass; ties go to the lower cluster and, within a cluster,
to the lower image index, so the result is deterministic.
"""

from __future__ import annotations

import torch

__all__ = ["balanced_hard_labels", "equal_cluster_sizes"]


def equal_cluster_sizes(count: int, clusters: int, device: torch.device | str = "cpu"
                        ) -> torch.Tensor:
    """Sizes ``[K]`` summing to ``count``: ``count // K`` each, one more for the first
    ``count % K`` clusters (exactly N/K each when K divides N)."""
    if clusters < 1 or count < 0:
        raise ValueError(f"cannot split {count} items into {clusters} clusters")
    sizes = torch.full((clusters,), count // clusters, dtype=torch.long, device=device)
    sizes[: count % clusters] += 1
    return sizes


@torch.no_grad()
def balanced_hard_labels(plan: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Labels ``int64 [N]`` from a non-negative plan ``[N, K]`` such that cluster ``j``
    receives exactly ``sizes[j]`` images (default :func:`equal_cluster_sizes`); ``sizes``
    must sum to N. See the module docstring for the rounding."""
    if plan.ndim != 2:
        raise ValueError(f"the plan must have shape [N, K], got {tuple(plan.shape)}")
    count, clusters = plan.shape
    device = plan.device
    room = (equal_cluster_sizes(count, clusters, device) if sizes is None
            else sizes.to(device=device, dtype=torch.long).clone())
    if room.shape != (clusters,) or int(room.sum()) != count or bool((room < 0).any()):
        raise ValueError(f"cluster sizes must be {clusters} non-negative counts summing to "
                         f"{count}")
    values = plan.float().clamp_min(0)
    labels = torch.full((count,), -1, dtype=torch.long, device=device)
    waiting = torch.arange(count, device=device)
    while waiting.numel():
        # closed clusters score -1, below any plan value, so an open one always wins
        scores = values[waiting].masked_fill((room == 0)[None, :], -1.0)
        best_value, choice = scores.max(1)
        # order the proposals by cluster, and within a cluster by decreasing value
        order = torch.argsort(best_value, descending=True, stable=True)
        order = order[torch.argsort(choice[order], stable=True)]
        proposals = torch.bincount(choice, minlength=clusters)
        first = torch.cumsum(proposals, 0) - proposals  # first position of each cluster
        chosen = choice[order]
        rank = torch.arange(order.numel(), device=device) - first[chosen]
        accepted = torch.zeros_like(waiting, dtype=torch.bool)
        accepted[order] = rank < room[chosen]
        labels[waiting[accepted]] = choice[accepted]
        room -= torch.bincount(choice[accepted], minlength=clusters)
        waiting = waiting[~accepted]
    return labels
