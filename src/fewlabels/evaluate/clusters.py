"""The clustering protocol: how well a representation's clusters agree with the true classes.

Two kinds of rows, scored on the test part with NMI, adjusted Rand index, Hungarian-matched
accuracy (one to one), purity and the clusters in use (:mod:`fewlabels.clustering.metrics`):

- **k-means on the features**, for every representation (the method's and the raw-pixel and
  random-initialisation baselines): features are L2-normalised (as kNN and the probe use
  them, so k-means groups by direction, the cosine geometry these methods train), k-means
  with k = the number of classes is fitted on the train part's features (no labels involved)
  and every test image goes to its nearest centroid. For each seed, k-means++ is restarted
  ``restarts`` times from one generator seeded by that seed and the restart of lowest inertia
  is kept (a choice that uses no labels, as scikit-learn's ``n_init``); the row reports the
  mean and sample std over seeds.
- **the method's own clusters** (``Method.cluster_heads()``: DeepCluster's classifier, SeLa's
  heads, SwAV's prototypes): the arg-max of the head's scores for every test image, with K
  the head's number of outputs. Deterministic, so one value.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.clustering.kmeans import kmeans, nearest_centroids
from fewlabels.clustering.metrics import ClusterScores, cluster_scores
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import UserError
from fewlabels.evaluate.features import FeatureCache, FeatureProvider, extract_features

DEFAULT_RESTARTS = 5
DEFAULT_ITERATIONS = 100
METRICS = ("nmi", "ari", "accuracy", "purity", "clusters_in_use")
Representation = FeatureProvider | tuple[torch.Tensor, torch.Tensor]


class ClusterProvider(Protocol):
    """Anything that gives the cluster of every image of a part, and the number of clusters."""

    def __call__(self, images: ImageSet, part: str) -> tuple[torch.Tensor, int]: ...


class _ArgMax(nn.Module):
    """A head's arg-max as a float column, so feature extraction can batch and cache it."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images).argmax(1, keepdim=True).float()


class HeadClusters:
    """A :class:`ClusterProvider` for a method's cluster head (normalised images -> scores
    [N, K]): the arg-max of its scores, computed in batches in eval mode (never holding all
    N x K scores: SwAV has thousands of prototypes) and cached when a cache is given."""

    def __init__(self, head: nn.Module, mean: Sequence[float], std: Sequence[float], *,
                 cache: FeatureCache | None = None, cache_key: dict[str, Any] | None = None,
                 batch_size: int = 1024, device: str | torch.device = "cpu") -> None:
        if cache is not None and cache_key is None:
            raise ValueError("HeadClusters needs a cache_key to use a cache")
        self.head, self.mean, self.std = head, list(mean), list(std)
        self.cache, self.cache_key = cache, cache_key
        self.batch_size, self.device = batch_size, device

    def __call__(self, images: ImageSet, part: str) -> tuple[torch.Tensor, int]:
        clusters = int(extract_features(self.head, images.images[:1], self.mean, self.std,
                                        device=self.device).shape[1])

        def compute() -> torch.Tensor:
            # the wrapper takes the head's mode, so the head is left as it was found
            wrapped = _ArgMax(self.head).train(self.head.training)
            return extract_features(wrapped, images.images, self.mean, self.std,
                                    batch_size=self.batch_size, device=self.device)[:, 0]

        if self.cache is None or self.cache_key is None:
            return compute().long(), clusters
        key = {**self.cache_key, "part": part, "count": len(images),
               "shape": list(images.images.shape[1:]), "kind": "cluster assignments"}
        return self.cache.get_or_compute(key, compute).long(), clusters


@dataclass
class ClusterRow:
    """The scores of one clustering of the test part: ``representation`` (whose features),
    ``clusters_from`` ("k-means" or "head NAME"), K, and one :class:`ClusterScores` per
    seed (a single one, without seed, for a head) with per-seed details."""

    representation: str
    clusters_from: str
    num_clusters: int
    seeds: list[int] = field(default_factory=list)
    scores: list[ClusterScores] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [float(getattr(score, metric)) for score in self.scores]

    def mean(self, metric: str) -> float:
        values = self.values(metric)
        return math.fsum(values) / len(values) if values else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over seeds; 0 for a single value."""
        values = self.values(metric)
        if len(values) < 2:
            return 0.0 if values else math.nan
        mean = self.mean(metric)
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "representation": self.representation, "clusters_from": self.clusters_from,
            "num_clusters": self.num_clusters, "seeds": list(self.seeds),
            **{metric: {"mean": self.mean(metric), "std": self.std(metric)}
               for metric in METRICS},
            "scores": [score.to_dict() for score in self.scores],
            "details": list(self.details),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterRow:
        return cls(data["representation"], data["clusters_from"], data["num_clusters"],
                   list(data["seeds"]), [ClusterScores(**s) for s in data["scores"]],
                   list(data["details"]))


@dataclass
class ClusterResults:
    """Every row of the clustering protocol and the settings it ran with."""

    rows: list[ClusterRow] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, representation: str, clusters_from: str = "k-means") -> ClusterRow:
        for row in self.rows:
            if (row.representation, row.clusters_from) == (representation, clusters_from):
                return row
        raise KeyError((representation, clusters_from))

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": [row.to_dict() for row in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterResults:
        return cls([ClusterRow.from_dict(r) for r in data["rows"]], dict(data["settings"]))

    def table(self) -> str:
        return format_cluster_table(self)


def evaluate_clusters(
    representations: Mapping[str, Representation],
    train: ImageSet,
    test: ImageSet,
    *,
    heads: Mapping[str, Mapping[str, ClusterProvider | torch.Tensor]] | None = None,
    seeds: Sequence[int] = (0,),
    restarts: int = DEFAULT_RESTARTS,
    iterations: int = DEFAULT_ITERATIONS,
    log: Callable[[str], None] | None = None,
) -> ClusterResults:
    """Score k-means on every representation's features, and every head's own clusters.

    ``representations`` maps a name to a :class:`FeatureProvider` (called with the train and
    the test part) or to precomputed ``(train_features, test_features)``. ``heads`` maps a
    representation's name to its heads, each a :class:`ClusterProvider` (such as
    :class:`HeadClusters`) or the test images' cluster scores ``[N, K]``. Only the test
    part's labels are read."""
    if test.labels is None:
        raise UserError("the clustering protocol needs labels on the test part")
    if not seeds:
        raise UserError("the clustering protocol needs at least one seed")
    if restarts < 1:
        raise ValueError("k-means needs at least one restart")
    say = log or (lambda message: None)
    labels = test.labels.cpu()
    num_classes = max(test.num_classes, train.num_classes, int(labels.max()) + 1)
    rows = []
    for name, representation in representations.items():
        train_features, test_features = _features(name, representation, train, test)
        row = ClusterRow(name, "k-means", num_classes)
        for seed in seeds:
            assignments, detail = kmeans_test_clusters(
                train_features, test_features, num_classes, seed=seed, restarts=restarts,
                iterations=iterations)
            score = cluster_scores(assignments, labels, num_clusters=num_classes)
            row.seeds.append(seed)
            row.scores.append(score)
            row.details.append(detail)
            say(f"clusters: {name} k-means seed {seed}: NMI {100 * score.nmi:.1f}, "
                f"ARI {100 * score.ari:.1f}, accuracy {100 * score.accuracy:.1f}")
        rows.append(row)
        for head, scores in (heads or {}).get(name, {}).items():
            if isinstance(scores, torch.Tensor):
                assignments, clusters = scores.argmax(1), scores.shape[1]
            else:
                assignments, clusters = scores(test, "test")
            if assignments.shape != (len(test),):
                raise ValueError(f"head {head!r} gave {tuple(assignments.shape)} assignments "
                                 f"for {len(test)} test images")
            score = cluster_scores(assignments.cpu(), labels, num_clusters=clusters)
            rows.append(ClusterRow(name, f"head {head}", clusters, [], [score], [{}]))
            say(f"clusters: {name} head {head}: NMI {100 * score.nmi:.1f}, "
                f"{score.clusters_in_use} of {clusters} clusters in use")
    settings = {
        "test": test.name, "train": train.name, "test_images": len(test),
        "train_images": len(train), "num_classes": num_classes,
        "kmeans": {"clusters": num_classes, "seeds": list(seeds), "restarts": restarts,
                   "iterations": iterations, "initialisation": "k-means++",
                   "kept": "lowest inertia of the restarts",
                   "features": "L2-normalised", "fitted_on": "train part, without labels",
                   "scored_on": "test part, each image at its nearest centroid"},
        "heads": "arg-max of the method's cluster head on the test part",
        "metrics": {"nmi": "mutual information / arithmetic mean of the two entropies",
                    "ari": "adjusted Rand index (Hubert & Arabie 1985)",
                    "accuracy": "best one-to-one matching of clusters to classes; points of "
                                "unmatched clusters or classes count as wrong",
                    "purity": "every cluster takes its majority class",
                    "clusters_in_use": "clusters with at least one test image"},
    }
    return ClusterResults(rows, settings)


def kmeans_test_clusters(
    train_features: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    *,
    seed: int,
    restarts: int = DEFAULT_RESTARTS,
    iterations: int = DEFAULT_ITERATIONS,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit k-means on the L2-normalised train features (the best of ``restarts`` k-means++
    runs from a generator seeded with ``seed``) and give every L2-normalised test feature
    its nearest centroid; returns the test assignments and what the fit did."""
    train_points = F.normalize(train_features.float(), dim=1)
    test_points = F.normalize(test_features.float(), dim=1)
    if k > len(train_points):
        raise UserError(f"k-means with {k} clusters needs at least {k} train images, "
                        f"got {len(train_points)}")
    generator = torch.Generator(device=train_points.device).manual_seed(seed)
    best = None
    inertias = []
    for _ in range(restarts):
        result = kmeans(train_points, k, generator=generator, iterations=iterations)
        inertias.append(result.inertia)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    assignments, _ = nearest_centroids(test_points, best.centroids)
    detail = {"inertia": best.inertia, "inertias": inertias, "iterations": best.iterations,
              "reassigned_empty_clusters": best.reassigned,
              "train_clusters_in_use": int((best.cluster_sizes > 0).sum())}
    return assignments, detail


def _features(name: str, representation: Representation, train: ImageSet, test: ImageSet
              ) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(representation, tuple):
        train_features, test_features = representation
    else:
        train_features, test_features = representation(train, "train"), representation(test, "test")
    if len(train_features) != len(train) or len(test_features) != len(test):
        raise ValueError(
            f"representation {name!r} has {len(train_features)}/{len(test_features)} features "
            f"for {len(train)}/{len(test)} train/test images")
    return train_features.float().cpu(), test_features.float().cpu()


def format_cluster_table(results: ClusterResults) -> str:
    """One row per representation and source of clusters: K, then NMI, ARI, matched accuracy
    and purity in percent (mean ± sample std over k-means seeds) and the clusters in use."""
    header = ["representation", "clusters", "K", "NMI", "ARI", "accuracy", "purity", "in use"]
    lines = [header]
    for row in results.rows:
        lines.append([row.representation, row.clusters_from, str(row.num_clusters),
                      *(_percent(row, metric) for metric in ("nmi", "ari", "accuracy", "purity")),
                      f"{row.mean('clusters_in_use'):g}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: list[str]) -> str:
        left = [text.ljust(width) for text, width in zip(line[:2], widths[:2], strict=True)]
        right = [text.rjust(width) for text, width in zip(line[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    rendered = [render(header), "  ".join("-" * w for w in widths)]
    rendered += [render(line) for line in lines[1:]]
    kmeans_settings = results.settings.get("kmeans", {})
    seeds = ", ".join(str(s) for s in kmeans_settings.get("seeds", []))
    note = (f"Clustering of the test part (%), mean ± sample std over k-means seeds {seeds}. "
            "k-means: k = classes, on L2-normalised features, fitted on the train part (the "
            f"lowest inertia of {kmeans_settings.get('restarts', '?')} k-means++ restarts). "
            "head NAME: the arg-max of the method's own cluster head. NMI: normalised by the "
            "arithmetic mean of the entropies; accuracy: clusters matched to classes one to "
            "one (points of unmatched ones count as wrong); purity: each cluster takes its "
            "majority class; in use: clusters with test images.")
    rendered += textwrap.wrap(note, 100)
    return "\n".join(rendered)


def _percent(row: ClusterRow, metric: str) -> str:
    if not row.scores:
        return "-"
    if len(row.scores) == 1:
        return f"{100 * row.mean(metric):.1f}"
    return f"{100 * row.mean(metric):.1f} ± {100 * row.std(metric):.1f}"
