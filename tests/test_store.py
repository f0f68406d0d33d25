"""The point store: canonical order of a bucket, including 64-bit key collisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn import canonical, pieces
from stream_unlearn.kernels import INSERTION_SORT_MAX
from stream_unlearn.store import ROWS_PER_PAGE, PointStore


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
        k, _, sizes = store.gather([0, 2])
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
    assert sorted(store.bucket_ids(1)) == ["b", "c", "e"]
    assert store.vector("e").tolist() == [7.0] and store.vector("c").tolist() == [2.0]
    assert store.gather([1])[0].tolist() == [0, 2, 3]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 60), min_size=1, max_size=30, unique=True)),
                min_size=1, max_size=15),
       st.integers(1, 6), st.sampled_from([1, 2, PointStore.repack_min_free]))
def test_the_store_agrees_with_a_dict_after_any_adds_and_removes(steps, n_buckets, repack_min_free):
    """Rows found by id, bucket contents and gather's canonical order, against a plain dict model.

    Buckets span several pages, emptied pages are reused, and with a low
    repack threshold the arrays are rebuilt in the middle of removals.
    """
    store = PointStore(n_buckets=n_buckets)
    store.repack_min_free = repack_min_free
    expected: dict[str, tuple[int, int, float]] = {}  # id -> (bucket, key, value)
    counter = 0
    for adding, members in steps:
        names = [f"p{m}" for m in members]
        if adding:
            new = [i for i in names if i not in expected]
            if not new:
                continue
            keys = np.array([sum(map(ord, i)) % 7 for i in new], dtype=np.uint64)  # few keys: many ties
            buckets = np.array([int(i[1:]) % n_buckets for i in new], dtype=np.int64)
            X = np.arange(counter, counter + len(new), dtype=np.float64)[:, None]
            counter += len(new)
            store.add(new, keys, X, buckets)
            expected.update({i: (int(b), int(k), float(x[0])) for i, b, k, x in zip(new, buckets, keys, X)})
        else:
            for i in names:
                if i in expected:
                    assert store.remove(i) == expected.pop(i)[0]
        assert len(store) == len(expected)
        for i, (b, k, x) in expected.items():
            assert store.vector(i).tolist() == [x] and int(store.key(i)) == k
        live = sorted({b for b, _, _ in expected.values()})
        if live:
            keys, X, sizes = store.gather(live)
            want = sorted(((b, k, i) for i, (b, k, _) in expected.items()))
            assert sizes.tolist() == [sum(1 for b2, _, _ in want if b2 == b) for b in live]
            assert keys.tolist() == [k for _, k, _ in want]
            assert X[:, 0].tolist() == [expected[i][2] for _, _, i in want]
        for b in live:  # one bucket in one compiled call, as a single event's flush lists its leaf
            want_keys, want_slots, _ = store.gather_slots([b])
            got_keys, got_slots = store.bucket_in_order(b)
            assert np.array_equal(got_keys, want_keys) and np.array_equal(got_slots, want_slots)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(1, 3 * ROWS_PER_PAGE), st.integers(INSERTION_SORT_MAX - 2, INSERTION_SORT_MAX + 40)),
       st.integers(0, 2**32), st.booleans())
def test_one_bucket_listed_in_key_order_matches_the_general_gather(n, seed, tie):
    """Distinct keys over several pages (and removals that move rows); with a tie, the (key, id) order.
    Buckets too big to sort by insertion take the general path."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(2**62, size=n, replace=False).astype(np.uint64) * np.uint64(3)  # over 2**63 too
    if tie and n > 1:
        keys[-1] = keys[0]
    ids = [f"p{i}" for i in rng.permutation(n)]
    store = PointStore(n_buckets=2)
    store.add(ids, keys, rng.normal(size=(n, 2)), np.zeros(n, dtype=np.int64))
    for i in ids[: n // 3]:
        store.remove(i)
    want_keys, want_slots, _ = store.gather_slots([0])
    got_keys, got_slots = store.bucket_in_order(0)
    assert np.array_equal(got_keys, want_keys) and np.array_equal(got_slots, want_slots)
    assert np.all(want_keys[1:] >= want_keys[:-1])


def _numbered_points(n: int, d: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Ids p0..p(n-1) (point i gets key i below) and random vectors."""
    return [f"p{i}" for i in range(n)], np.random.default_rng(seed).normal(size=(n, d))


def test_many_deletions_give_the_memory_back_and_keep_every_row():
    n, d = 20_000, 3
    ids, X = _numbered_points(n, d, seed=0)
    rng = np.random.default_rng(0)
    store = PointStore(n_buckets=8)
    store.repack_min_free = 16  # (the default waits for 1024 free pages, ~100x this store's final size)
    store.add(ids, np.arange(n, dtype=np.uint64), X, np.arange(n, dtype=np.int64) % 8)
    full = store.vector_bytes()
    assert full <= 1.3 * n * (d + 1) * 8  # vectors and keys
    keep = set(rng.choice(n, 2_000, replace=False).tolist())
    for i in range(n):
        if i not in keep:
            store.remove(ids[i])
    # Repacked whenever half the pages were free: at most twice the pages the rows need.
    assert store.vector_bytes() <= 2 * (len(keep) + 8 * ROWS_PER_PAGE) * (d + 1) * 8 < full / 4
    assert len(store) == len(keep)
    for i in keep:
        assert np.array_equal(store.vector(ids[i]), X[i]) and int(store.key(ids[i])) == i
    assert sorted(store.bucket_ids(3)) == sorted(ids[i] for i in keep if i % 8 == 3)


def test_growing_in_many_small_adds_keeps_every_row():
    """The arrays grow in place (resize) many times over; every row, key and id stays found."""
    n, d = 6_000, 2
    ids, X = _numbered_points(n, d, seed=1)
    store = PointStore(n_buckets=5)
    for lo in range(0, n, 37):
        hi = min(n, lo + 37)
        store.add(ids[lo:hi], np.arange(lo, hi, dtype=np.uint64), X[lo:hi], np.arange(lo, hi, dtype=np.int64) % 5)
        if lo % 370 == 0 and lo:
            store.remove(ids[lo - 1])
    removed = {ids[lo - 1] for lo in range(370, n, 370)}
    assert len(store) == n - len(removed)
    for i, point_id in enumerate(ids):
        if point_id not in removed:
            assert np.array_equal(store.vector(point_id), X[i]) and int(store.key(point_id)) == i
    keys, vectors, sizes = store.gather([2])
    want = [i for i in range(2, n, 5) if ids[i] not in removed]
    assert keys.tolist() == want and np.array_equal(vectors, X[want]) and sizes.tolist() == [len(want)]
    assert sorted(store.bucket_ids(2)) == sorted(ids[i] for i in want)


def test_canonical_order_of_the_whole_store_breaks_key_collisions_by_id():
    """Q-k-means refits read every point in (key, id) order; equal keys in different buckets too."""
    ids, keys, buckets = ["c", "a", "b", "z", "y"], [9, 9, 1, 9, 4], [0, 1, 2, 1, 0]
    for order in (list(range(5)), list(range(5))[::-1]):
        store = _store([ids[i] for i in order], [keys[i] for i in order], [buckets[i] for i in order])
        sorted_keys, slots = store.canonical_slots()
        assert sorted_keys.tolist() == [1, 4, 9, 9, 9]
        assert store.ids_at(slots).tolist() == ["b", "y", "a", "c", "z"]
        assert np.array_equal(store.canonical()[1], _reorder(store, ["b", "y", "a", "c", "z"]))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 80), min_size=1, max_size=30, unique=True),
                          st.booleans()), min_size=1, max_size=20),
       st.sampled_from([3, 2**20, 2**64 - 1]), st.sampled_from([1, 2, PointStore.repack_min_free]),
       st.sampled_from([0, canonical.COMPACT_MIN]))
def test_the_kept_canonical_order_equals_a_fresh_sort_after_any_changes(steps, key_range, repack_min_free,
                                                                        compact_min):
    """canonical_slots() keeps its order between calls (only the changes are merged in): after any
    adds, removes (rows moved into holes), repacks and prunings of the slots noted for new points
    in between, it gives what a fresh sort by (key, id) gives. Few distinct keys (3) make 64-bit
    collisions, which sort everything anew."""
    kept_min, canonical.COMPACT_MIN = canonical.COMPACT_MIN, compact_min
    try:
        _drive_canonical_order(steps, key_range, repack_min_free)
    finally:
        canonical.COMPACT_MIN = kept_min


def test_the_slots_noted_for_new_points_stay_bounded_without_reads():
    """A Q model whose certificates pass reads no order for a long time: the notes of where new
    points sit are pruned, not kept per change, and the order read afterwards is still right."""
    store = PointStore(n_buckets=4)
    ids, X = _numbered_points(200_000, 1, seed=3)
    store.add(ids[:100], np.arange(100, dtype=np.uint64) * 7919, X[:100], np.arange(100) % 4)
    store.canonical_slots()
    held = list(ids[:100])
    for i in range(100, 60_000):  # churn: each new point replaces the oldest one
        store.add([ids[i]], np.array([i * 7919], dtype=np.uint64), X[i : i + 1], np.array([i % 4]))
        store.remove(held.pop(0))
        held.append(ids[i])
    order = store._canonical
    assert order._noted <= 2 * canonical.COMPACT_MIN + 1  # not one note per change: 59,900 adds, as many moves
    _, slots = store.canonical_slots()
    assert store.ids_at(slots).tolist() == sorted(held, key=lambda i: int(i[1:]))


def _drive_canonical_order(steps, key_range, repack_min_free):
    store = PointStore(n_buckets=5)
    store.repack_min_free = repack_min_free
    expected: dict[str, tuple[int, float]] = {}  # id -> (key, value)
    counter = 0
    for adding, members, read in steps:
        names = [f"p{m}" for m in members]
        if adding:
            new = [i for i in names if i not in expected]
            if new:
                keys = np.array([(int(i[1:]) * 0x9E3779B97F4A7C15) % key_range for i in new], dtype=np.uint64)
                X = np.arange(counter, counter + len(new), dtype=np.float64)[:, None]
                counter += len(new)
                store.add(new, keys, X, np.array([int(i[1:]) % 5 for i in new], dtype=np.int64))
                expected.update({i: (int(k), float(x[0])) for i, k, x in zip(new, keys, X)})
        else:
            for i in names:
                if expected.pop(i, None) is not None:
                    store.remove(i)
        if read:
            keys, slots = store.canonical_slots()
            want = sorted((k, i) for i, (k, _) in expected.items())
            assert keys.tolist() == [k for k, _ in want]
            assert store.ids_at(slots).tolist() == [i for _, i in want]
            if want:  # (an empty store may not know its width yet)
                assert store.vector_rows()[slots, 0].tolist() == [expected[i][1] for _, i in want]


def test_held_rows_run_front_to_back_over_exactly_the_held_points():
    n, d = 2_000, 3
    ids, X = _numbered_points(n, d, seed=4)
    store = PointStore(n_buckets=8)
    store.add(ids, np.arange(n, dtype=np.uint64), X, np.arange(n, dtype=np.int64) % 8)
    for point_id in ids[::3]:
        store.remove(point_id)
    V, slots = store.held_rows()
    assert np.all(np.diff(slots) > 0)
    assert sorted(store.ids_at(slots).tolist()) == sorted(set(ids) - set(ids[::3]))
    assert np.array_equal(V[slots], X[[int(store.key(i)) for i in store.ids_at(slots)]])


def test_captures_reuse_their_buffers_and_each_gathers_its_own_moment(monkeypatch):
    """capture_rows copies into the buffers the last gather gave back: whatever the store did in
    between (grown, shrunk, rewritten), each capture gathers the rows of its own moment, once, in
    steps with a pause before each (the writer thread's GIL holds stay short)."""
    monkeypatch.setattr(pieces, "STEP_ITEMS", 256)
    n, d = 3_000, 4
    ids, X = _numbered_points(n, d, seed=1)
    store = PointStore(n_buckets=8)
    store.repack_min_free = 16
    store.add(ids[:1000], np.arange(1000, dtype=np.uint64), X[:1000], np.arange(1000, dtype=np.int64) % 8)
    moments = []
    for lo, hi, drop in [(1000, 1200, 300), (1200, 3000, 0), (3000, 3000, 2500), (3000, 3000, 0)]:
        expected = store.copy_rows()
        gather = store.capture_rows()
        store.add(ids[lo:hi], np.arange(lo, hi, dtype=np.uint64), X[lo:hi], np.arange(lo, hi, dtype=np.int64) % 8)
        for point_id in list(store._where)[:drop]:  # after the cut: must not show in it
            store.remove(point_id)
        pauses = []
        got = gather(lambda: pauses.append(1))  # noqa: B023 - called here, before the loop goes on
        for a, b in zip(got, expected):
            assert np.array_equal(a, b)
        assert len(pauses) >= len(expected[0]) // 256  # the gather's steps (and the buffer's clearing)
        with pytest.raises(RuntimeError, match="gathered once"):
            gather()
        spare_ids, spare_vectors = store._capture_buffers._spare
        assert all(v is None for v in spare_ids)  # no id outlives its capture in the kept buffer
        moments.append((spare_ids, spare_vectors))
    # captured at 1000, 900, 2700 and 200 points: the kept buffers serve until the store outgrows them
    assert moments[1][1] is moments[0][1]
    assert moments[2][1] is not moments[1][1] and len(moments[2][1]) > len(moments[1][1])
    assert moments[3][1] is moments[2][1]
