"""The Lloyd labels a Q-k-means refit takes from the last fit: matched by key, reused only where exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn import QKMeans, kernels
from stream_unlearn import lloyd_labels as lloyd_labels_module
from stream_unlearn.lloyd import assign, assign_cluster_sums
from stream_unlearn.lloyd_labels import LabelBounds, LloydLabels

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


def fitted_labels(X: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, LabelBounds]:
    _, _, labels, margins, lowers = assign_cluster_sums(X, C)
    return labels, LabelBounds.fresh(margins, lowers, C)


def test_labels_come_from_the_cache_under_the_same_start_and_where_the_margins_hold():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    keys = np.arange(50, dtype=np.uint64) * 3
    start = X[:4].copy()
    cache = LloydLabels()
    labels, bounds = fitted_labels(X, start)
    cache.record(keys, [start], [labels], [bounds])
    cache.inserted(keys[[7]])  # point 7 moved: its label is computed again
    X[7] = start[2] + 1e-9
    positions = cache.positions(keys)
    assert positions is not None and positions[7] == -1 and (np.delete(positions, 7) >= 0).all()
    got, _ = cache.labels(0, start, X, positions)
    assert got.tolist() == assign(X[None], start[None])[0].tolist() and cache.last_computed == 1
    moved = start.copy()
    moved[0, 0] = np.nextafter(moved[0, 0], np.inf)  # one ulp elsewhere: only labels near a tie are redone
    got, _ = cache.labels(0, moved, X, positions)
    assert got.tolist() == assign(X[None], moved[None])[0].tolist() and 1 <= cache.last_computed < 5
    assert cache.labels(1, start, X, positions) is None  # no second update recorded


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 5), st.sampled_from([0.0, 1e-12, 1e-3, 0.1, 3.0]),
       st.booleans(), st.sampled_from([0.0, 0.2, 0.5, 1.0]))
def test_cached_labels_are_the_nearest_centres_after_the_centres_move(seed, k, d, step, coarse, share):
    """Whatever the moves, of all centres or of a few (on a grid when coarse, where labels tie), over
    refits in a row (anchors kept, renumbered and retired), the labels a refit takes are
    :func:`nearest`'s and no bound exceeds its true value: the lower bound the distance to the second
    centre, the margin the gap between the two."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, d))
    if coarse:  # ties: repeated points and centres on points
        X = np.round(X)
    C = X[rng.choice(40, k, replace=False)]
    keys = np.arange(40, dtype=np.uint64)
    cache = LloydLabels()
    labels, bounds = fitted_labels(X, C)
    cache.record(keys, [C], [labels], [bounds])
    for _ in range(12):  # more refits than anchors are kept
        if rng.random() < 0.8:  # else the same start
            move = step * rng.normal(size=C.shape)
            if share:  # only some centres move (a Q refit's common case)
                move[rng.random(k) >= share] = 0.0
            C = np.round((C + move) * 4) / 4 if coarse else C + move
        positions = cache.positions(keys)
        labels, bounds = cache.labels(0, C, X, positions)
        assert labels.tolist() == assign(X[None], C[None])[0].tolist()
        assert len(bounds.anchors) <= lloyd_labels_module._MAX_ANCHORS
        anchored = bounds.anchors[bounds.anchor]
        if k > 1:
            dist = np.sort(np.sqrt(((X[:, None, :] - anchored) ** 2).sum(-1)), axis=1)
            tolerance = 1e-12 * (dist[:, 0] + dist[:, 1])
            assert (bounds.margins <= dist[:, 1] - dist[:, 0] + tolerance).all()
            assert (bounds.lowers <= dist[:, 1] + tolerance).all()
        cache.record(keys, [C], [labels], [bounds])


@pytest.mark.parametrize("seed", range(4))
def test_labels_settled_by_the_moved_centres_take_the_first_of_equal_distances(seed):
    """On an integer grid, one centre moving at a time ties points between it and their own centre,
    from either side in index order; the labels are still :func:`nearest`'s, first of equals."""
    rng = np.random.default_rng(seed)
    X = np.array([[x, y] for x in range(-6, 7) for y in range(-6, 7)], dtype=np.float64)
    C = X[rng.choice(len(X), 8, replace=False)].copy()
    keys = np.arange(len(X), dtype=np.uint64)
    cache = LloydLabels()
    labels, bounds = fitted_labels(X, C)
    cache.record(keys, [C], [labels], [bounds])
    settled = 0
    for _ in range(60):
        C = C.copy()
        C[rng.integers(8)] += rng.integers(-2, 3, size=2)
        labels, bounds = cache.labels(0, C, X, cache.positions(keys))
        assert labels.tolist() == assign(X[None], C[None])[0].tolist()
        settled += cache.last_settled
        cache.record(keys, [C], [labels], [bounds])
    assert settled > 0, "no label was settled by the moved centres alone"


def test_small_moves_compute_few_labels_again_and_back_and_forth_wears_nothing_down():
    rng = np.random.default_rng(2)
    X = np.concatenate([c + rng.normal(size=(500, 4)) for c in rng.normal(0, 8, size=(5, 4))])
    C = X[[0, 500, 1000, 1500, 2000]].copy()
    keys = np.arange(len(X), dtype=np.uint64)
    cache = LloydLabels()
    labels, bounds = fitted_labels(X, C)
    cache.record(keys, [C], [labels], [bounds])
    computed = []
    for step in range(40):
        moved = C + (0.3 if step % 2 == 0 else 0.0)
        labels, bounds = cache.labels(0, moved, X, cache.positions(keys))
        assert labels.tolist() == assign(X[None], moved[None])[0].tolist()
        computed.append(cache.last_computed)
        cache.record(keys, [moved], [labels], [bounds])
    assert sum(computed[10:]) < len(X) // 10, computed  # margins kept against their anchors: no wear


def test_the_cache_is_dropped_when_too_many_points_changed_since():
    keys = np.arange(8192, dtype=np.uint64)
    cache = LloydLabels()
    cache.record(keys, [np.zeros((2, 1))], [np.zeros(8192, dtype=np.int64)],
                 [LabelBounds.fresh(np.zeros(8192), np.zeros(8192), np.zeros((2, 1)))])
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
        reused.append(int((args[7] >= 0).sum()))  # positions
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


def test_refits_whose_labels_the_moved_centres_settle_equal_fresh_fits(monkeypatch):
    """Many clusters and deletes one at a time: most refits start where only a few centres moved, and
    the labels those settle must give every update's snapped centres of a fresh fit on the survivors."""
    settled = []
    labels_from = kernels.labels_from

    def counting(*args):
        computed, settled_here = labels_from(*args)
        settled.append(settled_here)
        return computed, settled_here

    monkeypatch.setattr(lloyd_labels_module.kernels, "labels_from", counting)
    rng = np.random.default_rng(3)
    X = np.concatenate([c + rng.normal(size=(40, 4)) for c in rng.normal(0, 3, size=(12, 4))])
    ids = [f"p{i}" for i in range(len(X))]
    model = QKMeans(k=12, seed=1, eps=0.2)
    model.insert(ids, X)
    model.flush()
    alive = np.ones(len(X), dtype=bool)
    for step, i in enumerate(rng.permutation(len(X))[:60]):
        model.delete([ids[i]])
        model.flush()
        alive[i] = False
        if step % 10 == 9:
            order = rng.permutation(np.flatnonzero(alive))
            fresh = QKMeans(k=12, seed=1, eps=0.2)
            fresh.insert([ids[j] for j in order], X[order])
            fresh.flush()
            assert np.array_equal(model._arrays["centres"], fresh._arrays["centres"])
    assert sum(settled) > 0, "no label was settled by the moved centres alone"


@settings(max_examples=40, deadline=None)
@given(st.integers(20, 300), st.integers(1, 6), st.integers(2, 9), st.sampled_from([0.05, 0.3, 1.0]),
       st.booleans(), st.integers(0, 2**31))
def test_a_fits_updates_taking_labels_from_the_previous_one_give_the_bits_of_assigning_all(n, d, k, eps, coarse,
                                                                                           seed):
    """With no cache (a first fit), each update after the second derives its labels from the update
    before it in the same fit: every update's snapped centres, sums and counts must be those of a
    fit that assigns every point from scratch, ties included (coarse: points on a grid)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 3 + rng.integers(0, 4, size=(n, 1)) * 4
    if coarse:
        X = np.round(X)
    ids = [f"p{i}" for i in range(n)]

    def fit(assign_all: bool) -> QKMeans:
        model = QKMeans(k=k, seed=seed % 1000, eps=eps, max_iter=8)
        if assign_all:
            model._labels_for = lambda *args: None
        model.insert(ids, X)
        model.flush()
        return model

    mine, reference = fit(False)._arrays, fit(True)._arrays
    for name in ("centres", "sums", "counts"):
        assert np.array_equal(mine[name], reference[name]), name


def test_first_fits_take_labels_from_their_previous_update():
    """The property above is not vacuous: on data that needs several updates, the previous-update path runs."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 4)) * 3 + rng.integers(0, 6, size=(3000, 1)) * 3
    model = QKMeans(k=8, seed=2, eps=0.05, max_iter=8)
    calls = []
    derive = model._lloyd_labels.derive

    def counting(start, X, labels, bounds, positions, same=False, rows=None):
        calls.append(bool((positions == np.arange(len(positions))).all()))
        return derive(start, X, labels, bounds, positions, same, rows)

    model._lloyd_labels.derive = counting
    model.insert([f"p{i}" for i in range(len(X))], X)
    model.flush()
    assert model.n_iter_ >= 4 and sum(calls) >= model.n_iter_ - 2
