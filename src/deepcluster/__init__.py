"""deepcluster: unsupervised visual features by alternating clustering and classification."""
