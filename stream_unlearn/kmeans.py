"""KMeans: k-means++ (by hash-keyed races) then Lloyd, refit on every change.

The exact-contract baseline: the slow way to forget, against which DCKMeans
and QKMeans are measured and with whose loss theirs is compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import UnlearningModel
from .hashing import seed_key
from .lloyd import fit_one
from .validation import MAX_ID_BYTES, check_int


class KMeans(UnlearningModel):
    """Exact k-means++/Lloyd over the held set; any event triggers a full refit."""

    algorithm = "kmeans"

    def __init__(self, k: int = 8, seed: int = 0, max_iter: int = 100, max_id_bytes: int = MAX_ID_BYTES) -> None:
        self.max_iter = check_int("max_iter", max_iter, 1)
        super().__init__(k=k, seed=seed, max_id_bytes=max_id_bytes)
        self.n_iter_ = 0

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed, "max_iter": self.max_iter, "max_id_bytes": self.max_id_bytes}

    def _added(self, ids: Sequence[str], keys: np.ndarray, X: np.ndarray, buckets: np.ndarray) -> None:
        self._dirty = True

    def _removed(self, point_id: str, key: np.uint64, vector: np.ndarray, bucket: int) -> None:
        self._dirty = True

    def _recompute(self) -> np.ndarray:
        if len(self._store) == 0:
            return np.empty((0, self._store.n_features or 0))
        keys, X, _ = self._store.canonical()
        result = fit_one(X, np.ones(len(X)), keys, self.k, self.max_iter, seed_key(self.seed, 2))
        self.n_iter_ = int(result.n_iter[0])
        return result.centroids[0]

    def _cache_state(self) -> dict[str, Any]:
        return {"n_iter": self.n_iter_}

    def _load_cache(self, cache: dict[str, Any]) -> None:
        self.n_iter_ = int(cache.get("n_iter", 0))
