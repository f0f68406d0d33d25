"""Held points: one contiguous array of fixed-size pages, chained per bucket (DC leaf), found by id.

Every vector lives in one float64 array cut into pages of ``ROWS_PER_PAGE``
rows; a bucket owns a chain of pages filled front to back, so growing a
bucket never copies it, and free pages are reused. The array grows by an
eighth at a time and is repacked when half its pages (and at least 1024)
are free: while growing, vectors cost ~1.1-1.25x their raw bytes; after
mass deletions, up to ~2x until the repack. Deletion moves the bucket's last row into
the hole: O(d), no gaps. Placing points and listing a bucket's rows run in
compiled loops (:mod:`.pages`): a 100k-point fit touches 4096 buckets, and
per-bucket Python cost ~40 ms there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from . import kernels, pages
from .canonical import CanonicalOrder
from .compute_pool import compute_pool, n_threads
from .hashing import canonical_order
from .pieces import Pause, no_pause, steps

#: Rows per page: longer pages waste more in each bucket's last page (half a
#: page on average), shorter ones make longer chains.
ROWS_PER_PAGE = 4
_GROWTH = 1.125
_MIN_GROWTH_PAGES = 64
#: Repack when at least this many pages (and half of all) are free.
_REPACK_MIN_FREE = 1024
#: Adds of at least this many points copy their vectors on another core while the ids are filed (a
#: hand-over costs ~0.1 ms: smaller adds, as the worker's batches, copy inline).
_ROWS_COPIED_ALONGSIDE = 4096


class PointStore:
    """All held points, bucketed; an id maps to its slot (page * rows + row) in one dict."""

    repack_min_free = _REPACK_MIN_FREE

    def __init__(self, n_buckets: int, n_features: int | None = None) -> None:
        self.n_buckets = n_buckets
        self.n_features = n_features
        self._where: dict[str, int] = {}
        self._size = np.zeros(n_buckets, dtype=np.int64)
        self._first = np.full(n_buckets, -1, dtype=np.int64)
        self._last = np.full(n_buckets, -1, dtype=np.int64)
        self._capture_buffers = _CaptureBuffers()
        self._canonical = CanonicalOrder()
        self._allocate(0)

    def _allocate(self, n_pages: int) -> None:
        """Empty page arrays for ``n_pages`` pages, all on the free chain (buckets emptied too)."""
        rows = n_pages * ROWS_PER_PAGE
        self._vectors = np.empty((rows, self.n_features or 0))
        self._keys = np.empty(rows, dtype=np.uint64)
        self._ids = np.full(rows, None, dtype=object)
        self._next = np.arange(1, n_pages + 1, dtype=np.int64)
        if n_pages:
            self._next[-1] = -1
        self._prev = np.full(n_pages, -1, dtype=np.int64)
        self._page_bucket = np.full(n_pages, -1, dtype=np.int64)
        self._free = 0 if n_pages else -1
        self._n_free = n_pages
        self._size[:] = 0
        self._first[:] = -1
        self._last[:] = -1
        self._canonical.reset()  # every slot is reassigned

    def _grow(self, extra_pages: int) -> None:
        """Append at least ``extra_pages`` free pages.

        The numeric arrays are resized in place (``realloc``: for big arrays
        the C library remaps pages instead of copying them), so an insert that
        grows a 1M-point store costs milliseconds, not a 200 MB copy. No view
        of them outlives a call into the store (:meth:`held_rows` is read at once).
        """
        old = len(self._next)
        new = max(old + extra_pages, int(old * _GROWTH) + _MIN_GROWTH_PAGES)
        rows = new * ROWS_PER_PAGE
        old_rows = len(self._ids)
        if old_rows:
            self._vectors.resize((rows, self.n_features or 0), refcheck=False)
            self._keys.resize(rows, refcheck=False)
        else:  # nothing to keep: skip resize's zero fill (a whole pass over the memory of a first fit)
            self._vectors = np.empty((rows, self.n_features or 0))
            self._keys = np.empty(rows, dtype=np.uint64)
        self._ids.resize(rows, refcheck=False)
        self._ids[old_rows:] = None  # (numpy fills new object slots with 0)
        for links in (self._next, self._prev, self._page_bucket):
            links.resize(new, refcheck=False)
        self._next[old:] = np.arange(old + 1, new + 1)
        self._next[-1] = self._free  # the new pages go in front of the free chain
        self._prev[old:] = -1
        self._page_bucket[old:] = -1
        self._free = old
        self._n_free += new - old

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, point_id: str) -> bool:
        return point_id in self._where

    @property
    def bucket_sizes(self) -> np.ndarray:
        """Points held per bucket (n_buckets,), read-only."""
        view = self._size.view()
        view.setflags(write=False)
        return view

    def held_among(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are held."""
        return self._where.keys() & ids if self._where else set()

    def vector(self, point_id: str) -> np.ndarray:
        """A copy of the vector held for ``point_id``."""
        return self._vectors[self._where[point_id]].copy()

    def key(self, point_id: str) -> np.uint64:
        """The hash key held for ``point_id``."""
        return self._keys[self._where[point_id]]

    def add(self, ids: Sequence[str], keys: np.ndarray, X: np.ndarray, buckets: np.ndarray) -> None:
        """Add new points (none of the ids may be held), each appended to its bucket."""
        if self.n_features is None:
            self.n_features = X.shape[1]
        if self._vectors.shape[1] != self.n_features:  # the first points: the page rows get their width
            self._vectors = np.empty((len(self._keys), self.n_features))
        buckets = np.ascontiguousarray(buckets, dtype=np.int64)
        counts = np.bincount(buckets, minlength=self.n_buckets)
        need = pages.pages_needed(counts, self._size, ROWS_PER_PAGE)
        if need > self._n_free:
            self._grow(need - self._n_free)
        slots = np.empty(len(buckets), dtype=np.int64)
        self._free = pages.place(buckets, ROWS_PER_PAGE, self._first, self._last, self._size, self._next, self._prev,
                                 self._page_bucket, self._free, slots)
        self._n_free -= need
        X = np.ascontiguousarray(X, dtype=np.float64)
        if len(slots) < _ROWS_COPIED_ALONGSIDE or n_threads() < 2:
            kernels.write_rows(self._vectors, slots, X)
            self._add_ids(ids, keys, slots)
            return
        # Many rows: copy them on another core while this thread files the ids (both ~5-20 ms at 100k).
        copying = compute_pool().submit(kernels.write_rows, self._vectors, slots, X)
        try:
            self._add_ids(ids, keys, slots)
        finally:
            copying.result()

    def _add_ids(self, ids: Sequence[str], keys: np.ndarray, slots: np.ndarray) -> None:
        """File new points' ids and keys at their slots (the vectors are written apart)."""
        self._keys[slots] = keys
        self._ids[slots] = ids if isinstance(ids, np.ndarray) else _object_array(ids)
        self._where.update(zip(ids, slots.tolist()))
        self._canonical.occupied(slots)

    def remove(self, point_id: str) -> int:
        """Drop a held point; returns its bucket."""
        slot = self._where.pop(point_id)
        b = int(self._page_bucket[slot // ROWS_PER_PAGE])
        left = int(self._size[b]) - 1
        tail = int(self._last[b])
        last_slot = tail * ROWS_PER_PAGE + left % ROWS_PER_PAGE
        if slot != last_slot:
            moved = self._ids[last_slot]
            self._ids[slot] = moved
            self._vectors[slot] = self._vectors[last_slot]
            self._keys[slot] = self._keys[last_slot]
            self._where[moved] = slot
        if self._canonical.kept:
            self._canonical.removed(slot, last_slot if slot != last_slot else None)
        self._ids[last_slot] = None
        self._size[b] = left
        if left % ROWS_PER_PAGE == 0:  # the last page emptied: back to the free chain
            before = int(self._prev[tail])
            self._last[b] = before
            if before >= 0:
                self._next[before] = -1
            else:
                self._first[b] = -1
            self._next[tail] = self._free
            self._page_bucket[tail] = -1
            self._free = tail
            self._n_free += 1
            if self._n_free >= self.repack_min_free and 2 * self._n_free >= len(self._next):
                self._repack()
        return b

    def _repack(self) -> None:
        """Rebuild the arrays at their needed size (after many deletions), bucket by bucket."""
        slots, owners = self._held_layout()
        ids, keys, X = self._ids[slots], self._keys[slots], self._vectors[slots]
        self._allocate(int((-(-self._size // ROWS_PER_PAGE)).sum()))
        self._where.clear()
        self.add(ids, keys, X, owners)

    def _held_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """The slot and the bucket of every held point, bucket by bucket, in row order."""
        live = np.flatnonzero(self._size)
        return self._slots_of(live), np.repeat(live, self._size[live])

    def _slots_of(self, buckets: np.ndarray) -> np.ndarray:
        """Slots of the given buckets' rows, bucket by bucket, in row order."""
        buckets = np.ascontiguousarray(buckets, dtype=np.int64)
        slots = np.empty(int(self._size[buckets].sum()), dtype=np.int64)
        pages.bucket_slots(buckets, ROWS_PER_PAGE, self._first, self._size, self._next, slots)
        return slots

    def slot(self, point_id: str) -> int:
        """The row of ``point_id`` in :meth:`held_rows`'s array."""
        return self._where[point_id]

    def held_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The page array (read-only view) and the slots of all held points, ascending: a pass over
        every point, front to back through the pages (1.5-3x faster than bucket by bucket), without
        copying their vectors. Valid until the store next changes (growth resizes in place)."""
        view = self._vectors.view()
        view.setflags(write=False)
        return view, np.sort(self._live_slots())

    def sq_dist_sum(self, C: np.ndarray) -> float:
        """Sum over held points of the squared distance to the nearest row of ``C`` (k >= 1), in place."""
        V, slots = self.held_rows()
        return float(kernels.nearest_sq_dist_sum(V, slots, np.ascontiguousarray(C, dtype=np.float64)))

    def _live_slots(self) -> np.ndarray:
        """Slots of every held point, bucket by bucket (the order of :meth:`items`)."""
        return self._slots_of(np.flatnonzero(self._size))

    def bucket_ids(self, bucket: int) -> list[str]:
        """Ids held in one bucket, in row order."""
        return self._ids[self._slots_of(np.array([bucket]))].tolist()

    def gather(self, buckets: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys, vectors and sizes of the given non-empty buckets, each in canonical order, back to back."""
        keys, slots, sizes = self.gather_slots(buckets)
        return keys, self._vectors[slots], sizes

    def gather_slots(self, buckets: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`gather` with the slots of the rows (in :meth:`vector_rows`) instead of a copy of them."""
        buckets = np.asarray(buckets, dtype=np.int64)
        slots = self._slots_of(buckets)
        sizes = self._size[buckets]
        offsets = np.zeros(len(buckets) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        keys = self._keys[slots]
        order = np.empty(len(keys), dtype=np.int64)
        if kernels.segment_order(keys, offsets, order):
            # A 64-bit collision inside a bucket: order the buckets with equal keys by (key, id).
            for j in range(len(buckets)):
                lo, hi = offsets[j], offsets[j + 1]
                if np.any(np.diff(keys[order[lo:hi]]) == 0):
                    order[lo:hi] = lo + canonical_order(keys[lo:hi], lambda lo=lo, hi=hi: self._ids[slots[lo:hi]])
        return keys[order], slots[order], sizes

    def bucket_in_order(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and slots of one non-empty bucket: ``gather_slots([bucket])``'s, in one compiled call
        (a single event's flush: the general path's numpy calls cost ~20 us). The call sorts by
        insertion, so a bucket too big for that (few leaves, many points) takes the general path."""
        n = int(self._size[bucket])
        if n > kernels.INSERTION_SORT_MAX:
            return self.gather_slots([bucket])[:2]
        keys, slots = np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.int64)
        if pages.bucket_in_key_order(bucket, ROWS_PER_PAGE, self._first, self._size, self._next, self._keys,
                                     keys, slots):
            return self.gather_slots([bucket])[:2]  # equal 64-bit keys: ordered by (key, id) there
        return keys, slots

    def vector_rows(self) -> np.ndarray:
        """The vector array that slots index, read-only; valid until the store next changes."""
        view = self._vectors.view()
        view.setflags(write=False)
        return view

    def canonical(self) -> tuple[np.ndarray, np.ndarray, Sequence[str]]:
        """Keys, vectors and ids of all buckets together, in canonical ``(key, id)`` order.

        The ids come as an object array (indexing gives the str).
        """
        keys, slots = self.canonical_slots()
        return keys, self._vectors[slots], self._ids[slots]

    def canonical_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and slots (rows of :meth:`vector_rows`) of all held points in canonical ``(key, id)`` order.

        A refit of all points reads their vectors in one pass and needs the
        ids of a handful (:meth:`ids_at`): gathering 100k ids costs ~3 ms.
        The order is kept from one call to the next (:mod:`.canonical`):
        the first call sorts, later ones merge in the points added since.
        """
        return self._canonical.read(self._live_slots, self._keys.__getitem__, self._ids.__getitem__)

    def keys_at(self, slots: np.ndarray) -> np.ndarray:
        """The 64-bit keys of the points at ``slots`` (rows of :meth:`held_rows`)."""
        return self._keys[slots]

    def ids_at(self, slots: np.ndarray) -> np.ndarray:
        """The ids held at ``slots`` (an object array of str, shaped like ``slots``)."""
        return self._ids[slots]

    def items(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """All ids, vectors and bucket numbers (a copy, bucket by bucket)."""
        ids, X, buckets = self.copy_rows()
        return ids.tolist(), X, buckets

    def copy_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`items` with the ids as an object array: no list of str built."""
        slots, buckets = self._held_layout()
        return self._ids[slots], self._vectors[slots], buckets

    def capture_rows(self) -> Callable[[Pause], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`copy_rows` in two halves: flat copies of the arrays now, the gather when called (once).

        For a snapshot's cut on the worker's loop: copying the arrays whole
        is a memcpy, ~3x cheaper than gathering the held rows page by page
        (120k x 25: ~7 vs ~20 ms); the gather then reads the copies alone, so
        it may run later, on another thread, while the store changes.

        The copies go into the buffers the previous capture's gather gave
        back: memory that is already mapped. A fresh 35 MB buffer (175k x 25,
        above glibc's largest mmap threshold) costs the loop its page faults
        too: 16 vs 9 ms alone, and captures of 27-67 ms under load.

        The gather runs in steps with ``pause()`` between them: at 130k
        points gathering the ids took 17 ms and the rows 19 ms in one call
        each, time in which the writer thread held the GIL and the loop waited.
        """
        slots, buckets = self._held_layout()
        end = int(slots.max()) + 1 if len(slots) else 0
        ids, vectors = self._capture_buffers.take(end, self._vectors.shape[1])
        ids[:end] = self._ids[:end]
        vectors[:end] = self._vectors[:end]

        gathered = False

        def gather(pause: Pause = no_pause) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            nonlocal gathered
            if gathered:  # the buffers went back to the store: a later capture may be using them
                raise RuntimeError("a capture is gathered once")
            gathered = True
            out_ids, out_vectors = np.empty(len(slots), dtype=object), np.empty((len(slots), vectors.shape[1]))
            for part in steps(len(slots), pause):
                out_ids[part] = ids[slots[part]]
                np.take(vectors, slots[part], axis=0, out=out_vectors[part])
            self._capture_buffers.give_back(ids, vectors, pause)
            return out_ids, out_vectors, buckets

        return gather

    def vector_bytes(self) -> int:
        """Bytes allocated for vectors and keys."""
        return self._vectors.nbytes + self._keys.nbytes


class _CaptureBuffers:
    """The arrays of the last finished capture, kept for the next one (the loop takes, a writer gives back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: tuple[np.ndarray, np.ndarray] | None = None

    def take(self, rows: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """An object array and a float64 (., n_features) array of at least ``rows`` rows each."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and len(spare[0]) >= rows and spare[1].shape[1] == n_features:
            return spare
        grown = rows + rows // 8  # room for growth between captures
        return np.full(grown, None, dtype=object), np.empty((grown, n_features))

    def give_back(self, ids: np.ndarray, vectors: np.ndarray, pause: Pause = no_pause) -> None:
        """Done with them: the ids are dropped (no forgotten id outlives its capture), the memory kept."""
        for part in steps(len(ids), pause):
            ids[part] = None
        with self._lock:
            self._spare = ids, vectors


def _object_array(ids: Sequence[str]) -> np.ndarray:
    """``ids`` as a 1-d object array (``np.array`` would make fixed-width strings)."""
    out = np.empty(len(ids), dtype=object)
    out[:] = ids
    return out
