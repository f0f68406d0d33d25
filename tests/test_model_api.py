"""The model API: defined edge cases, clear errors that change nothing, state safety."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import CONFIGS

from stream_unlearn import DCKMeans, KMeans, QKMeans, StateError, load_model
from stream_unlearn.pieces import joined
from stream_unlearn.validation import normalize_id, normalize_ids

ALL = sorted(CONFIGS)


def blobs(n: int, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 8, size=(4, d))[rng.integers(0, 4, n)] + rng.normal(size=(n, d))


@pytest.fixture(params=ALL)
def model(request):
    m = CONFIGS[request.param](3, 1)
    m.insert([f"p{i}" for i in range(50)], blobs(50))
    m.flush()
    return m


@pytest.mark.parametrize(
    "ids, X, message",
    [
        (["a", "b"], [[1.0, 2.0, np.nan], [0, 0, 0]], "NaN"),
        (["a"], [[1.0, 1e300, 0.0]], "beyond"),
        (["a"], [[1.0, -1e300, 0.0]], "beyond"),
        (np.array([7, 7]), [[1.0, 2.0, 3.0]] * 2, "duplicate"),  # the int array fast path
        (["a"], [[1.0 + 2j, 0.0, 0.0]], "complex"),
        (["a"], [[1.0, np.inf, 0.0]], "NaN or infinity"),
        (["a"], [[1.0, 2.0]], "features"),
        (["a", "b"], [[1.0, 2.0, 3.0], [1.0]], "rectangular"),
        (["a", "a"], [[1.0, 2.0, 3.0]] * 2, "duplicate"),
        (["x" * 257], [[1.0, 2.0, 3.0]], "longer than"),
        ([True], [[1.0, 2.0, 3.0]], "str or an int"),
        ([""], [[1.0, 2.0, 3.0]], "empty"),
        ("abc", [[1.0, 2.0, 3.0]] * 3, "single string"),
        (["a", "b"], [[1.0, 2.0, 3.0]], "rows"),
        (["a"], [1.0, 2.0, 3.0], "2-D"),
        ([1.5], [[1.0, 2.0, 3.0]], "str or an int"),
    ],
)
def test_bad_insert_raises_and_changes_nothing(model, ids, X, message):
    before = model.to_state()
    with pytest.raises(ValueError, match=message):
        model.insert(ids, X)
    assert model.to_state() == before


def test_bad_delete_raises_and_changes_nothing(model):
    before = model.to_state()
    with pytest.raises(ValueError, match="duplicate"):
        model.delete(["p1", "p1"])
    with pytest.raises(ValueError):
        model.delete([None])
    for not_ids in (None, 5):  # not a sequence: a ValueError that says so, not a TypeError
        with pytest.raises(ValueError, match="sequence of ids"):
            model.delete(not_ids)
    with pytest.raises(ValueError, match="real numbers"):
        model.predict({})
    assert model.to_state() == before


def test_delete_counts_held_and_ignores_unknown(model):
    assert model.delete(["p1", "p2", "nobody"]) == 2
    assert "p1" not in model and "p3" in model
    assert model.n_points_ == 48


def test_int_ids_mean_their_decimal_string():
    m = DCKMeans(k=2, seed=0)
    m.insert([7, np.int64(8)], [[0.0], [1.0]])
    assert "7" in m and 8 in m and m.delete(["8"]) == 1


@pytest.mark.parametrize("ids", [np.arange(-3, 40), np.arange(50, dtype=np.uint64) * 2**58, list(range(-3, 40)),
                                 [2**70, -(2**70)], np.arange(5, dtype=np.int8)])
def test_int_id_batches_match_their_strings_one_by_one(ids):
    """The whole-batch path for integer ids gives exactly what each id's own normalization gives."""
    expected = [normalize_id(i) for i in ids]
    assert normalize_ids(ids) == expected
    with pytest.raises(ValueError, match="duplicate id"):
        normalize_ids(np.concatenate([np.asarray(ids), np.asarray(ids)[:1]]) if isinstance(ids, np.ndarray)
                      else [*ids, ids[0]])
    with pytest.raises(ValueError, match="longer than 5 bytes"):
        normalize_ids(list(ids) + [10**6], max_id_bytes=5)


def test_reinsert_replaces_the_vector(model):
    model.insert(["p0"], [[100.0, 100.0, 100.0]])
    ids, X, _ = model.held()
    assert X[ids.index("p0")].tolist() == [100.0, 100.0, 100.0]
    assert model.n_points_ == 50
    assert model.verify()


@pytest.mark.parametrize("config", ALL)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_fewer_points_than_k_is_defined(config, n):
    m = CONFIGS[config](4, 0)
    m.insert(range(n), np.arange(n * 2, dtype=float).reshape(n, 2))
    C = m.centroids_
    assert C.shape == (4, 2) and np.all(np.isfinite(C))
    assert m.verify()


@pytest.mark.parametrize("config", ALL)
def test_duplicate_vectors_and_zero_variance_columns(config):
    m = CONFIGS[config](3, 0)
    X = np.zeros((30, 4))
    X[:10, 1] = 5.0
    m.insert(range(30), X)
    assert np.all(np.isfinite(m.centroids_)) and m.verify()
    m.delete(range(10))
    assert m.verify()


def test_empty_model_has_no_centroids_and_predict_refuses():
    m = KMeans(k=2)
    assert m.centroids_.shape == (0, 0) and m.loss() == 0.0 and m.verify()
    with pytest.raises(ValueError, match="no points"):
        m.predict([[1.0]])


def test_predict_and_loss(model):
    labels = model.predict(blobs(10, seed=3))
    assert labels.shape == (10,) and labels.min() >= 0 and labels.max() < 3
    model.delete([f"p{i}" for i in range(0, 50, 3)])  # holes in the store's pages
    _, X, _ = model.held()
    C = model.centroids_
    expected = ((X[:, None, :] - C[None]) ** 2).sum(axis=2).min(axis=1)
    assert model.loss() == pytest.approx(expected.mean(), rel=1e-12)
    assert model.sq_dist_sum(C[:1]) == pytest.approx(((X - C[0]) ** 2).sum(), rel=1e-12)
    for wrong in (C[:, :1], C[0], np.zeros((2, 7))):  # the compiled pass reads C unchecked
        with pytest.raises(ValueError, match="centres"):
            model.sq_dist_sum(wrong)


@pytest.mark.parametrize("bad", [b"", b"garbage", msgpack.packb({"format": "other"}),
                                 msgpack.packb({"format": "stream-unlearn-model", "version": 99})])
def test_state_that_is_not_ours_is_refused(bad):
    with pytest.raises(StateError):
        load_model(bad)


def test_state_of_another_algorithm_is_refused(model):
    other = QKMeans if not isinstance(model, QKMeans) else DCKMeans
    with pytest.raises(StateError, match="not"):
        other.from_state(model.to_state())


def test_state_with_tampered_arrays_is_refused(model):
    body = msgpack.unpackb(model.to_state())
    body["vectors"]["data"] = body["vectors"]["data"][:-8]
    with pytest.raises(StateError):
        load_model(msgpack.packb(body, use_bin_type=True))


def test_state_whose_buckets_or_centroids_do_not_fit_is_refused(model):
    """Buckets follow from the ids (a shifted DC leaf would refit the wrong points); centroids are (k, d)."""
    from stream_unlearn import state as state_format

    body = msgpack.unpackb(model.to_state())
    buckets = state_format.unpack_array(body["buckets"])
    body["buckets"] = state_format.pack_array((buckets + 1) % max(2, model._store.n_buckets))
    with pytest.raises(StateError, match="bucket numbers"):  # out of range (one bucket) or not the ids
        load_model(msgpack.packb(body, use_bin_type=True))
    body = msgpack.unpackb(model.to_state())
    body["centroids"] = state_format.pack_array(np.zeros((1, 7)))
    with pytest.raises(StateError, match="centroids have shape"):
        load_model(msgpack.packb(body, use_bin_type=True))


def test_a_dc_state_without_its_tree_refits_it_at_the_next_change():
    m = DCKMeans(k=3, n_leaves=16, fanout=4)
    m.insert(range(200), blobs(200))
    body = msgpack.unpackb(m.to_state())
    body["cache"] = {}
    restored = DCKMeans.from_state(msgpack.packb(body, use_bin_type=True))
    assert np.array_equal(restored.centroids_, m.centroids_)
    restored.insert([999], [[0.1, 0.2, 0.3]])
    m.insert([999], [[0.1, 0.2, 0.3]])
    assert np.array_equal(restored.centroids_, m.centroids_) and restored.verify()


def test_a_dc_state_from_before_node_k_keeps_solving_k_centres_per_node():
    """States written before ``node_k`` existed hold trees of k-centre nodes: they load as node_k = k
    (the default) and go on changing as that model does."""
    m = DCKMeans(k=3, n_leaves=16, fanout=4, node_k=3)
    m.insert(range(200), blobs(200))
    body = msgpack.unpackb(m.to_state())
    del body["params"]["node_k"]
    old = DCKMeans.from_state(msgpack.packb(body, use_bin_type=True))
    assert old.get_params() == m.get_params() and old.level_k_ == [3, 3, 3]
    assert DCKMeans(k=3, n_leaves=16, fanout=4, node_k=6).level_k_ == [3, 6, 3]
    old.delete([7, 8])
    m.delete([7, 8])
    assert np.array_equal(old.centroids_, m.centroids_) and old.verify()


def _internal_levels(n_leaves: int, fanout: int) -> int:
    levels, width = 0, n_leaves
    while width > 1:
        width, levels = -(-width // fanout), levels + 1
    return levels


@given(k=st.integers(1, 600), n_leaves=st.integers(1, 2_000_000))
@settings(max_examples=300, deadline=None)
def test_the_default_fanout_spreads_the_fewest_levels_of_small_nodes_evenly(k, n_leaves):
    """The fewest levels whose nodes hold at most 320 items (or 4 children), at the smallest fanout
    those levels allow: never deeper than ``320 // k`` children (in 4..64) gave, nor with nodes over
    320 items where those were under."""
    fanout = DCKMeans(k=k, n_leaves=n_leaves).fanout
    levels = _internal_levels(n_leaves, fanout)
    assert fanout * k <= 320 or fanout <= 4
    if levels > 1:  # one level fewer would need bigger nodes
        shallower = next(f for f in range(2, n_leaves + 1) if _internal_levels(n_leaves, f) < levels)
        assert shallower * k > 320 and shallower > 4
    assert fanout == 2 or _internal_levels(n_leaves, fanout - 1) > levels
    old = max(4, min(64, 320 // k))
    assert levels <= _internal_levels(n_leaves, old) and fanout * k <= max(320, old * k)


def test_the_default_fanout_at_4096_leaves():
    """k <= 5 (the worker's default k=5 among them) keeps the fanout its snapshots were written with."""
    assert [DCKMeans(k=k).fanout for k in (1, 5, 6, 7, 10, 20, 21, 26, 40, 41, 100)] == \
        [64, 64, 16, 16, 16, 16, 8, 8, 8, 6, 4]
    assert DCKMeans(k=7).level_widths_ == [4096, 256, 16, 1]


def test_dc_internal_nodes_of_2k_centres_keep_the_loss_near_a_global_fit():
    """Each internal level summarises its children; k centres lose a little per level, which
    compounds (Letter, k=26: 1.07x a global fit; 1.04x with node_k = 2k)."""
    rng = np.random.default_rng(7)
    k, n = 26, 12000
    X = rng.normal(0, 1, (k, 16))[rng.integers(0, k, n)] + rng.normal(size=(n, 16)) * rng.uniform(0.3, 1.5, (n, 1))

    def mean_loss(make) -> float:
        losses = []
        for seed in range(3):
            m = make(seed)
            m.insert(range(n), X)
            losses.append(m.loss())
        return float(np.mean(losses))

    global_fit = mean_loss(lambda seed: KMeans(k=k, seed=seed))
    summaries = mean_loss(lambda seed: DCKMeans(k=k, seed=seed, node_k=2 * k))
    k_centres = mean_loss(lambda seed: DCKMeans(k=k, seed=seed))
    assert summaries <= 1.02 * global_fit and summaries < k_centres


def test_dc_internal_nodes_keep_at_least_k_centres():
    with pytest.raises(ValueError, match="node_k must be an integer >= 5, got 4"):
        DCKMeans(k=5, node_k=4)


def test_a_compact_dc_state_restores_the_same_model_and_summaries():
    """The worker's snapshots leave DC's leaf level out: the levels above are kept, the leaves
    refit at the first change."""
    m = DCKMeans(k=3, n_leaves=16, fanout=4, n_partitions=2)
    m.insert(range(300), blobs(300))
    with_tree = m.to_state()
    blob = joined(m.capture_state(compact=True)())
    assert len(blob) < len(with_tree) and msgpack.unpackb(blob)["cache"]["first_level"] == 1
    restored = DCKMeans.from_state(blob)
    assert np.array_equal(restored.centroids_, m.centroids_)
    for got, want in zip(restored.partition_summaries(), m.partition_summaries()):
        assert np.array_equal(got, want)
    assert restored.to_state() == with_tree  # the refit leaves are the same leaves
    again = DCKMeans.from_state(blob)
    again.delete([5, 6])
    m.delete([5, 6])
    assert np.array_equal(again.centroids_, m.centroids_) and again.verify()
    assert again.to_state() == m.to_state()


def test_a_compact_dc_state_keeps_the_stored_subtree_roots_for_verify():
    """Partition summaries of a compact state are the stored ones, not a refit: so `verify` of a
    partitioned snapshot still checks what the worker computed. A tampered weight shows."""
    m = DCKMeans(k=3, n_leaves=16, fanout=4, n_partitions=2)
    m.insert(range(300), blobs(300))
    body = msgpack.unpackb(joined(m.capture_state(compact=True)()))
    top = body["cache"]["weights"][-1]
    weights = np.frombuffer(top["data"], dtype=top["dtype"]).reshape(top["shape"]).copy()
    weights[0, 0] += 1.0
    top["data"] = weights.tobytes()
    restored = DCKMeans.from_state(msgpack.packb(body, use_bin_type=True))
    assert restored.partition_summaries()[1][0, 0] == m.partition_summaries()[1][0, 0] + 1.0
    restored.insert([999], [[0.1, 0.2, 0.3]])  # a change refits the leaves and every ancestor
    m.insert([999], [[0.1, 0.2, 0.3]])
    assert np.array_equal(restored.partition_summaries()[1], m.partition_summaries()[1])


def test_load_model_dispatches_on_algorithm(model):
    restored = load_model(model.to_state())
    assert type(restored) is type(model)
    assert np.array_equal(restored.centroids_, model.centroids_)


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": True}, {"seed": -1}, {"k": 2.5}])
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        DCKMeans(**kwargs)


@pytest.mark.parametrize("kwargs", [{"eps": 0}, {"eps": float("nan")}, {"eps": float("inf")}, {"gamma": 2.0},
                                    {"gamma": True}, {"max_iter": "3"}, {"max_iter": 2.7}, {"max_iter": None},
                                    {"n_candidates": 0}, {"max_id_bytes": 0}])
def test_bad_q_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        QKMeans(**kwargs)


def test_dc_partitions_follow_kafka_default_partitioner():
    from kafka.partitioner.default import murmur2

    from stream_unlearn.hashing import murmur2_partition

    for key in ["", "a", "ab", "abc", "abcd", "user-1", "élan", "x" * 77]:
        assert murmur2_partition(key, 7) == (murmur2(key.encode()) & 0x7FFFFFFF) % 7


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=30), st.integers(1, 64))
def test_the_compiled_batch_partitioner_is_kafkas(ids, n_partitions):
    from kafka.partitioner.default import murmur2

    from stream_unlearn.hashing import murmur2_partitions

    expected = [(murmur2(i.encode()) & 0x7FFFFFFF) % n_partitions for i in ids]
    assert murmur2_partitions(ids, n_partitions).tolist() == expected


def test_dc_explicit_partitions_are_validated():
    m = DCKMeans(k=2, n_partitions=2)
    with pytest.raises(ValueError, match="partitions"):
        m.insert(["a"], [[1.0]], partitions=[2])
    m.insert(["a", "b"], [[1.0], [2.0]], partitions=[0, 1])
    assert m.held()[2].tolist() == [0, 1]


@pytest.mark.parametrize("algorithm, compiled", [
    ("dc", ["fit_nodes", "fit_path", "segment_order", "assign_rows"]),
    ("q", ["seed_node", "q_seeding_certificate", "q_lloyd_certificate", "q_certify_inserts", "q_entry_cost",
           "q_race_entrant", "take_rows_abs_max", "cluster_sums_of_rows", "q_edit_stale", "q_edited_update",
           "labels_from"]),
    ("kmeans", ["fit_nodes"]),
])
def test_warm_up_compiles_the_kernels_an_algorithm_uses(algorithm, compiled):
    """In a fresh interpreter (this one has run other models): nothing may be left to compile."""
    code = ("import sys; from stream_unlearn import kernels; from stream_unlearn.warmup import warm_up; "
            f"warm_up({algorithm!r}, k=3); "
            f"print(' '.join(n for n in {compiled!r} if not getattr(kernels, n).signatures))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == [], f"not compiled by warm_up: {out.stdout}"


_STREAM_AFTER_WARM_UP = """
import numpy as np
from numba.core.registry import CPUDispatcher
from stream_unlearn import MODELS, kernels, pages
from stream_unlearn.demo import gaussian_mixture
from stream_unlearn.warmup import warm_up

def signatures():
    return {f"{m.__name__}.{n}": len(f.signatures) for m in (kernels, pages) for n, f in vars(m).items()
            if isinstance(f, CPUDispatcher)}

warm_up(ALGORITHM, k=5, **PARAMS)
before = signatures()
X = gaussian_mixture(6000, 25, 5, seed=3)[0]
model = MODELS[ALGORITHM](k=5, **PARAMS)
model.insert([f"p{i}" for i in range(2000)], X[:2000])
model.flush()
rng = np.random.default_rng(1)
for b in range(40):  # the worker's batches: a few deletes of held points, new points
    held = np.flatnonzero([f"p{i}" in model for i in range(2000 + 90 * b)])
    model.delete([f"p{i}" for i in rng.choice(held, 10, replace=False)])
    model.insert([f"p{i}" for i in range(2000 + 90 * b, 2090 + 90 * b)], X[2000 + 90 * b : 2090 + 90 * b])
    model.flush()
model.delete([next(f"p{i}" for i in range(2000) if f"p{i}" in model)])  # one event: one leaf's path
model.flush()
model.predict(X[:3])
model.loss()
print(" ".join(sorted(n for n, count in signatures().items() if count != before[n])))
"""


@pytest.mark.parametrize("algorithm, params", [("dc", {}), ("dc", {"n_leaves": 64, "fanout": 4}), ("q", {"eps": 0.1})])
def test_a_stream_after_warm_up_compiles_nothing(algorithm, params):
    """Whatever path a stream of batches takes (refits, certificates, a newcomer joining a seeding
    race, one event's path up a tree of any depth), warm_up compiled it already: a kernel first
    compiled inside a batch cost it 1.3 s."""
    code = f"ALGORITHM = {algorithm!r}\nPARAMS = {params!r}\n" + _STREAM_AFTER_WARM_UP
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == [], f"compiled after warm_up: {out.stdout}"
