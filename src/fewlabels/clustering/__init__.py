"""Clustering algorithms and their metrics, usable without the engine."""

from fewlabels.clustering.kmeans import KMeansResult, kmeans, nearest_centroids

__all__ = ["KMeansResult", "kmeans", "nearest_centroids"]
