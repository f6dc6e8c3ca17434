"""Clustering algorithms and their metrics, usable without the engine."""

from fewlabels.clustering.assignment import linear_sum_assignment
from fewlabels.clustering.kmeans import KMeansResult, cluster_means, kmeans, nearest_centroids
from fewlabels.clustering.metrics import (
    ClusterScores,
    adjusted_rand_index,
    cluster_scores,
    clusters_in_use,
    contingency_table,
    hungarian_accuracy,
    match_clusters_to_classes,
    normalized_mutual_information,
    purity,
)

__all__ = [
    "ClusterScores",
    "KMeansResult",
    "adjusted_rand_index",
    "cluster_means",
    "cluster_scores",
    "clusters_in_use",
    "contingency_table",
    "hungarian_accuracy",
    "kmeans",
    "linear_sum_assignment",
    "match_clusters_to_classes",
    "nearest_centroids",
    "normalized_mutual_information",
    "purity",
]
