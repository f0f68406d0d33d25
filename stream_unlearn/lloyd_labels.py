"""Lloyd labels kept from one full-data fit to the next, so a refit skips most distance passes.

A Q-k-means refit reruns quantized Lloyd on every held point. Each update
labels every point with its nearest centre, from the snapped centres the
update starts from. When a refit's update starts from the very same centres
(bit for bit) as that update of the last fit did, a point that has not changed
since has the same nearest centre, so only the points inserted since need
their distances. That is the common case: a certificate failing at one
update leaves the seeds, and often every start, unchanged.

When the update starts elsewhere (the updates after the one that changed),
the centres have moved by about a grid step. Each label comes with its
margin, a Hamerly bound of how far the centres may move before the label
could change (:func:`kernels.nearest_margin`), exact against the centres it
was computed under: its anchor. A label whose margin exceeds the centres'
moves from its anchor holds, margin and anchor kept, so centres that move
back and forth over many refits do not wear the bounds down; only the rest
are computed. Either way the labels are those a fresh fit computes, so the
sums and centroids keep their bits.

Points are matched by their 64-bit key (the canonical order's sort key); if
two held points share one, the cache is not used. The cache lives in memory
only: it never goes into a state or a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels

#: Drop the cache once the points inserted since the fit exceed this share of the points it labelled
#: (and at least _MIN_CHANGES): their keys are kept until the next refit, and a cache that old saves little.
_MAX_CHANGED_SHARE = 4
_MIN_CHANGES = 1024
#: Anchors kept per update; beyond, the labels of the least used ones are computed again.
_MAX_ANCHORS = 8


@dataclass(frozen=True)
class LabelBounds:
    """Why an update's labels may hold under other centres: each point's margin (-inf: only under the
    same centres), exact against the centres ``anchors[anchor[i]]`` ((G, k, d)) it was computed under."""

    margins: np.ndarray
    anchor: np.ndarray
    anchors: np.ndarray

    @classmethod
    def fresh(cls, margins: np.ndarray, centres: np.ndarray) -> LabelBounds:
        """Margins all computed under ``centres``."""
        return cls(margins, np.zeros(len(margins), dtype=np.int16), np.array(centres, dtype=np.float64, order="C")[None])


class LloydLabels:
    """Per update of the last fit: the centres it started from, every point's label and margin, by key."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._keys: np.ndarray | None = None
        self._starts: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._bounds: list[LabelBounds] = []
        #: points the last :meth:`labels` computed (the rest came from the cache)
        self.last_computed = 0
        self._inserted: list[np.ndarray] = []
        self._n_inserted = 0

    def record(self, keys: np.ndarray, starts: list[np.ndarray], labels: list[np.ndarray],
               bounds: list[LabelBounds]) -> None:
        """Keep a fit's labels: ``labels[t]`` and ``bounds[t]`` of the points (canonical ``keys``) under
        centres ``starts[t]``."""
        self.clear()
        self._keys = keys
        self._starts = [np.array(s, dtype=np.float64, order="C") for s in starts]
        self._labels = labels
        self._bounds = bounds

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

    def labels(self, update: int, start: np.ndarray, X: np.ndarray,
               positions: np.ndarray | None) -> tuple[np.ndarray, LabelBounds] | None:
        """Every point's nearest centre in ``start`` at ``update`` and its bounds, from the cache where it
        provably holds; None if the cache has no such update."""
        start = np.ascontiguousarray(start, dtype=np.float64)
        if positions is None or update >= len(self._starts) or start.shape != self._starts[update].shape:
            return None
        old = self._bounds[update]
        G = len(old.anchors)
        moves = np.empty((G, len(start)))
        kernels.anchor_moves(start, old.anchors, moves)
        if G >= _MAX_ANCHORS:  # the anchors holding fewest labels retire (computed again): room for this start
            moves[np.argsort(np.bincount(old.anchor, minlength=G), kind="stable")[: G + 1 - _MAX_ANCHORS]] = np.inf
        labels, margins, anchor = np.empty(len(X), dtype=np.int64), np.empty(len(X)), np.empty(len(X), dtype=np.int16)
        self.last_computed = kernels.labels_from(
            X, start, start.tobytes() == self._starts[update].tobytes(), self._labels[update], old.margins,
            old.anchor, positions, moves, G, labels, margins, anchor)
        used = np.bincount(anchor, minlength=G + 1) > 0  # keep the anchors still in use, renumbered
        if not used[:G].all():  # else the old numbers stand, and this start's is G if it is used
            anchor = (np.cumsum(used) - 1).astype(np.int16)[anchor]
        return labels, LabelBounds(margins, anchor, np.concatenate([old.anchors, start[None]])[used])
