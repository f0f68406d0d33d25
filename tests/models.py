"""Model configurations the contract tests run against (small trees, so every level works)."""

from __future__ import annotations

from stream_unlearn import DCKMeans, KMeans, QKMeans

CONFIGS = {
    "kmeans": lambda k, seed: KMeans(k=k, seed=seed, max_iter=20),
    "dc": lambda k, seed: DCKMeans(k=k, seed=seed, n_leaves=5, fanout=2, max_iter=8),
    # with summary nodes of 2k centres between the leaves and each partition's top
    "dc-partitioned": lambda k, seed: DCKMeans(k=k, seed=seed, n_leaves=3, fanout=2, n_partitions=3, node_k=2 * k),
    "q": lambda k, seed: QKMeans(k=k, seed=seed, eps=0.3, max_iter=6),
    "q-coarse": lambda k, seed: QKMeans(k=k, seed=seed, eps=2.0, gamma=0.5, max_iter=4),
}
