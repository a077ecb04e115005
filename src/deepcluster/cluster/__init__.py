"""Clustering of feature matrices (NumPy in, NumPy out).

PCA-whitening + L2-normalisation, faiss k-means, filling of empty clusters.

This package never imports torch, so it can be tested and benchmarked on its own.
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
