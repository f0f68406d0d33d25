"""The point store: canonical order of a bucket, including 64-bit key collisions."""

from __future__ import annotations

import numpy as np

from stream_unlearn.store import PointStore


def _store(ids: list[str], keys: list[int], buckets: list[int]) -> PointStore:
    store = PointStore(n_buckets=3)
    X = np.array([[float(i)] for i in range(len(ids))])
    store.add(ids, np.array(keys, dtype=np.uint64), X, np.array(buckets, dtype=np.int64))
    return store


def test_gather_orders_each_bucket_by_key_then_id_whatever_the_insertion_order():
    ids, keys, buckets = ["c", "a", "b", "z", "y"], [9, 9, 9, 4, 1], [0, 0, 0, 2, 2]
    forward = _store(ids, keys, buckets)
    backward = _store(ids[::-1], keys[::-1], buckets[::-1])
    for store in (forward, backward):
        k, X, sizes = store.gather([0, 2])
        assert k.tolist() == [9, 9, 9, 1, 4] and sizes.tolist() == [3, 2]
    # Same key in bucket 0: ties go by id (a, b, c), so both stores give the same rows.
    assert np.array_equal(forward.gather([0, 2])[1], _reorder(forward, ["a", "b", "c", "y", "z"]))
    assert np.array_equal(backward.gather([0, 2])[1], _reorder(backward, ["a", "b", "c", "y", "z"]))


def _reorder(store: PointStore, ids: list[str]) -> np.ndarray:
    return np.array([store.vector(i) for i in ids])


def test_removing_and_re_adding_keeps_rows_found_by_id():
    store = _store(["a", "b", "c", "d"], [1, 2, 3, 4], [1, 1, 1, 2])
    assert store.remove("a") == 1
    store.add(["e"], np.array([0], dtype=np.uint64), np.array([[7.0]]), np.array([1]))
    assert sorted(store.buckets[1].ids) == ["b", "c", "e"]
    assert store.vector("e").tolist() == [7.0] and store.vector("c").tolist() == [2.0]
    assert store.gather([1])[0].tolist() == [0, 2, 3]
