"""Clustering of feature matrices (arrays in, labels out).

PCA-whitening + L2-normalisation, faiss and torch k-means with filling of empty clusters, k-means on a sample,
hierarchical and distributed k-means, Sinkhorn-Knopp, and the clustering metrics (`cluster.metrics`).

This package never imports a model, a method or the engine, so it can be tested and benchmarked on its own.
"""

from deepcluster.cluster.kmeans import KMeansResult, assign, fill_empty_clusters, kmeans, kmeans_on_sample
from deepcluster.cluster.preprocess import PCAWhitening, as_float32_matrix, l2_normalize, pca_whiten

__all__ = [
    "KMeansResult",
    "PCAWhitening",
    "as_float32_matrix",
    "assign",
    "fill_empty_clusters",
    "kmeans",
    "kmeans_on_sample",
    "l2_normalize",
    "pca_whiten",
]
