"""Batch queries that do not waste labels on near-duplicates.

Asking for the B highest-scoring images at once tends to ask B times about the same thing:
images next to each other in feature space get nearly the same score, so the top of the
ranking is often one confusing region (modAL-python/modAL#11). The remedy here follows
Zhdanov 2019, "Diverse mini-batch Active Learning" (arXiv:1901.05954): pre-filter the
``factor * B`` most informative images (the paper's beta; 10 here), then spread the batch
over them:

- ``"k-means"`` (the paper's idea): cluster the candidates' features into B clusters and take
  from each cluster its highest-scoring candidate. The paper weights its k-means by the
  scores and takes the candidate nearest each centre; taking the best-scoring member of an
  unweighted cluster keeps the same two ingredients (one pick per region of the candidates,
  informativeness inside it) without a weighted k-means.
- ``"k-centre"``: greedy k-centre (:mod:`fewlabels.active.coreset`) among the candidates,
  counting the labeled images as centres already chosen: every pick is the candidate farthest
  from what is labeled or picked.

``factor`` 1 (or a pool no larger than the batch) gives the plain top B.
"""

from __future__ import annotations

import math

import torch

from fewlabels.active.coreset import k_centre_greedy
from fewlabels.clustering.kmeans import kmeans

DIVERSITY_METHODS = ("k-means", "k-centre")
DEFAULT_DIVERSITY = "k-means"
DEFAULT_DIVERSITY_FACTOR = 10.0


def top_scores(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` highest ``scores``, highest first; ties go to the lower
    position (a stable order, so the same scores always give the same picks)."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[:count]


def diverse_batch(
    scores: torch.Tensor,
    features: torch.Tensor,
    batch: int,
    *,
    generator: torch.Generator,
    factor: float = DEFAULT_DIVERSITY_FACTOR,
    method: str = DEFAULT_DIVERSITY,
    labeled_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions of ``batch`` distinct rows among ``scores`` ``[M]`` / ``features`` ``[M, D]``,
    highest score first: the top ``ceil(factor * batch)`` by score spread out by ``method``
    (``"k-means"`` or ``"k-centre"``; ``labeled_features`` ``[L, D]`` are the k-centre's
    existing centres). ``generator`` seeds the k-means."""
    if method not in DIVERSITY_METHODS:
        raise ValueError(f"unknown diversity method {method!r}; one of {DIVERSITY_METHODS}")
    batch = min(batch, len(scores))
    candidates = top_scores(scores, min(len(scores), max(batch, math.ceil(factor * batch))))
    if len(candidates) <= batch or batch == 0:
        return candidates[:batch]
    candidate_features = features[candidates].float()
    if method == "k-centre":
        labeled = (labeled_features.float() if labeled_features is not None
                   else candidate_features[:0])
        together = torch.cat([labeled, candidate_features])
        picks = k_centre_greedy(together, torch.arange(len(labeled)), batch)
        chosen = candidates[picks - len(labeled)]
    else:
        clusters = kmeans(candidate_features, batch, generator=generator).assignments
        # in each cluster, its highest-scoring candidate: candidates are sorted by score, so
        # that is the cluster's first member
        first = torch.full((batch,), len(candidates), dtype=torch.long)
        first.scatter_reduce_(0, clusters, torch.arange(len(candidates)), reduce="amin")
        chosen = candidates[first[first < len(candidates)]]
    return chosen[top_scores(scores[chosen], len(chosen))]
