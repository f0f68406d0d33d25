"""The store's points in canonical ``(key, id)`` order, kept between refits instead of sorted anew.

Why: a Q-k-means refit reads every held point in canonical order, and
sorting 130k-280k random 64-bit keys took 5-26 ms of a 30-75 ms Lloyd-only
refit here, on the worker's loop. Between two refits a few hundred points
change, so the order is kept: a removed point leaves a hole, a moved row
(the store fills a hole with its bucket's last row) updates its slot, and
the next read merges the points added since into the kept keys in one
compiled pass. Same result as a fresh sort, bit for bit: distinct keys have
one sorted order, and an added key equal to a held one (a 64-bit collision)
makes the read sort everything anew, breaking ties by id as
:func:`~stream_unlearn.hashing.canonical_order` does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from .hashing import canonical_order

__all__ = ["CanonicalOrder"]

_UNKNOWN = -1  # a slot's position: nothing the order knows is there
_NEW = -2  # a point added since the last read is there
#: The slots noted for new points are pruned to the live ones once there are twice as many notes
#: as points known or new at the last pruning, and at least this many (amortized O(1) per change):
#: a Q model whose certificates keep passing may go millions of changes without a read.
COMPACT_MIN = 4096


class CanonicalOrder:
    """Canonical order of a store's held slots, maintained through the store's changes.

    The store reports :meth:`occupied`, :meth:`removed` and :meth:`reset`;
    nothing is kept (and reports cost nothing) until the first :meth:`read`.
    """

    def __init__(self) -> None:
        self._keys: np.ndarray | None = None  # sorted keys of the points known at the last read
        self._slots = np.empty(0, dtype=np.int64)  # their slots now; -1: removed since
        self._position = np.empty(0, dtype=np.int64)  # per slot: index in _keys, _UNKNOWN or _NEW
        self._new_at: list[np.ndarray] = []  # slots where points added since may sit (a superset)
        self._moved_new: list[int] = []  # more of them, one by one (new points moved into holes)
        self._noted = 0  # entries in both
        self._pruned_to = 0  # new points at the last pruning

    @property
    def kept(self) -> bool:
        """An order is kept (the store must report its changes)."""
        return self._keys is not None

    def reset(self) -> None:
        """Forget the order: the store's slots were all reassigned (repacked)."""
        self._keys = None
        self._slots = self._position = np.empty(0, dtype=np.int64)
        self._forget_new()

    def occupied(self, slots: np.ndarray) -> None:
        """New points now occupy ``slots`` (int64)."""
        if self._keys is not None and len(slots):
            self._room(int(slots.max()) + 1)
            self._position[slots] = _NEW
            self._new_at.append(slots.copy())
            self._noted += len(slots)
            self._bound_noted()

    def removed(self, slot: int, moved_from: int | None) -> None:
        """The point at ``slot`` is gone; if ``moved_from``, that slot's point now sits at ``slot``."""
        if self._keys is None:
            return
        position = self._position
        p = position[slot]
        if p >= 0:
            self._slots[p] = -1
        if moved_from is None:
            position[slot] = _UNKNOWN
            return
        q = position[moved_from]
        position[slot] = q
        position[moved_from] = _UNKNOWN
        if q >= 0:
            self._slots[q] = slot
        elif q == _NEW:
            self._moved_new.append(slot)
            self._noted += 1
            self._bound_noted()

    def read(self, live: Callable[[], np.ndarray], keys_of: Callable[[np.ndarray], np.ndarray],
             ids_of: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Keys and slots of every held point in canonical order (the caller's to keep).

        ``live()``: the held slots, any order (needed only for a full sort);
        ``keys_of(slots)``, ``ids_of(slots)``: their keys and ids.
        """
        if self._keys is None:
            return self._sort(live(), keys_of, ids_of)
        new = self._new_slots()
        new_keys = keys_of(new)
        order = np.argsort(new_keys)
        new, new_keys = new[order], new_keys[order]
        keys = self._keys
        at = np.searchsorted(keys, new_keys)
        inside = at < len(keys)
        # (searchsorted: every key before ``at`` is smaller, so only the key at ``at`` can be equal)
        if np.any(new_keys[1:] == new_keys[:-1]) or np.any(keys[at[inside]] == new_keys[inside]):
            return self._sort(live(), keys_of, ids_of)  # a 64-bit collision: sort all, ties by id
        size = np.count_nonzero(self._slots >= 0) + len(new)
        out_keys, out_slots = np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.int64)
        _merge(keys, self._slots, new_keys, new, out_keys, out_slots, self._position)
        self._keys, self._slots = out_keys, out_slots
        self._forget_new()
        return out_keys, out_slots.copy()  # keys are never edited in place, slots are (removed())

    def _sort(self, live: np.ndarray, keys_of: Callable[[np.ndarray], np.ndarray],
              ids_of: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        keys = keys_of(live)
        order = canonical_order(keys, lambda: ids_of(live))
        keys, slots = keys[order], live[order]
        self._keys, self._slots = keys, slots.copy()
        self._forget_new()
        self._position = np.full(max(len(self._position), int(slots.max()) + 1 if len(slots) else 0), _UNKNOWN,
                                 dtype=np.int64)
        self._position[slots] = np.arange(len(slots))
        return keys, slots

    def _new_slots(self) -> np.ndarray:
        """The slots of the points added since the last read, ascending."""
        noted = [*self._new_at, np.asarray(self._moved_new, dtype=np.int64)]
        maybe = np.unique(np.concatenate(noted))
        return maybe[self._position[maybe] == _NEW]

    def _bound_noted(self) -> None:
        """Prune the noted slots to those of live new points, when the notes are many."""
        if self._noted > 2 * max(COMPACT_MIN, len(self._slots), self._pruned_to):
            live = self._new_slots()
            self._new_at, self._moved_new, self._noted, self._pruned_to = [live], [], len(live), len(live)

    def _forget_new(self) -> None:
        self._new_at, self._moved_new, self._noted, self._pruned_to = [], [], 0, 0

    def _room(self, n_slots: int) -> None:
        """Positions for at least ``n_slots`` slots (the added ones unknown)."""
        if len(self._position) < n_slots:
            grown = np.full(max(n_slots, len(self._position) * 9 // 8), _UNKNOWN, dtype=np.int64)
            grown[: len(self._position)] = self._position
            self._position = grown


@njit(cache=True, nogil=True)
def _merge(keys, slots, new_keys, new_slots, out_keys, out_slots, position):  # pragma: no cover - compiled
    """Known points (``slots >= 0``) and new ones, both sorted by key, merged into ``out_*``; each
    point's ``position[slot]`` becomes its index there."""
    i = j = o = 0
    n, m = len(keys), len(new_keys)
    while i < n or j < m:
        if i < n and slots[i] < 0:
            i += 1
            continue
        if j < m and (i >= n or new_keys[j] < keys[i]):
            key, slot = new_keys[j], new_slots[j]
            j += 1
        else:
            key, slot = keys[i], slots[i]
            i += 1
        out_keys[o] = key
        out_slots[o] = slot
        position[slot] = o
        o += 1
