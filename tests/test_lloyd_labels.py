"""The Lloyd labels a Q-k-means refit takes from the last fit: matched by key, reused only where exact."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn import QKMeans, kernels
from stream_unlearn import lloyd_labels as lloyd_labels_module
from stream_unlearn.lloyd import assign
from stream_unlearn.lloyd_labels import LloydLabels

keys_st = st.lists(st.integers(0, 40), max_size=30)


@settings(max_examples=200, deadline=None)
@given(keys_st, keys_st, keys_st)
def test_keys_match_by_position_unless_changed_absent_or_repeated(old, new, changed):
    old_keys, new_keys = np.array(sorted(old), dtype=np.uint64), np.array(sorted(new), dtype=np.uint64)
    changed_keys = np.array(sorted(changed), dtype=np.uint64)
    out = np.empty(len(new_keys), dtype=np.int64)
    ok = kernels.match_sorted_keys(old_keys, new_keys, changed_keys, out)
    repeated = len(set(old)) < len(old) or len(set(new)) < len(new)
    assert ok == (not repeated)
    if ok:
        expected = [old_keys.tolist().index(key) if key in old and key not in changed else -1
                    for key in new_keys.tolist()]
        assert out.tolist() == expected


def test_labels_come_from_the_cache_only_under_the_same_start():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    keys = np.arange(50, dtype=np.uint64) * 3
    start = X[:4].copy()
    cache = LloydLabels()
    cache.record(keys, [start], [assign(X[None], start[None])[0]])
    cache.inserted(keys[[7]])  # point 7 moved: its label is computed again
    X[7] = start[2] + 1e-9
    positions = cache.positions(keys)
    assert positions is not None and positions[7] == -1 and (np.delete(positions, 7) >= 0).all()
    assert cache.labels(0, start, X, positions).tolist() == assign(X[None], start[None])[0].tolist()
    moved = start.copy()
    moved[0, 0] = np.nextafter(moved[0, 0], np.inf)  # one ulp elsewhere: not the same start
    assert cache.labels(0, moved, X, positions) is None
    assert cache.labels(1, start, X, positions) is None  # no second update recorded


def test_the_cache_is_dropped_when_too_many_points_changed_since():
    keys = np.arange(8192, dtype=np.uint64)
    cache = LloydLabels()
    cache.record(keys, [np.zeros((2, 1))], [np.zeros(8192, dtype=np.int64)])
    cache.inserted(keys[:2048])
    assert cache.positions(keys) is not None
    cache.inserted(keys[2048:2049])
    assert cache.positions(keys) is None


def test_a_refit_reusing_labels_after_a_vector_replacement_equals_a_fresh_fit(monkeypatch):
    """A held id re-inserted far away changes its label; the refit must not take its old one."""
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([c + rng.normal(scale=0.5, size=(60, 2)) for c in centres])
    ids = [f"p{i}" for i in range(len(X))]
    model = QKMeans(k=3, seed=1, eps=0.05)
    model.insert(ids, X)
    model.flush()
    reused = []
    labels_from = kernels.labels_from

    def counting(*args):
        reused.append(int((args[3] >= 0).sum()))
        return labels_from(*args)

    monkeypatch.setattr(lloyd_labels_module.kernels, "labels_from", counting)
    X = X.copy()
    for i in range(0, 30, 3):
        X[i] = X[i] + np.array([10.0, 0.0])  # to the next cluster over
        model.insert([ids[i]], X[i : i + 1])
        model.flush()
        fresh = QKMeans(k=3, seed=1, eps=0.05)
        order = rng.permutation(len(X))
        fresh.insert([ids[j] for j in order], X[order])
        fresh.flush()
        assert np.array_equal(model.centroids_, fresh.centroids_)
        # every update's snapped centres, not only the last: a wrong label early on can heal by the end
        assert np.array_equal(model._arrays["centres"], fresh._arrays["centres"])
    assert model.lloyd_refits_ > 1 and reused, "no refit took labels from the cache"
