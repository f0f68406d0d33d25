"""The canonical copy a Q refit merges instead of gathering: the held points, by key, nothing else."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn.canonical_rows import CanonicalRows

D = 3


def _reference(held: dict[int, np.ndarray]) -> tuple[list[int], np.ndarray]:
    keys = sorted(held)
    return keys, np.array([held[k] for k in keys]).reshape(len(keys), D)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=60), st.integers(0, 2**32))
def test_merged_rows_are_the_held_points_in_key_order(ops, seed):
    rng = np.random.default_rng(seed)
    held = {k: rng.normal(size=D) for k in range(0, 30, 2)}
    keys, X = _reference(held)
    rows = CanonicalRows()
    rows.adopt(np.array(keys, dtype=np.uint64), X.copy())
    for step, (insert, key) in enumerate(ops):
        if insert:  # a new id, or a held one re-inserted: removed first, as the model does
            if key in held:
                rows.removed(np.uint64(key))
            held[key] = rng.normal(size=D)
            rows.added(np.array([key], dtype=np.uint64), held[key][None])
        elif key in held:
            gone = held.pop(key)
            rows.removed(np.uint64(key))
            assert rows._X is None or not (rows._X == gone).all(axis=1).any()  # blanked at once
        if step % 7 == 6:  # a refit now and then: the merge becomes the next copy
            got = rows.rows()
            assert got is not None
            want_keys, want_X = _reference(held)
            assert got[0].tolist() == want_keys and np.array_equal(got[1], want_X)
            assert np.array_equal(got[2], np.abs(want_X).max(axis=0) if held else np.zeros(D))
    got = rows.rows()
    assert got is not None
    assert got[0].tolist() == _reference(held)[0] and np.array_equal(got[1], _reference(held)[1])


def test_a_key_naming_two_points_drops_the_copy():
    rows = CanonicalRows()
    rows.adopt(np.array([1, 5], dtype=np.uint64), np.ones((2, D)))
    rows.added(np.array([5], dtype=np.uint64), np.zeros((1, D)))  # another id whose key collides with 5's
    assert rows.rows() is None
    rows.adopt(np.array([1, 5, 5], dtype=np.uint64), np.ones((3, D)))
    assert rows.rows() is None


def test_a_removal_it_cannot_place_drops_the_copy():
    rows = CanonicalRows()
    rows.adopt(np.array([1, 5], dtype=np.uint64), np.ones((2, D)))
    rows.removed(np.uint64(3))
    assert rows.rows() is None


def test_the_copy_is_dropped_when_too_much_changed_since():
    n = 8192
    rows = CanonicalRows()
    rows.adopt(np.arange(n, dtype=np.uint64), np.ones((n, D)))
    rows.added(np.arange(n, n + 2048, dtype=np.uint64), np.ones((2048, D)))
    assert rows.rows() is not None  # a quarter: kept, and the merge is the new copy of 10240 rows
    rows.added(np.arange(n + 2048, n + 2048 + 2561, dtype=np.uint64), np.ones((2561, D)))
    assert rows.rows() is None
