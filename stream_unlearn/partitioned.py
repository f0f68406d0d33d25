"""One DC subtree per Kafka partition, and the global model merged from them.

The first level of the DC tree under the root is the Kafka partition, and a
partition's subtree is a function of that partition's points alone: a point's
leaf is ``h(seed, id) mod n_leaves`` whatever the partition, and an internal
node's races are keyed by its index inside the partition. So the subtree of
partition ``p`` of a ``DCKMeans(n_partitions=P)`` is bit for bit the whole
tree (below the root) of a ``DCKMeans(n_partitions=1)`` holding only the
points of ``p`` (``tests/test_scale_out.py`` pins this down). That is what a
worker keeps per owned partition: it snapshots, restores and drops one
partition without touching the others, and its summary is that model's top
node. The global model is :func:`stream_unlearn.summaries.merge` of the
partitions' summaries, equal to the root of one ``DCKMeans(n_partitions=P)``
holding every point.

Pure numpy, no Kafka.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .dc_kmeans import DCKMeans
from .summaries import GlobalModel, PartitionSummary, merge

__all__ = [
    "PARTITION_DIR_RE",
    "GlobalView",
    "global_params",
    "merge_latest",
    "new_partition_model",
    "partition_dir",
    "partition_dirs",
    "partition_summary",
    "position",
]

PARTITION_DIR_RE = re.compile(r"^partition-(\d+)$")


def partition_dir(root: str | Path, partition: int) -> Path:
    """``<root>/partition-<p>``: the snapshot store of one partition."""
    return Path(root) / f"partition-{int(partition)}"


def partition_dirs(root: str | Path) -> dict[int, Path]:
    """The partition stores under a snapshot root, by partition number."""
    root = Path(root)
    if not root.is_dir():
        return {}
    out = {}
    for child in root.iterdir():
        m = PARTITION_DIR_RE.match(child.name)
        if m and child.is_dir() and not child.is_symlink():
            out[int(m.group(1))] = child
    return dict(sorted(out.items()))


def new_partition_model(params: Mapping[str, Any]) -> DCKMeans:
    """An empty one-partition DC model with the tree parameters ``params`` (n_partitions ignored)."""
    return DCKMeans(**{**params, "n_partitions": 1})


def global_params(model: DCKMeans, n_partitions: int) -> dict[str, Any]:
    """Parameters of the global ``DCKMeans(n_partitions=P)`` a partition model belongs to."""
    return {**model.get_params(), "n_partitions": int(n_partitions)}


def partition_summary(model: DCKMeans, partition: int, n_partitions: int, offsets: tuple[int, int],
                      dim: int | None = None) -> PartitionSummary | None:
    """The summary of partition ``partition`` held by the one-partition ``model``.

    A model that never saw a point has no dimension: its summary is all zero
    weights in dimension ``dim`` (what an empty partition is in the global
    tree), or None if ``dim`` is unknown too.
    """
    if model.n_partitions != 1:
        raise ValueError("partition models have n_partitions=1")
    params = global_params(model, n_partitions)
    if model.n_features_in_ is None:
        if not dim:
            return None
        C, W = np.zeros((model.k, int(dim))), np.zeros(model.k)
    else:
        C, W = model.partition_summaries()
        C, W = C[0], W[0]
    return PartitionSummary(int(partition), int(n_partitions), C, W, model.n_points_,
                            (int(offsets[0]), int(offsets[1])), params)


def merge_latest(summaries: Mapping[int, PartitionSummary]) -> GlobalModel:
    """:func:`~stream_unlearn.summaries.merge` of ``{partition: summary}``.

    Raises :class:`~stream_unlearn.summaries.SummaryError` on an empty
    mapping or summaries of different configurations.
    """
    return merge(dict(summaries))


def position(model: GlobalModel) -> int:
    """Records of the input topics the merged model covers (a monotone version number)."""
    return int(sum(a + b for a, b in model.partitions.values()))


class GlobalView:
    """The global model over one-partition models ``{p: DCKMeans}`` (read-only view).

    Offers what callers of a single model use: ``centroids_``, ``n_points_``,
    ``n_features_in_``, ``held()``, ``loss()``, ``verify()``, ``get_params()``.
    ``n_partitions`` is the partition count of the input topics; partitions
    without a model count as empty.
    """

    algorithm = "dc"

    def __init__(self, models: Mapping[int, DCKMeans], n_partitions: int, params: Mapping[str, Any]) -> None:
        self.models = dict(sorted(models.items()))
        self.n_partitions = int(n_partitions)
        self._params = {**params, "n_partitions": self.n_partitions}
        self.k = int(self._params["k"])
        self.seed = int(self._params["seed"])

    def get_params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def n_points_(self) -> int:
        return sum(m.n_points_ for m in self.models.values())

    def __len__(self) -> int:
        return self.n_points_

    @property
    def n_features_in_(self) -> int | None:
        return next((m.n_features_in_ for m in self.models.values() if m.n_features_in_ is not None), None)

    def summaries(self) -> dict[int, PartitionSummary]:
        d = self.n_features_in_
        out = {}
        for p, m in self.models.items():
            s = partition_summary(m, p, self.n_partitions, (0, 0), d)
            if s is not None:
                out[p] = s
        return out

    @property
    def centroids_(self) -> np.ndarray:
        summaries = self.summaries()
        if not summaries:
            return np.empty((0, 0))
        return merge_latest(summaries).centroids

    def held(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        ids: list[str] = []
        Xs, parts = [], []
        for p, m in self.models.items():
            i, X, _ = m.held()
            ids += i
            Xs.append(X)
            parts.append(np.full(len(i), p, dtype=np.int64))
        d = self.n_features_in_ or 0
        X = np.concatenate(Xs) if Xs else np.empty((0, d))
        return ids, X, (np.concatenate(parts) if parts else np.empty(0, dtype=np.int64))

    def loss(self) -> float:
        C = self.centroids_
        if self.n_points_ == 0 or len(C) == 0:
            return 0.0
        return sum(m.sq_dist_sum(C) for m in self.models.values()) / self.n_points_

    def refit(self) -> DCKMeans:
        """``F(S)``: one fresh ``DCKMeans(n_partitions=P)`` on every held point."""
        model = DCKMeans(**self._params)
        ids, X, parts = self.held()
        if ids:
            model.insert(ids, X, parts if self.n_partitions > 1 else None)
        model.flush()
        return model

    def verify(self) -> bool:
        """Every subtree equals a refit of its points, and the merged root a fresh global fit."""
        if not all(m.verify() for m in self.models.values()):
            return False
        if self.n_points_ == 0:
            return len(self.centroids_) == 0
        return bool(np.array_equal(self.centroids_, self.refit().centroids_))
