"""The exact-unlearning contract: the product's most important tests.

After any interleaving of inserts, deletes, replacements, flushes and state
round trips, a model's centroids are bit-identical (np.array_equal) to a
fresh model of the same config fed only the surviving points, in a shuffled
order and in other batch sizes. For Q-k-means this also proves every
certificate that passed was right: a wrong one would leave stale centroids.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import CONFIGS

from stream_unlearn import QKMeans

POOL = 40


def make_vectors(shape: str, rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Vectors of a named data shape."""
    if shape == "blobs":
        centres = rng.normal(0, 6, size=(3, d))
        return centres[rng.integers(0, 3, n)] + rng.normal(0, 1, size=(n, d))
    if shape == "duplicates":
        return rng.integers(0, 3, size=(n, d)).astype(np.float64)
    if shape == "flat-column":
        X = rng.normal(0, 1, size=(n, d))
        X[:, 0] = 4.25
        return X
    return rng.uniform(-1, 1, size=(n, d)) * 10.0 ** rng.integers(-2, 3)


def point_id(i: int) -> object:
    """Ids mixing str and int forms (int i means the string of i) and many lengths."""
    return i if i % 3 == 0 else f"user-{i}" + "x" * (i % 23)


def fresh_fit(model, order_seed: int, batch: int):
    """A new model of the same config fed the survivors shuffled, in batches."""
    ids, X, partitions = model.held()
    order = np.random.default_rng(order_seed).permutation(len(ids))
    fresh = model.fresh()
    for start in range(0, len(order), batch):
        part = order[start : start + batch]
        fresh.insert([ids[i] for i in part], X[part], partitions[part] if fresh._n_partitions() > 1 else None)
    return fresh


operation = st.one_of(
    st.tuples(st.just("insert"), st.lists(st.integers(0, POOL - 1), min_size=1, max_size=25, unique=True)),
    st.tuples(st.just("delete"), st.lists(st.integers(0, POOL + 5), min_size=1, max_size=8, unique=True)),
    st.tuples(st.just("flush"), st.just([])),
    st.tuples(st.just("roundtrip"), st.just([])),
)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(operation, min_size=1, max_size=12),
    shape=st.sampled_from(["blobs", "duplicates", "flat-column", "uniform"]),
    d=st.integers(1, 4),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    batch=st.integers(1, 50),
)
def test_interleavings_match_a_fresh_fit_on_the_survivors(config, ops, shape, d, k, seed, batch):
    rng = np.random.default_rng(seed)
    model = CONFIGS[config](k, seed)
    type_ = type(model)
    for kind, members in ops:
        if kind == "insert":
            model.insert([point_id(i) for i in members], make_vectors(shape, rng, len(members), d))
        elif kind == "delete":
            held_before = len(model)
            removed = model.delete([point_id(i) for i in members])
            assert len(model) == held_before - removed
        elif kind == "flush":
            model.flush()
        else:
            model = type_.from_state(model.to_state())
        expected = fresh_fit(model, seed + 1, batch).centroids_
        if len(model):
            assert model.centroids_.shape == (k, d)
            assert np.array_equal(model.centroids_, expected), f"{kind} broke exactness"
        else:  # nothing held: no centroids (a fresh model does not even know d)
            assert len(model.centroids_) == 0 and len(expected) == 0
    assert model.verify()


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_long_stream_of_single_deletes_and_inserts_stays_exact(config):
    rng = np.random.default_rng(7)
    model = CONFIGS[config](3, 11)
    ids = [f"p{i}" for i in range(600)]
    model.insert(ids, make_vectors("blobs", rng, 600, 3))
    model.flush()
    for step in range(60):
        if step % 3 == 2:
            model.insert([f"new{step}"], make_vectors("blobs", rng, 1, 3))
        else:
            model.delete([ids[rng.integers(0, 600)]])
        assert np.array_equal(model.centroids_, fresh_fit(model, step, 97).centroids_)


def test_q_certificates_pass_and_are_counted():
    """On well-separated data most Q-k-means certificates pass (the point of Q)."""
    rng = np.random.default_rng(3)
    model = QKMeans(k=3, seed=5, eps=1.0, max_iter=6)
    ids = [f"p{i}" for i in range(3000)]
    model.insert(ids, make_vectors("blobs", rng, 3000, 2))
    model.flush()
    for i in rng.choice(3000, 100, replace=False):
        model.delete([ids[i]])
        model.flush()
        model.insert([f"x{i}"], make_vectors("blobs", rng, 1, 2))
        model.flush()
    assert model.certificates_passed_ + model.certificates_failed_ == 200
    assert model.certificate_pass_rate_ > 0.5
    assert model.refits_ == 1 + model.certificates_failed_
    assert model.verify()


def test_restore_needs_no_refit_and_keeps_certifying():
    rng = np.random.default_rng(4)
    model = QKMeans(k=3, seed=2, eps=1.0, max_iter=6)
    model.insert(range(2000), make_vectors("blobs", rng, 2000, 2))
    restored = type(model).from_state(model.to_state())
    assert restored.refits_ == model.refits_ == 1
    passed = restored.certificates_passed_
    for i in range(5, 15):
        restored.delete([i])
        restored.flush()
    assert restored.certificates_passed_ > passed
    assert np.array_equal(restored.centroids_, fresh_fit(restored, 0, 500).centroids_)
