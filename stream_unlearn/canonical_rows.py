"""The held points in canonical order, kept from one Q-k-means refit to the next.

A refit reads every held point in canonical (key) order. Gathering them from
the store visits its pages at random, and points that arrived in random order
spread every page over all of memory: 10 ms to order the keys and 15 ms to
gather 150k x 25 rows. Between two refits only a few thousand points change,
so the last refit's copy is kept: inserts are noted with their vectors,
removals blank their row at once, and the next refit merges both into a new
copy front to back. Same keys, same rows, same order, so the same bits.

A deleted point's vector does not outlive its removal here; the copy lives
in memory only (never in a state or a snapshot).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Drop the copy once the changes noted since it was made exceed this share of its rows (and at
#: least _MIN_CHANGES): inserted vectors wait here until the next refit, and gathering anew is cheap
#: next to a copy that old.
_MAX_CHANGED_SHARE = 4
_MIN_CHANGES = 1024


class CanonicalRows:
    """Keys (ascending, distinct) and vectors of the held points, as of the last refit plus changes."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._keys: np.ndarray | None = None
        self._X: np.ndarray | None = None
        self._gone: np.ndarray | None = None
        self._added: dict[int, np.ndarray] = {}
        self._n_changes = 0

    def adopt(self, keys: np.ndarray, X: np.ndarray) -> None:
        """Keep a refit's points (canonical ``keys``, rows of ``X``), unless two share a key.

        ``X`` becomes this object's: the caller must not write to it.
        """
        self.clear()
        if len(keys) > 1 and np.any(keys[1:] == keys[:-1]):
            return  # a 64-bit collision: equal keys are ordered by id, which this copy does not track
        self._keys, self._X = keys, X
        self._gone = np.zeros(len(keys), dtype=np.bool_)

    def added(self, keys: np.ndarray, X: np.ndarray) -> None:
        """Points joined the store (after any of their ids held were removed)."""
        if self._keys is None:
            return
        keys = np.asarray(keys, dtype=np.uint64)
        rows = np.array(X, dtype=np.float64)  # the caller's array may change; views of this copy do not
        held = self._held_positions(keys)
        fresh = keys.tolist()
        if held.any() or len(set(fresh)) < len(fresh) or any(key in self._added for key in fresh):
            self.clear()  # a key now names two held points
            return
        self._added.update(zip(fresh, rows))
        self._count(len(fresh))

    def removed(self, key: np.uint64) -> None:
        """A point left the store: drop it here too, and blank its vector if this copy holds it."""
        if self._keys is None:
            return
        if self._added.pop(int(key), None) is not None:
            return
        assert self._X is not None and self._gone is not None
        i = int(np.searchsorted(self._keys, key))
        if i == len(self._keys) or self._keys[i] != key or self._gone[i]:
            self.clear()  # the copy does not match the store: start again from it
            return
        self._gone[i] = True
        self._X[i] = 0.0
        self._count(1)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Keys, vectors (canonical order) and the largest ``|x|`` per feature of the points held now;
        None if no copy is kept. The result is kept as the next copy."""
        if self._keys is None:
            return None
        assert self._X is not None and self._gone is not None
        new_keys = np.fromiter(self._added, dtype=np.uint64, count=len(self._added))
        order = np.argsort(new_keys)
        d = self._X.shape[1]
        new_X = (np.stack([self._added[k] for k in new_keys[order].tolist()]) if len(order)
                 else np.empty((0, d)))
        n = len(self._keys) - int(self._gone.sum()) + len(new_keys)
        keys, X, max_abs = np.empty(n, dtype=np.uint64), np.empty((n, d)), np.empty(d)
        _merge(self._keys, self._X, self._gone, new_keys[order], new_X, keys, X, max_abs)
        self.adopt(keys, X)
        return keys, X, max_abs

    def _held_positions(self, keys: np.ndarray) -> np.ndarray:
        """Whether each key names a row of the copy still held."""
        assert self._keys is not None and self._gone is not None
        if not len(self._keys):
            return np.zeros(len(keys), dtype=np.bool_)
        i = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return (self._keys[i] == keys) & ~self._gone[i]

    def _count(self, changes: int) -> None:
        assert self._keys is not None
        self._n_changes += changes
        if self._n_changes > max(_MIN_CHANGES, len(self._keys) // _MAX_CHANGED_SHARE):
            self.clear()


@njit(cache=True, nogil=True, boundscheck=False)
def _merge(old_keys, old_X, gone, new_keys, new_X, keys, X, max_abs):
    """Merge the rows of ``old`` not ``gone`` and all of ``new`` (both by ascending key) into
    ``keys``/``X``, front to back; ``max_abs`` = the largest ``|X|`` per feature (0 if no rows)."""
    d = X.shape[1]
    for f in range(d):
        max_abs[f] = 0.0
    i = 0
    j = 0
    for p in range(len(keys)):
        while i < len(old_keys) and gone[i]:
            i += 1
        take_old = j >= len(new_keys) or (i < len(old_keys) and old_keys[i] < new_keys[j])
        if take_old:
            keys[p] = old_keys[i]
            for f in range(d):
                x = old_X[i, f]
                X[p, f] = x
                if abs(x) > max_abs[f]:
                    max_abs[f] = abs(x)
            i += 1
        else:
            keys[p] = new_keys[j]
            for f in range(d):
                x = new_X[j, f]
                X[p, f] = x
                if abs(x) > max_abs[f]:
                    max_abs[f] = abs(x)
            j += 1
