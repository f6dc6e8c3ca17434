"""`fewlabels clusters`: a picture of the clusters a run finds, one row per cluster.

The clusters come from the method's own cluster head when it has one (DeepCluster, SeLa,
SwAV; ``--head`` chooses which), else from k-means on the run's L2-normalised features. Each
row shows the cluster's images nearest its centre in that feature space (the k-means
centroid, or for a head the mean of its images' features), with the cluster's size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fewlabels.clustering import kmeans
from fewlabels.clustering.kmeans import cluster_means
from fewlabels.commands.arguments import (
    DATA_HELP,
    add_accelerator_option,
    add_on_corrupt_option,
    number,
    positive_int,
)
from fewlabels.commands.evaluate import evaluation_device
from fewlabels.data import load_dataset
from fewlabels.data.imageset import ImageSet
from fewlabels.engine.checkpoint import checkpoint_path
from fewlabels.errors import UserError
from fewlabels.evaluate import BackboneFeatures, FeatureCache, file_digest
from fewlabels.evaluate.clusters import HeadClusters
from fewlabels.report.cluster_grid import GridRow, choose_rows, draw_cluster_grid
from fewlabels.runs import describe, load_method, load_pretrained

DEFAULT_CLUSTERS = 10  # k-means on data without classes
DEFAULT_PER_CLUSTER = 10
DEFAULT_ROWS = 20


def add_parser(subparsers: Any, argv: list[str]) -> None:  # noqa: ARG001
    parser = subparsers.add_parser(
        "clusters", help="a grid of each cluster's images nearest its centre, with its size",
        description="Cluster a run's images, with the method's own cluster head when it has "
                    "one (DeepCluster, SeLa, SwAV) or else k-means on its L2-normalised "
                    "features, and draw one row per cluster (the largest first): the images "
                    "nearest the cluster's centre, with its size and its most common class.")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder (or checkpoint.pt) made by fewlabels pretrain")
    parser.add_argument("--data", default=None,
                        help=f"{DATA_HELP} (default: the data the run was pretrained on)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--part", choices=["train", "test"], default="train",
                        help="which part of the data to cluster (default train)")
    parser.add_argument("--clusters", type=positive_int, default=None,
                        help="k-means with this many clusters, even when the method has a "
                             "head (default: the method's head, else k-means with k = the "
                             f"number of classes, or {DEFAULT_CLUSTERS} without classes)")
    parser.add_argument("--head", default=None,
                        help="which of the method's cluster heads to draw (default its first)")
    parser.add_argument("--per-cluster", type=positive_int, default=DEFAULT_PER_CLUSTER,
                        help=f"images per row (default {DEFAULT_PER_CLUSTER})")
    parser.add_argument("--rows", type=positive_int, default=DEFAULT_ROWS,
                        help=f"at most this many clusters, the largest first (default "
                             f"{DEFAULT_ROWS})")
    parser.add_argument("--representation", default=None,
                        help="which network's features, e.g. backbone or teacher (default: "
                             "the one the run declares)")
    parser.add_argument("--seed", type=number(int, 0), default=0,
                        help="seed of the k-means initialisation (default 0)")
    add_accelerator_option(parser, "for the features")
    add_on_corrupt_option(parser)


@dataclass
class ClusterPicture:
    """What was drawn: the PNG, where the clusters came from ("k-means" or "head NAME"), K,
    the rows, and the L2-normalised features, assignments and centres they were chosen by."""

    path: Path
    clusters_from: str
    num_clusters: int
    rows: list[GridRow]
    features: torch.Tensor
    assignments: torch.Tensor
    centres: torch.Tensor


def run(args: Any) -> ClusterPicture:
    if args.clusters is not None and args.head is not None:
        raise UserError("--clusters asks for k-means and --head for the method's head; "
                        "give one of them")
    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out {args.out} should be a .png file")
    pretrained = load_pretrained(args.checkpoint, args.representation)
    checkpoint, info = pretrained.checkpoint, pretrained.data
    method, _ = load_method(args.checkpoint)
    heads = method.cluster_heads()
    if args.head is not None and args.head not in heads:
        available = ", ".join(heads) if heads else "none (k-means is used without --head)"
        raise UserError(f"{checkpoint['run']['method']} runs have no cluster head "
                        f"{args.head!r}; heads: {available}")
    spec = args.data or checkpoint["run"]["data"]["spec"]
    images = _images(spec, args.part, info.image_size, info.channels, args.on_corrupt)
    device = evaluation_device(args.accelerator)
    run_dir = Path(args.checkpoint)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    cache = FeatureCache(run_dir / "features")
    # the same key as fewlabels evaluate's, so either command reuses the other's features
    cache_key = {"checkpoint": file_digest(checkpoint_path(args.checkpoint)), "dataset": spec,
                 "image_size": info.image_size}
    features = BackboneFeatures(
        pretrained.network, info.mean, info.std, cache=cache, device=device,
        cache_key={**cache_key, "representation": pretrained.representation},
    )(images, args.part)
    points = F.normalize(features.float(), dim=1)

    head = args.head or (next(iter(heads)) if heads and args.clusters is None else None)
    if head is not None:
        assignments, num_clusters = HeadClusters(
            heads[head], info.mean, info.std, cache=cache, device=device,
            cache_key={**cache_key, "cluster_head": head})(images, args.part)
        centres = cluster_means(points, assignments, num_clusters)
        clusters_from = f"head {head}"
    else:
        num_clusters = args.clusters or images.num_classes or DEFAULT_CLUSTERS
        if num_clusters > len(images):
            raise UserError(f"cannot make {num_clusters} clusters of {len(images)} images; "
                            "give a smaller --clusters")
        result = kmeans(points, num_clusters, generator=torch.Generator().manual_seed(args.seed))
        assignments, centres = result.assignments, result.centroids
        clusters_from = "k-means"

    rows = [_captioned(row, assignments, images) for row in
            choose_rows(points, assignments, centres, per_cluster=args.per_cluster,
                        max_rows=args.rows)]
    in_use = int((torch.bincount(assignments, minlength=num_clusters) > 0).sum())
    shown = f", the largest {len(rows)} shown" if len(rows) < in_use else ""
    title = (f"{checkpoint['run']['method']}: {clusters_from}, {num_clusters} clusters "
             f"({in_use} in use{shown}), {len(images):,} {args.part} images of {spec}")
    path = draw_cluster_grid(images.images, rows, args.out, per_cluster=args.per_cluster,
                             title=title)
    print(f"clusters of {describe(checkpoint)}: {clusters_from}, {in_use} of {num_clusters} "
          f"in use; {len(rows)} rows written to {path}")
    return ClusterPicture(path, clusters_from, num_clusters, rows, points, assignments, centres)


def _images(spec: str, part: str, image_size: int, channels: int, on_corrupt: str) -> ImageSet:
    bundle = load_dataset(spec, image_size=image_size, on_corrupt=on_corrupt)
    images = bundle.train if part == "train" else bundle.test
    if images is None or len(images) == 0:
        raise UserError(f"{spec} has no {part} part; choose --part "
                        f"{'test' if part == 'train' else 'train'}")
    if images.channels != channels:
        raise UserError(f"{spec} has {images.channels}-channel images but the run was trained "
                        f"on {channels}-channel images; give data like it")
    return images


def _captioned(row: GridRow, assignments: torch.Tensor, images: ImageSet) -> GridRow:
    """The row with its most common class and that class's share of the cluster, when the
    images have labels (they play no part in the clustering)."""
    if images.labels is None or not images.class_names:
        return row
    labels = images.labels[assignments == row.cluster]
    counts = torch.bincount(labels, minlength=len(images.class_names))
    common = int(counts.argmax())
    share = 100 * int(counts[common]) / max(1, len(labels))
    return dataclasses.replace(row, caption=f"{share:.0f}% {images.class_names[common]}")
