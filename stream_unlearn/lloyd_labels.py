"""Lloyd labels kept from one full-data fit to the next, so a refit skips most distance passes.

A Q-k-means refit reruns quantized Lloyd on every held point. Each update
labels every point with its nearest centre, from the snapped centres the
update starts from. When a refit's update starts from the very same centres
(bit for bit) as that update of the last fit did, a point that has not changed
since has the same nearest centre, so only the points inserted since need
their distances. That is the common case: a certificate failing at one
update leaves the seeds, and often every start, unchanged. Either way the
labels are those a fresh fit computes, so the sums and centroids keep their
bits.

Points are matched by their 64-bit key (the canonical order's sort key); if
two held points share one, the cache is not used. The cache lives in memory
only: it never goes into a state or a snapshot.
"""

from __future__ import annotations

import numpy as np

from . import kernels

#: Drop the cache once the points inserted since the fit exceed this share of the points it labelled
#: (and at least _MIN_CHANGES): their keys are kept until the next refit, and a cache that old saves little.
_MAX_CHANGED_SHARE = 4
_MIN_CHANGES = 1024


class LloydLabels:
    """Per update of the last fit: the centres it started from and every point's label, by key."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._keys: np.ndarray | None = None
        self._starts: list[bytes] = []
        self._labels: list[np.ndarray] = []
        self._inserted: list[np.ndarray] = []
        self._n_inserted = 0

    def record(self, keys: np.ndarray, starts: list[np.ndarray], labels: list[np.ndarray]) -> None:
        """Keep a fit's labels: ``labels[t]`` of the points (canonical ``keys``) under centres ``starts[t]``."""
        self.clear()
        self._keys = keys
        self._starts = [np.ascontiguousarray(s, dtype=np.float64).tobytes() for s in starts]
        self._labels = labels

    def inserted(self, keys: np.ndarray) -> None:
        """Points with these keys joined (or replaced their vectors): their labels must be computed again."""
        if self._keys is None:
            return
        self._inserted.append(np.asarray(keys, dtype=np.uint64))
        self._n_inserted += len(keys)
        if self._n_inserted > max(_MIN_CHANGES, len(self._keys) // _MAX_CHANGED_SHARE):
            self.clear()

    def positions(self, keys: np.ndarray) -> np.ndarray | None:
        """For a refit of the points with canonical ``keys``: each one's row in the cache, -1 if it needs
        computing; None if the cache cannot serve it."""
        if self._keys is None:
            return None
        changed = np.sort(np.concatenate(self._inserted)) if self._inserted else np.empty(0, dtype=np.uint64)
        out = np.empty(len(keys), dtype=np.int64)
        return out if kernels.match_sorted_keys(self._keys, keys, changed, out) else None

    def labels(self, update: int, start: np.ndarray, X: np.ndarray, positions: np.ndarray | None) -> np.ndarray | None:
        """Every point's nearest centre in ``start`` at ``update``, from the cache where it provably
        holds; None if the cache started that update elsewhere."""
        if (positions is None or update >= len(self._starts)
                or np.ascontiguousarray(start, dtype=np.float64).tobytes() != self._starts[update]):
            return None
        out = np.empty(len(X), dtype=np.int64)
        kernels.labels_from(X, np.ascontiguousarray(start, dtype=np.float64), self._labels[update], positions, out)
        return out
