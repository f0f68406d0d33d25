"""The numerical invariances the exact contract rests on.

A node's result must not depend on what else is in its batch, on padding, on
memory alignment, or on how many rows a distance is computed for.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn import QKMeans, kernels
from stream_unlearn.hashing import (
    combine,
    decimal_strings,
    id_keys,
    int_id_keys,
    seed_key,
    uniforms,
    uniforms_per_salt,
)
from stream_unlearn.lloyd import (
    assign,
    assign_cluster_sums,
    cluster_sums,
    fit_batch,
    fit_one,
    fit_ragged,
    fit_ranges,
    race_log_uniforms,
)


def misaligned(a: np.ndarray) -> np.ndarray:
    """The same values in a buffer shifted by 8 bytes."""
    buf = np.empty(a.size + 1, dtype=a.dtype)
    out = buf[1:].reshape(a.shape)
    out[...] = a
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**31))
def test_distances_are_row_independent(m, d, k, seed):
    rng = np.random.default_rng(seed)
    X, C = rng.normal(size=(1, m, d)) * 100, rng.normal(size=(1, k, d)) * 100
    labels = assign(X, C)[0]
    i = int(rng.integers(0, m))
    assert assign(X[:, i : i + 1].copy(), C)[0, 0] == labels[i]
    assert assign(misaligned(X), misaligned(C))[0].tolist() == labels.tolist()
    assert assign(np.broadcast_to(X[0, i], (3, 1, d)), np.repeat(C, 3, axis=0))[:, 0].tolist() == [labels[i]] * 3
    in_place = [kernels.sqd(X[0], i, C[0], j) for j in range(k)]
    alone = misaligned(X[0, i : i + 1])
    assert [kernels.sqd(alone, 0, C[0], j) for j in range(k)] == in_place


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(1, 10), st.integers(1, 5), st.integers(0, 300), st.integers(0, 2**31))
def test_cluster_sums_ignore_zero_weight_padding(m, d, k, pad, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, d))
    labels = rng.integers(0, k, size=m)
    sums, counts = cluster_sums(X, np.ones(m), labels, k)
    Xp = np.concatenate([X, rng.normal(size=(pad, d))])
    wp = np.concatenate([np.ones(m), np.zeros(pad)])
    lp = np.concatenate([labels, rng.integers(0, k, size=pad)])
    sums_p, counts_p = cluster_sums(Xp, wp, lp, k)
    assert np.array_equal(sums, sums_p) and np.array_equal(counts, counts_p)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 120), min_size=1, max_size=5), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31))
def test_a_problem_solves_the_same_alone_or_padded_in_a_batch(sizes, k, d, seed):
    rng = np.random.default_rng(seed)
    problems = []
    for i, m in enumerate(sizes):
        X = rng.normal(size=(m, d)) + rng.integers(0, 3, size=(m, 1)) * 10
        keys = id_keys([f"{i}-{j}" for j in range(m)], seed)
        problems.append((X, keys))
    width = max(sizes)
    Xb = np.zeros((len(sizes), width, d))
    wb = np.zeros((len(sizes), width))
    kb = np.zeros((len(sizes), width), dtype=np.uint64)
    for i, (X, keys) in enumerate(problems):
        Xb[i, : len(X)], wb[i, : len(X)], kb[i, : len(X)] = X, 1.0, keys
    salt = seed_key(seed, 5)
    batch = fit_batch(Xb, wb, kb, k, 10, salt)
    for i, (X, keys) in enumerate(problems):
        if len(X) == 0:
            assert not batch.weights[i].any()
            continue
        alone = fit_one(X, np.ones(len(X)), keys, k, 10, salt)
        assert np.array_equal(alone.centroids[0], batch.centroids[i])
        assert np.array_equal(alone.weights[0], batch.weights[i])
    # The same problems laid out ragged (no padding) solve the same.
    flat_keys = np.concatenate([keys for _, keys in problems])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    ragged = fit_ragged(np.concatenate([X for X, _ in problems]), np.ones(sum(sizes)),
                        race_log_uniforms(flat_keys, k, salt), offsets, k, 10, 2 + int(np.log(k)))
    assert np.array_equal(ragged.centroids, batch.centroids) and np.array_equal(ragged.weights, batch.weights)


def test_seeding_follows_k_means_plus_plus_on_separated_blobs():
    """Greedy races find every well-separated blob (plain k-means++ misses ~20%)."""
    rng = np.random.default_rng(0)
    misses = 0
    for trial in range(50):
        centres = rng.normal(0, 5, size=(5, 25))
        X = centres[rng.integers(0, 5, 400)] + rng.normal(size=(400, 25))
        keys = id_keys([f"{trial}-{j}" for j in range(400)], trial)
        result = fit_one(X, np.ones(400), keys, 5, 20, seed_key(trial, 1))
        misses += int(np.any(result.weights[0] < 20))
    assert misses <= 2


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 60), st.integers(1, 5), st.data())
def test_taking_rows_in_slot_order_gives_numpys_gather(rows, d, data):
    """A Q refit's rows, read in slot order and placed: numpy's ``V[slots]`` and column |max|, repeats too."""
    rng = np.random.default_rng(rows * 7 + d)
    V = rng.normal(size=(rows, d)) * 10.0 ** rng.integers(-3, 4, size=(rows, 1))
    slots = np.array(data.draw(st.lists(st.integers(0, rows - 1), max_size=2 * rows)), dtype=np.int64)
    out, max_abs = np.empty((len(slots), d)), np.empty(d)
    kernels.take_rows_abs_max(V, slots, out, max_abs)
    assert np.array_equal(out, V[slots])
    assert np.array_equal(max_abs, np.abs(V[slots]).max(axis=0) if len(slots) else np.zeros(d))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["int8", "uint8", "int32", "int64", "uint64"]), st.data(), st.integers(0, 2**40))
def test_int_array_ids_hash_as_their_decimal_strings(dtype, data, seed):
    """An int array's ids are their decimal strings: the keys computed from the ints are those bits, and
    the strings written by compiled code are Python's."""
    info = np.iinfo(dtype)
    values = np.array(data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=1, max_size=40)),
                      dtype=dtype)
    texts = [str(v) for v in values.tolist()]
    assert np.array_equal(int_id_keys(values, seed), id_keys(texts, seed))
    assert decimal_strings(values) == texts


def test_id_keys_are_pinned():
    """The id hash is part of every stored model: snapshots keep keys and node results computed from them,
    so a change of its bits (a faster kernel, a refactor) would make every old snapshot disagree with a
    refit. These values were computed by the first (numpy) implementation."""
    ids = ["alice", "42", "-7", "ünïcødé-id", "an-id-longer-than-sixteen-bytes"]
    assert [hex(int(v)) for v in id_keys(ids, 0)] == [
        "0x43089f00551c310a", "0x65f32613e071876f", "0x5ab8e46fad475261", "0x3355627b22dc6712", "0x716dee88136b1ee"]
    assert [hex(int(v)) for v in id_keys(ids, 7)] == [
        "0x1e04713b46fb1ed7", "0xae578608f9c49a8a", "0xe23c196838fd832e", "0x681ee7ff332e9ed4", "0xe61c1bca2fbb13fd"]
    assert [hex(int(v)) for v in int_id_keys(np.array([42, -7, 0, 2**63 - 1]), 0)] == [
        "0x65f32613e071876f", "0x5ab8e46fad475261", "0x7dec2568d8f4ec61", "0xf4215082df9817d3"]


def test_a_model_fed_int_array_ids_is_the_model_fed_their_strings():
    ids = np.array([-(2**63), -7, 0, 5, 10**18, 2**63 - 1], dtype=np.int64)
    X = np.arange(18.0).reshape(6, 3)
    by_ints, by_strings = QKMeans(k=2, seed=3), QKMeans(k=2, seed=3)
    by_ints.insert(ids, X)
    by_strings.insert([str(i) for i in ids.tolist()], X)
    assert by_ints.to_state() == by_strings.to_state()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=50), st.integers(0, 2**40), st.integers(1, 9))
def test_compiled_race_uniforms_are_numpys_bits(keys, salt, k):
    """Race uniforms decide seeding: the compiled pass must give numpy's definition bit for bit."""
    keys = np.array(keys, dtype=np.uint64)
    salts = combine(np.uint64(salt), np.arange(k, dtype=np.uint64))
    assert np.array_equal(uniforms_per_salt(keys, salts).view(np.uint64),
                          uniforms(keys[None], salts[:, None]).view(np.uint64))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=20, unique=True), st.integers(0, 2**40))
def test_an_id_key_depends_on_that_id_alone(ids, seed):
    """Keys fix leaves and canonical order: they must not depend on the other ids in a call."""
    try:
        together = id_keys(ids, seed)
    except UnicodeEncodeError:
        return
    for i, point_id in enumerate(ids):
        assert id_keys([point_id], seed)[0] == together[i]
        assert id_keys([point_id, point_id + "-" * 30], seed)[0] == together[i]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31), st.floats(0.0, 2.0))
def test_a_capped_distance_is_exact_below_its_cap(d, seed, scale):
    """``sqd_below`` may stop early only when the full distance could not be below the cap."""
    rng = np.random.default_rng(seed)
    A, B = rng.normal(size=(1, d)) * 10, rng.normal(size=(1, d)) * 10
    full = kernels.sqd(A, 0, B, 0)
    for cap in (full * scale, full, np.nextafter(full, np.inf), np.inf, 0.0):
        capped = kernels.sqd_below(A, 0, B, 0, cap)
        if full < cap:
            assert capped == full
        else:
            assert capped >= cap


def _reference_sqd(a: np.ndarray, b: np.ndarray) -> float:
    """The documented order in plain Python floats: feature f to accumulator f mod 4 (the tail past
    the last full four to accumulator 0), combined as ``(s0 + s1) + (s2 + s3)``."""
    acc = [0.0, 0.0, 0.0, 0.0]
    full = len(a) - len(a) % 4
    for f in range(len(a)):
        t = float(a[f]) - float(b[f])
        acc[f % 4 if f < full else 0] += t * t
    return (acc[0] + acc[1]) + (acc[2] + acc[3])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.integers(0, 2**31))
def test_distance_bits_follow_the_documented_order(d, seed):
    """Cached node results in snapshots were computed with this order: any other order is a new model."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(1, d)) * 10.0 ** rng.integers(-3, 4, size=d)
    B = rng.normal(size=(1, d)) * 10.0 ** rng.integers(-3, 4, size=d)
    assert kernels.sqd(A, 0, B, 0) == _reference_sqd(A[0], B[0])


def test_node_batches_solve_the_same_on_one_thread_or_all():
    """A batch big enough to be split over threads gives each node what it gets solved alone."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 60, size=40)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    X = rng.normal(size=(offsets[-1], 6)) + rng.integers(0, 3, size=(offsets[-1], 1)) * 8
    w = rng.random(offsets[-1]) * (rng.random(offsets[-1]) > 0.1)
    logu = np.log(rng.random((4, offsets[-1])))
    together = fit_ranges(X, w, logu, offsets[:-1], offsets[1:], 4, 10, 3)
    for b in range(40):
        alone = fit_ranges(X, w, logu, offsets[b : b + 1], offsets[b + 1 : b + 2], 4, 10, 3)
        assert np.array_equal(together.centroids[b], alone.centroids[0])
        assert np.array_equal(together.weights[b], alone.weights[0])
    assert np.any(together.weights > 0)


def test_nodes_read_through_row_indices_solve_as_on_the_gathered_rows():
    """DC leaves are solved straight from the store (``rows``): the bits of a gathered copy."""
    rng = np.random.default_rng(8)
    sizes = rng.integers(0, 40, size=30)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    store = rng.normal(size=(3 * offsets[-1] + 5, 6)) + rng.integers(0, 3, size=(3 * offsets[-1] + 5, 1)) * 8
    rows = rng.permutation(len(store))[: offsets[-1]]
    w = np.ones(offsets[-1])
    logu = np.log(rng.random((4, offsets[-1])))
    gathered = fit_ragged(store[rows], w, logu, offsets, 4, 10, 3)
    indexed = fit_ragged(store, w, logu, offsets, 4, 10, 3, rows=rows)
    assert np.array_equal(gathered.centroids, indexed.centroids) and np.array_equal(gathered.weights, indexed.weights)
    assert np.any(indexed.weights > 0) and not np.array_equal(indexed.centroids, fit_ragged(
        store[: offsets[-1]], w, logu, offsets, 4, 10, 3).centroids)  # the rows, not the first rows, were read


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.lists(st.integers(0, 6), max_size=12), st.lists(st.integers(0, 2**40), max_size=300)),
                min_size=1, max_size=8))
def test_segment_order_sorts_each_segment_stably_and_reports_ties(segments):
    """Small segments by insertion sort, big ones (a DC tree with few leaves) by merge sort: same order."""
    keys = np.array([k for seg in segments for k in seg], dtype=np.uint64)
    offsets = np.concatenate([[0], np.cumsum([len(seg) for seg in segments])]).astype(np.int64)
    order = np.empty(len(keys), dtype=np.int64)
    ties = kernels.segment_order(keys, offsets, order)
    owner = np.repeat(np.arange(len(segments)), [len(seg) for seg in segments])
    assert np.array_equal(order, np.lexsort((keys, owner)))
    assert ties == any(len(set(seg)) < len(seg) for seg in segments)


def test_ascii_and_non_ascii_ids_hash_alike_in_one_call():
    ids = ["a", "point-17", "x" * 40]
    assert np.array_equal(id_keys(ids + ["é"], 5)[:3], id_keys(ids, 5))


def _plain_lloyd(X, w, C, max_iter):
    """Lloyd as written in the definition: reassign every item, every iteration."""
    C = C.copy()
    labels = np.empty(len(X), dtype=np.int64)
    kernels.assign_rows(X, C, labels)
    n_iter = 0
    for _ in range(max_iter):
        sums, counts = cluster_sums(X, w, labels, len(C))
        n_iter += 1
        new = np.where(counts[:, None] > 0, sums / np.where(counts > 0, counts, 1.0)[:, None], C)
        if np.array_equal(new, C):
            break
        C = new
        kernels.assign_rows(X, C, labels)
    weights = np.bincount(labels, weights=np.where(w > 0, w, 0.0), minlength=len(C))
    return C, weights, n_iter


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 12), st.integers(1, 7), st.integers(0, 2**31),
       st.sampled_from([1.0, 1e-150, 1e-300, 1e150, 3.0]), st.booleans())
def test_lloyd_with_bounds_gives_the_labels_of_plain_lloyd(m, d, k, seed, scale, coarse):
    """Hamerly bounds only skip work: centres, weights and iterations equal plain Lloyd's bit for bit."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, d)) + rng.integers(0, 4, size=(m, 1)) * 3.0
    if coarse:  # many exact ties and duplicates
        X = np.round(X)
    X *= scale
    w = rng.random(m) * (rng.random(m) > 0.1)
    C0 = X[rng.integers(0, m, size=k)] + rng.normal(size=(k, d)) * scale * 0.1
    C, weights = C0.copy(), np.zeros(k)
    n_iter = kernels.lloyd_node(X, w, C, 25, weights)
    ref_C, ref_weights, ref_iter = _plain_lloyd(X, w, C0, 25)
    assert n_iter == ref_iter
    assert np.array_equal(C, ref_C)
    assert np.array_equal(weights, ref_weights)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 120), st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**31),
       st.sampled_from([1.0, 1e-150, 1e150]), st.booleans())
def test_all_items_at_once_gives_the_bits_of_one_pair_at_a_time(m, d, k, seed, scale, coarse):
    """The SIMD distance loops (transposed items) reproduce sqd and nearest_two exactly."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, d))
    if coarse:
        X = np.round(X)
    X *= scale
    C = X[rng.integers(0, m, size=k)] + np.round(rng.normal(size=(k, d))) * scale
    XT = np.ascontiguousarray(X.T)
    work, out = np.empty((5, m)), np.empty(m)
    for j in range(k):
        kernels.distances_to_row(XT, C[j], work[0], work[1], work[2], work[3], out)
        assert out.tolist() == [kernels.sqd(X, i, C, j) for i in range(m)]
    labels, first, second = np.empty(m, np.int64), np.empty(m), np.empty(m)
    kernels.nearest_two_all(XT, C, work, labels, first, second)
    for i in range(m):
        assert (labels[i], first[i], second[i]) == kernels.nearest_two(X, i, C)


def _plain_seeding(X, w, logu, k, L):
    """Greedy race seeding as defined in ``seed_node``'s docstring, one pair at a time in Python."""
    m = len(X)
    d2 = np.zeros(m)
    seeds, pots = [], []
    for j in range(k):
        live = [i for i in range(m) if w[i] > 0 and (j == 0 or w[i] * d2[i] > 0)]
        scores = {i: logu[j, i] / (w[i] if j == 0 else w[i] * d2[i]) for i in live}
        top = sorted(live, key=lambda i: (-scores[i], i))[:L]
        if not top:  # no mass left: a duplicate by weight alone
            pick = max((i for i in range(m) if w[i] > 0), key=lambda i: (logu[j, i] / w[i], -i))
            seeds.append(pick)
            pots.append([np.inf] * L)
            for i in range(m):
                dist = kernels.sqd(X, i, X, pick)
                if j == 0 or dist < d2[i]:
                    d2[i] = dist
            continue
        rows, row_pots = [], []
        for c in top:
            row = np.array([min(d2[i], kernels.sqd(X, i, X, c)) if j else kernels.sqd(X, i, X, c) for i in range(m)])
            pot = 0.0
            for i in range(m):
                if w[i] > 0:
                    pot += w[i] * row[i]
            rows.append(row)
            row_pots.append(pot)
        best = int(np.argmin(row_pots))
        seeds.append(top[best])
        pots.append(row_pots + [np.inf] * (L - len(top)))
        d2 = np.where(w > 0, rows[best], d2)
    return seeds, pots


def _seeding_problem(m: int, d: int, k: int, seed: int, coarse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Items in up to four blobs, weights (some 0), race log-uniforms, and L. ``coarse``: duplicates,
    so that steps run out of mass and fall back."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, d)) + rng.integers(0, 4, size=(m, 1)) * 3.0
    if coarse:
        X = np.round(X / 3.0)
    w = rng.random(m) * (rng.random(m) > 0.1)
    w[0] = 1.0
    return X, w, np.log(rng.random((k, m))), min(3, m)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 110), st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**31), st.booleans())
def test_seeding_matches_its_definition_pair_by_pair(m, d, k, seed, coarse):
    """Seeding (SIMD distances in nodes of 16+ items, scalar below) equals the definition computed pair by pair."""
    X, w, logu, L = _seeding_problem(m, d, k, seed, coarse)
    index = np.full(k, -1, np.int64)
    cand, score = np.full((k, L), -1, np.int64), np.full((k, L), -np.inf)
    pots, fallback = np.full((k, L), np.inf), np.zeros(k, np.bool_)
    kernels.seed_node(X, w, logu, k, L, index, cand, score, pots, fallback, np.zeros(m), np.empty(0, np.int64))
    ref_seeds, ref_pots = _plain_seeding(X, w, logu, k, L)
    assert index.tolist() == ref_seeds
    assert pots.tolist() == ref_pots


def _seed_outputs(X: np.ndarray, XT: np.ndarray, w: np.ndarray, logu: np.ndarray, k: int, L: int) -> list[np.ndarray]:
    m = len(X)
    out = [np.full(k, -1, np.int64), np.full((k, L), -1, np.int64), np.full((k, L), -np.inf), np.full((k, L), np.inf),
           np.zeros(k, np.bool_), np.zeros(m)]
    nearest = np.empty(m, np.int64)
    kernels._seed(X, XT, w, logu, k, L, *out, np.empty((k, 0)), np.zeros(k, np.bool_), nearest)
    return [*out, nearest]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 110), st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**31), st.booleans())
def test_seeding_reads_items_once_or_per_candidate_alike_and_knows_each_nearest_seed(m, d, k, seed, coarse):
    """Both seeding loops (SIMD, one candidate at a time; scalar, all candidates per item) give the
    same bits, and the nearest seeds they report are the labels assign() gives against the seeds."""
    X, w, logu, L = _seeding_problem(m, d, k, seed, coarse)
    wide = _seed_outputs(X, np.ascontiguousarray(X.T), w, logu, k, L)
    scalar = _seed_outputs(X, np.empty((d, 0)), w, logu, k, L)
    for a, b in zip(wide, scalar):
        assert np.array_equal(a, b)
    index, nearest = scalar[0], scalar[-1]
    if (index < 0).any():
        assert (nearest == -1).all()
    else:
        expected = np.where(w > 0, assign(X[None], X[index][None])[0], -1)
        assert nearest.tolist() == expected.tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**31), st.booleans())
def test_one_pass_assign_and_sums_give_the_bits_of_two(m, d, k, seed, ties):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, d)) * 10
    if ties:  # points halfway between centres, and centres repeated: first on ties
        X = np.round(X / 10)
    C = X[rng.integers(0, m, size=k)].copy()
    sums, counts, labels, _, _ = assign_cluster_sums(X, C)
    ref_labels = assign(X[None], C[None])[0]
    ref_sums, ref_counts = cluster_sums(X, np.ones(m), ref_labels, k)
    assert np.array_equal(sums, ref_sums) and np.array_equal(counts, ref_counts)
    assert labels.tolist() == ref_labels.tolist()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 80), st.integers(0, 240), st.integers(1, 9), st.integers(1, 8), st.integers(0, 2**31),
       st.booleans())
def test_a_node_fit_ignores_items_of_weight_zero_wherever_they_sit(m, pad, d, k, seed, coarse):
    """Weight-0 items (a sparse leaf's unused centres) are dropped before the solve: same bits as never there."""
    X, w, logu, L = _seeding_problem(m, d, k, seed, coarse)
    live = w > 0
    X, w, logu = X[live], w[live], np.ascontiguousarray(logu[:, live])
    rng = np.random.default_rng(seed + 1)
    at = np.sort(rng.choice(len(X) + pad, len(X), replace=False))  # where the live items sit among the padding
    Xp, wp = rng.normal(size=(len(X) + pad, d)) * 5, np.zeros(len(X) + pad)
    logu_p = np.log(rng.random((k, len(X) + pad)))
    Xp[at], wp[at], logu_p[:, at] = X, w, logu
    C, weights = np.zeros((k, d)), np.zeros(k)
    n_iter = kernels.fit_node(X, w, logu, k, L, 10, C, weights)
    Cp, weights_p = np.full((k, d), np.nan), np.full(k, np.nan)
    assert kernels.fit_node(Xp, wp, logu_p, k, L, 10, Cp, weights_p) == n_iter
    assert np.array_equal(C, Cp) and np.array_equal(weights, weights_p)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 110), st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**31), st.booleans())
def test_a_node_fit_is_its_seeding_then_lloyd_from_the_seeds(m, d, k, seed, coarse):
    """fit_node reuses seeding's distances for Lloyd's first assignment: same bits as computing them again."""
    X, w, logu, L = _seeding_problem(m, d, k, seed, coarse)  # coarse: then no distances are kept
    C, weights = np.zeros((k, d)), np.zeros(k)
    n_iter = kernels.fit_node(X, w, logu, k, L, 10, C, weights)
    index = np.full(k, -1, np.int64)
    kernels.seed_node(X, w, logu, k, L, index, np.full((k, L), -1, np.int64), np.full((k, L), -np.inf),
                      np.full((k, L), np.inf), np.zeros(k, np.bool_), np.zeros(m), np.empty(0, np.int64))
    ref_C, ref_weights = X[index].copy(), np.zeros(k)
    assert n_iter == kernels.lloyd_node(X, w, ref_C, 10, ref_weights)
    assert np.array_equal(C, ref_C) and np.array_equal(weights, ref_weights)
