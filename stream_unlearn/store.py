"""Held points: contiguous vectors grouped in buckets (DC leaves), found by id.

Each bucket keeps its vectors in one C-contiguous float64 block that grows by
a quarter at a time, so the vectors cost at most ~1.25x their raw bytes.
Deletion swaps the last row into the hole: O(d), no gaps, no compaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

from . import kernels
from .hashing import canonical_order

_GROWTH = 1.25
_ROW_BITS = 40


class Bucket:
    """The points of one leaf: ids, 64-bit keys and vectors, in insertion order."""

    __slots__ = ("ids", "keys", "vectors", "size")

    def __init__(self, n_features: int) -> None:
        self.ids: list[str] = []
        self.keys = np.empty(0, dtype=np.uint64)
        self.vectors = np.empty((0, n_features))
        self.size = 0

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more rows, growing geometrically."""
        need = self.size + extra
        if need <= len(self.keys):
            return
        cap = max(need, int(len(self.keys) * _GROWTH) + 4)
        vectors = np.empty((cap, self.vectors.shape[1]))
        vectors[: self.size] = self.vectors[: self.size]
        keys = np.empty(cap, dtype=np.uint64)
        keys[: self.size] = self.keys[: self.size]
        self.vectors, self.keys = vectors, keys


class _Reordered(Sequence[str]):
    """``ids[order[i]]`` for each i, without building the list."""

    def __init__(self, ids: list[str], order: np.ndarray) -> None:
        self._ids, self._order = ids, order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._ids[j] for j in self._order[i].tolist()]
        return self._ids[self._order[i]]


class PointStore:
    """All held points, bucketed; an id maps to (bucket, row) in one dict."""

    def __init__(self, n_buckets: int, n_features: int | None = None) -> None:
        self.n_buckets = n_buckets
        self.n_features = n_features
        self.buckets: list[Bucket | None] = [None] * n_buckets
        self._where: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, point_id: str) -> bool:
        return point_id in self._where

    def held_among(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are held."""
        return self._where.keys() & ids

    def vector(self, point_id: str) -> np.ndarray:
        """A copy of the vector held for ``point_id``."""
        loc = self._where[point_id]
        return self.buckets[loc >> _ROW_BITS].vectors[loc & ((1 << _ROW_BITS) - 1)].copy()

    def key(self, point_id: str) -> np.uint64:
        """The hash key held for ``point_id``."""
        loc = self._where[point_id]
        return self.buckets[loc >> _ROW_BITS].keys[loc & ((1 << _ROW_BITS) - 1)]

    def _bucket(self, b: int) -> Bucket:
        bucket = self.buckets[b]
        if bucket is None:
            assert self.n_features is not None
            bucket = self.buckets[b] = Bucket(self.n_features)
        return bucket

    def add(self, ids: Sequence[str], keys: np.ndarray, X: np.ndarray, buckets: np.ndarray) -> None:
        """Add new points (none of the ids may be held)."""
        if self.n_features is None:
            self.n_features = X.shape[1]
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        X_sorted, keys_sorted = X[order], keys[order]
        ids_sorted = list(map(ids.__getitem__, order.tolist()))
        bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        stops = np.concatenate([bounds, [len(order)]]).astype(np.int64)
        group_buckets = sorted_buckets[starts]
        chosen = [self._bucket(b) for b in group_buckets.tolist()]
        first_row = np.array([bucket.size for bucket in chosen], dtype=np.int64)
        # Slot of each new point: its bucket's number and the row it lands on.
        rank = np.arange(len(order), dtype=np.int64) - np.repeat(starts, stops - starts)
        locs = (sorted_buckets << _ROW_BITS) | (np.repeat(first_row, stops - starts) + rank)
        for bucket, lo, hi in zip(chosen, starts.tolist(), stops.tolist()):
            start = bucket.size
            end = start + hi - lo
            if end > len(bucket.keys):
                bucket.reserve(hi - lo)
            if hi - lo == 1:  # the common case in a stream: one new point in this bucket
                bucket.vectors[start] = X_sorted[lo]
                bucket.keys[start] = keys_sorted[lo]
                bucket.ids.append(ids_sorted[lo])
            else:
                bucket.vectors[start:end] = X_sorted[lo:hi]
                bucket.keys[start:end] = keys_sorted[lo:hi]
                bucket.ids.extend(ids_sorted[lo:hi])
            bucket.size = end
        self._where.update(zip(ids_sorted, locs.tolist()))

    def replace(self, point_id: str, vector: np.ndarray) -> None:
        """Overwrite the vector of a held point in place."""
        loc = self._where[point_id]
        self.buckets[loc >> _ROW_BITS].vectors[loc & ((1 << _ROW_BITS) - 1)] = vector

    def remove(self, point_id: str) -> int:
        """Drop a held point; returns its bucket."""
        loc = self._where.pop(point_id)
        b, row = loc >> _ROW_BITS, loc & ((1 << _ROW_BITS) - 1)
        bucket = self.buckets[b]
        last = bucket.size - 1
        if row != last:
            moved = bucket.ids[last]
            bucket.ids[row] = moved
            bucket.vectors[row] = bucket.vectors[last]
            bucket.keys[row] = bucket.keys[last]
            self._where[moved] = (b << _ROW_BITS) | row
        bucket.ids.pop()
        bucket.size = last
        if bucket.size == 0:
            self.buckets[b] = None
        elif bucket.size * 8 < len(bucket.keys) * 5:
            self._shrink(bucket)
        return b

    @staticmethod
    def _shrink(bucket: Bucket) -> None:
        cap = max(4, int(bucket.size * _GROWTH))
        bucket.vectors = bucket.vectors[:cap].copy()
        bucket.keys = bucket.keys[:cap].copy()

    def gather(self, buckets: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys, vectors and sizes of the given non-empty buckets, each in canonical order, back to back."""
        chosen = [self.buckets[b] for b in buckets]
        sizes = np.array([c.size for c in chosen], dtype=np.int64)
        keys = np.concatenate([c.keys[: c.size] for c in chosen])
        X = np.concatenate([c.vectors[: c.size] for c in chosen])
        offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        order = np.empty(len(keys), dtype=np.int64)
        if kernels.segment_order(keys, offsets, order):
            # A 64-bit collision inside a bucket: order the buckets with equal keys by (key, id).
            for j in range(len(chosen)):
                lo, hi = offsets[j], offsets[j + 1]
                if np.any(np.diff(keys[order[lo:hi]]) == 0):
                    order[lo:hi] = lo + canonical_order(keys[lo:hi], chosen[j].ids)
        return keys[order], X[order], sizes

    def canonical(self) -> tuple[np.ndarray, np.ndarray, Sequence[str]]:
        """Keys, vectors and ids of all buckets together, in canonical ``(key, id)`` order.

        The ids come as a lazy view: a refit of all points needs a handful of
        them, and building the reordered list cost ~8 ms per 100k points.
        """
        ids, X, _ = self.items()
        keys = np.concatenate([b.keys[: b.size] for b in self.buckets if b is not None]) if ids else np.empty(0, np.uint64)
        order = canonical_order(keys, ids)
        return keys[order], X[order], _Reordered(ids, order)

    def items(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """All ids, vectors and bucket numbers (a copy, bucket by bucket)."""
        live = self._live()
        ids = list(chain.from_iterable(bucket.ids for _, bucket in live))
        owners = np.repeat(np.array([b for b, _ in live], dtype=np.int64), [bucket.size for _, bucket in live])
        return ids, self._vectors_of(live), owners

    def vectors(self) -> np.ndarray:
        """All vectors, in the order of :meth:`items` (a copy; no id list built)."""
        return self._vectors_of(self._live())

    def _live(self) -> list[tuple[int, Bucket]]:
        return [(b, bucket) for b, bucket in enumerate(self.buckets) if bucket is not None]

    def _vectors_of(self, live: list[tuple[int, Bucket]]) -> np.ndarray:
        if not live:
            return np.empty((0, self.n_features or 0))
        return np.concatenate([bucket.vectors[: bucket.size] for _, bucket in live])

    def vector_bytes(self) -> int:
        """Bytes allocated for vectors and keys across buckets."""
        return sum(b.vectors.nbytes + b.keys.nbytes for b in self.buckets if b is not None)
