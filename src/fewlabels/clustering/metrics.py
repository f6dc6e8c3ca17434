"""How well cluster assignments agree with true classes: NMI, adjusted Rand index,
Hungarian-matched accuracy, purity and the number of clusters in use.

All are computed from the contingency table ``n[i, j]`` (points in cluster ``i`` and class
``j``; row sums ``a_i``, column sums ``b_j``, ``n`` points in all), over the clusters and
classes that occur, in float64 with NumPy. None depends on how clusters are numbered.

- **NMI** ``= I(U; V) / ((H(U) + H(V)) / 2)``: mutual information normalised by the
  arithmetic mean of the two entropies, scikit-learn's default (``average_method=
  "arithmetic"``) and what DeepCluster, IIC and SCAN report. 1 when the partitions are the
  same up to renaming, 0 when independent. Both partitions a single group: 1.
- **ARI** (Hubert & Arabie 1985): ``(sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) +
  sum_j C(b_j, 2)) / 2 - E)`` with ``E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2)``, the
  Rand index corrected for chance: 1 for identical partitions, 0 in expectation for
  independent ones, negative below chance. Both partitions trivial in the same way (one
  group, or all singletons): 1, as scikit-learn.
- **Hungarian-matched accuracy**: the fraction of points whose cluster is matched to their
  class by the best one-to-one matching of clusters to classes (maximising the matched
  counts; :func:`~fewlabels.clustering.assignment.linear_sum_assignment`), the protocol of
  DeepCluster, IIC and SCAN with as many clusters as classes. With more clusters than classes
  the unmatched clusters' points count as wrong (so over-clustering is penalised); with fewer,
  the unmatched classes' points do.
- **Purity**: each cluster takes its majority class (many to one), the usual score for
  over-clustering; it equals the matched accuracy when every cluster's majority class is
  different, and grows to 1 as clusters become singletons, so read it with the number of
  clusters.
- **Clusters in use**: how many clusters have at least one point (a collapsed method puts
  everything in a few).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from fewlabels.clustering.assignment import linear_sum_assignment

Labels = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class ClusterScores:
    """The scores of one clustering against the true classes (fractions in [0, 1], ARI in
    [-1, 1]); ``clusters_in_use`` of ``clusters`` (K, or the number used when unknown)."""

    nmi: float
    ari: float
    accuracy: float
    purity: float
    clusters_in_use: int
    clusters: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def contingency_table(clusters: Labels, classes: Labels) -> np.ndarray:
    """Counts ``[clusters that occur, classes that occur]`` of points in each pair, rows and
    columns in increasing order of their ids."""
    cluster_ids, class_ids = _as_numpy(clusters), _as_numpy(classes)
    if cluster_ids.shape != class_ids.shape or cluster_ids.ndim != 1:
        raise ValueError(f"clusters and classes must be two label vectors of one length, got "
                         f"shapes {cluster_ids.shape} and {class_ids.shape}")
    if cluster_ids.size == 0:
        raise ValueError("cannot score a clustering of no points")
    _, rows = np.unique(cluster_ids, return_inverse=True)
    _, columns = np.unique(class_ids, return_inverse=True)
    table = np.zeros((rows.max() + 1, columns.max() + 1), dtype=np.int64)
    np.add.at(table, (rows, columns), 1)
    return table


def normalized_mutual_information(clusters: Labels, classes: Labels) -> float:
    """NMI with the arithmetic mean of the entropies (see the module's docstring)."""
    return _nmi(contingency_table(clusters, classes))


def adjusted_rand_index(clusters: Labels, classes: Labels) -> float:
    """The adjusted Rand index (see the module's docstring)."""
    return _ari(contingency_table(clusters, classes))


def hungarian_accuracy(clusters: Labels, classes: Labels) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes."""
    return _matched_accuracy(contingency_table(clusters, classes))


def match_clusters_to_classes(clusters: Labels, classes: Labels) -> dict[int, int]:
    """The best one-to-one matching, as ``{cluster id: class id}`` (clusters left unmatched
    are absent)."""
    cluster_ids, class_ids = np.unique(_as_numpy(clusters)), np.unique(_as_numpy(classes))
    table = contingency_table(clusters, classes)
    rows, columns = linear_sum_assignment(-table)
    return {int(cluster_ids[r]): int(class_ids[c]) for r, c in zip(rows, columns, strict=True)}


def purity(clusters: Labels, classes: Labels) -> float:
    """Accuracy when every cluster takes its majority class."""
    table = contingency_table(clusters, classes)
    return float(table.max(1).sum() / table.sum())


def clusters_in_use(clusters: Labels) -> int:
    """How many distinct clusters have at least one point."""
    return int(np.unique(_as_numpy(clusters)).size)


def cluster_scores(clusters: Labels, classes: Labels, num_clusters: int | None = None
                   ) -> ClusterScores:
    """Every score at once, from one contingency table."""
    table = contingency_table(clusters, classes)
    in_use = table.shape[0]
    return ClusterScores(nmi=_nmi(table), ari=_ari(table), accuracy=_matched_accuracy(table),
                         purity=float(table.max(1).sum() / table.sum()), clusters_in_use=in_use,
                         clusters=num_clusters if num_clusters is not None else in_use)


def _as_numpy(labels: Labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False)


def _entropy(counts: np.ndarray) -> float:
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def _nmi(table: np.ndarray) -> float:
    total = table.sum()
    cluster_entropy, class_entropy = _entropy(table.sum(1)), _entropy(table.sum(0))
    if cluster_entropy == 0 and class_entropy == 0:
        return 1.0
    joint = table[table > 0] / total
    outer = np.outer(table.sum(1), table.sum(0))[table > 0] / total**2
    mutual_information = float((joint * np.log(joint / outer)).sum())
    nmi = mutual_information / ((cluster_entropy + class_entropy) / 2)
    return float(min(max(nmi, 0.0), 1.0))


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def _ari(table: np.ndarray) -> float:
    total = float(table.sum())
    both = _pairs(table)
    same_cluster, same_class = _pairs(table.sum(1)), _pairs(table.sum(0))
    expected = same_cluster * same_class / (total * (total - 1) / 2) if total > 1 else 0.0
    maximum = (same_cluster + same_class) / 2
    if maximum == expected:  # both trivial the same way: identical partitions
        return 1.0
    return float((both - expected) / (maximum - expected))


def _matched_accuracy(table: np.ndarray) -> float:
    rows, columns = linear_sum_assignment(-table)
    return float(table[rows, columns].sum() / table.sum())
