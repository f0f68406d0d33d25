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
could change, and its lower bound on the distance to any other centre
(:func:`kernels.nearest_margin`), both exact against the centres it was
computed under: its anchor. A label whose margin exceeds the centres' moves
from its anchor holds, bounds and anchor kept, so centres that move back and
forth over many refits do not wear them down. Otherwise the distances to
its own centre and to the centres that moved from its anchor may settle it
(usually one to a few moved: a grid step), since the unmoved ones are still
at least its lower bound away; it then takes this start as its anchor. Only
the rest are computed. Either way the labels are those a fresh fit computes,
so the sums and centroids keep their bits.

Points are matched by their 64-bit key (the canonical order's sort key); if
two held points share one, the cache is not used. The cache lives in memory
only: it never goes into a state or a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .lloyd import all_rows

#: Drop the cache once the points inserted since the fit exceed this share of the points it labelled
#: (and at least _MIN_CHANGES): their keys are kept until the next refit, and a cache that old saves little.
_MAX_CHANGED_SHARE = 4
_MIN_CHANGES = 1024
#: Anchors kept per update; beyond, the labels of the least used ones are computed again.
_MAX_ANCHORS = 8


@dataclass(frozen=True)
class LabelBounds:
    """Why an update's labels may hold under other centres: each point's margin and lower bound (-inf:
    only under the same centres), exact against the centres ``anchors[anchor[i]]`` ((G, k, d)) they
    were computed under."""

    margins: np.ndarray
    lowers: np.ndarray
    anchor: np.ndarray
    anchors: np.ndarray

    @classmethod
    def fresh(cls, margins: np.ndarray, lowers: np.ndarray, centres: np.ndarray) -> LabelBounds:
        """Bounds all computed under ``centres``."""
        return cls(margins, lowers, np.zeros(len(margins), dtype=np.int16),
                   np.array(centres, dtype=np.float64, order="C")[None])

    @classmethod
    def none(cls, n: int, centres: np.ndarray) -> LabelBounds:
        """Labels exact under ``centres`` with no bound: they hold only under the same centres."""
        return cls.fresh(np.full(n, -np.inf), np.full(n, -np.inf), centres)


class LloydLabels:
    """Per update of the last fit: the centres it started from, every point's label and margin, by key."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._keys: np.ndarray | None = None
        self._starts: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._bounds: list[LabelBounds] = []
        #: points the last :meth:`labels` computed in full, and those it settled by the centres that moved
        #: alone (the rest came from the cache)
        self.last_computed = 0
        self.last_settled = 0
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

    def start(self, update: int) -> np.ndarray | None:
        """The centres ``update`` of the last fit started from, if recorded."""
        return self._starts[update] if update < len(self._starts) else None

    def recorded(self, update: int, start: np.ndarray, X: np.ndarray, positions: np.ndarray,
                 rows: np.ndarray | None = None) -> np.ndarray | None:
        """Each point's label at ``update`` of the last fit, if that update started from ``start``: the
        cache's where it has one (``positions``), the nearest centre of ``start`` for points inserted
        since; None if the cache holds no such update. The points are ``X[rows]`` (all of X without)."""
        if update >= len(self._starts) or self._starts[update].tobytes() != np.asarray(start, np.float64).tobytes():
            return None
        out = np.empty(len(positions), dtype=np.int64)
        known = positions >= 0
        out[known] = self._labels[update][positions[known]]
        if not known.all():
            new = np.flatnonzero(~known)
            fresh = np.empty(len(new), dtype=np.int64)
            kernels.assign_rows(np.ascontiguousarray(X[new if rows is None else rows[new]]), self._starts[update],
                                fresh)
            out[new] = fresh
        return out

    def labels(self, update: int, start: np.ndarray, X: np.ndarray, positions: np.ndarray | None,
               rows: np.ndarray | None = None) -> tuple[np.ndarray, LabelBounds] | None:
        """Every point's nearest centre in ``start`` at ``update`` and its bounds, from the cache where it
        provably holds; None if the cache has no such update. The points are ``X[rows]``."""
        start = np.ascontiguousarray(start, dtype=np.float64)
        if positions is None or update >= len(self._starts) or start.shape != self._starts[update].shape:
            return None
        return self.derive(start, X, self._labels[update], self._bounds[update], positions,
                           start.tobytes() == self._starts[update].tobytes(), rows)

    def derive(self, start: np.ndarray, X: np.ndarray, labels: np.ndarray, bounds: LabelBounds,
               positions: np.ndarray, same: bool = False, rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, LabelBounds]:
        """Every point's nearest centre in ``start`` and its bounds, from ``labels`` with their ``bounds``
        (of the points at ``positions``, -1: compute) where they provably hold; ``same``: ``start`` is
        the centres they were all computed under. Counts go to ``last_computed`` and ``last_settled``.
        The points are ``X[rows]``, read in place (all of X without ``rows``)."""
        rows = all_rows(X) if rows is None else rows
        start = np.ascontiguousarray(start, dtype=np.float64)
        G = len(bounds.anchors)
        k = len(start)
        moves = np.empty((G, k))
        moved_centres, n_moved = np.empty((G, k), dtype=np.int64), np.empty(G, dtype=np.int64)
        kernels.anchor_moves(start, bounds.anchors, moves, moved_centres, n_moved)
        if G >= _MAX_ANCHORS:  # the anchors holding fewest labels retire (settled or computed again): room for this start
            moves[np.argsort(np.bincount(bounds.anchor, minlength=G), kind="stable")[: G + 1 - _MAX_ANCHORS]] = np.inf
        n = len(rows)
        new_labels, anchor = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int16)
        margins, lowers, counts = np.empty(n), np.empty(n), np.empty(G + 1, dtype=np.int64)
        self.last_computed, self.last_settled = kernels.labels_from(
            X, rows, start, same, labels, bounds.margins, bounds.lowers, bounds.anchor, positions, moves, moved_centres,
            n_moved, G, new_labels, margins, lowers, anchor, counts)
        used = counts > 0  # keep the anchors still in use, renumbered
        if not used[:G].all():  # else the old numbers stand, and this start's is G if it is used
            kernels.renumber(anchor, (np.cumsum(used) - 1).astype(np.int16))
        return new_labels, LabelBounds(margins, lowers, anchor, np.concatenate([bounds.anchors, start[None]])[used])
