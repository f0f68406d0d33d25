"""The Q-k-means seeding certificate on hand-made races: each of its refusals is needed.

Random interleavings rarely hit a newcomer that would join a seeding race
(quantized Lloyd often lands on the same fixpoint anyway), so these cases
pin every check of ``kernels.q_seeding_certificate`` down directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_exact_contract import fresh_fit, make_vectors, point_id

from stream_unlearn import QKMeans, kernels
from stream_unlearn import state as state_format
from stream_unlearn.quantize import corrected_centroids, snap

# Two seeding steps, two candidates each, on a line; candidate 0 won both steps.
CAND = np.array([[[0.0], [10.0]], [[5.0], [20.0]]])
CHOSEN = np.array([0, 0])
POTENTIALS = np.array([[100.0, 200.0], [50.0, 80.0]])
LAST = np.array([-1.0, -1.0])  # race keys of the last runner of each step
NONE_LEAVING = np.array([-1, -1])  # no runner leaves a race


def holds(x: float, sign: int, logu=(-2.0, -2.0), potentials=POTENTIALS, scores=None, chosen=CHOSEN,
          last=LAST, peaks=(0.0, 0.0)) -> bool:
    """The certificate's verdict; without ``scores`` (the runners' race keys) a newcomer never joins a race."""
    rank, key = np.empty(2, dtype=np.int64), np.empty(2)
    scores = np.empty((2, 0)) if scores is None else np.asarray(scores, dtype=np.float64)
    return bool(kernels.q_seeding_certificate(np.array([x]), np.array(logu), float(sign), NONE_LEAVING, CAND,
                                              np.asarray(chosen), np.asarray(potentials, dtype=np.float64),
                                              np.asarray(last, dtype=float), 10.0, np.empty((2, 2)), scores, rank, key,
                                              np.asarray(peaks, dtype=float), np.empty(2)))


def test_a_far_from_the_race_point_is_certified():
    assert holds(1.0, +1)
    assert holds(1.0, -1, logu=(0.0, 0.0))  # a delete has no race keys


def test_an_insert_that_would_join_a_race_is_refused():
    assert not holds(1.0, +1, logu=(-0.5, -2.0))  # step 0: -0.5 / 1 beats the last runner
    assert not holds(1.0, +1, logu=(-2.0, -0.9))  # step 1: -0.9 / D^2 (= 1) beats it too


def test_a_change_that_flips_or_nearly_flips_a_winner_is_refused():
    assert not holds(10.0, +1, potentials=[[100.0, 60.0 + 100.0 - 81.0], [50.0, 80.0]])  # winner flips
    assert not holds(1.0, +1, potentials=[[100.0, 20.0 + 1e-13], [50.0, 80.0]])  # within rounding of a tie
    assert holds(1.0, +1, potentials=[[100.0, 20.0 + 1e-6], [50.0, 80.0]])


def test_the_rounding_margin_follows_the_largest_cost_since_the_fit():
    """Costs that shrank (deletions) still carry the rounding of the larger sums they came from."""
    close = [[100.0, 20.0 + 1e-6], [50.0, 80.0]]  # after inserting 1.0: winner 101, runner-up 101 + 1e-6
    assert holds(1.0, +1, potentials=close)
    assert holds(1.0, +1, potentials=close, peaks=(1e3, 1e3))
    assert not holds(1.0, +1, potentials=close, peaks=(1e9, 1e3))  # 4 * 10 * u * 1e9 = 4.4e-6 > 1e-6


def test_a_certified_change_is_kept_in_the_seeding_costs():
    """Found by the interleaving test: five certified deletes each passed against the fit's original
    race costs, which drifted until a sixth certified a winner that had already lost. The stored costs
    must follow every certified change, as a fresh fit would compute them (up to summation order)."""
    rng = np.random.default_rng(9208)
    X = rng.uniform(-1, 1, size=(17, 1)) * 10.0 ** rng.integers(-2, 3)
    ids = [f"p{i}" for i in range(17)]
    model = QKMeans(k=2, seed=9208, eps=2.0, gamma=0.5, max_iter=4)
    model.insert(ids, X)
    model.flush()
    certified = 0
    for victim in ids[:12]:
        passed = model.certificates_passed_
        model.delete([victim])
        model.flush()
        fresh = model.refit()
        assert np.array_equal(model.centroids_, fresh.centroids_)
        if model.certificates_passed_ > passed:
            certified += 1
            assert np.allclose(model._arrays["potentials"], fresh._arrays["potentials"], rtol=1e-12, atol=0)
            assert np.array_equal(model._arrays["chosen"], fresh._arrays["chosen"])
    assert certified >= 3


def test_the_interleaving_that_found_stale_seeding_costs():
    """The exact failing case of the contract test, kept as a regression."""
    rng = np.random.default_rng(9208)
    model = QKMeans(k=2, seed=9208, eps=2.0, gamma=0.5, max_iter=4)
    inserted = [1, 11, 12, 23, 2, 10, 13, 4, 9, 6, 3, 5, 14, 8, 7, 15, 16]
    model.insert([point_id(i) for i in inserted], make_vectors("uniform", rng, len(inserted), 1))
    model.flush()
    for i in [6, 10, 0, 1, 2, 8]:
        model.delete([point_id(i)])
        assert np.array_equal(model.centroids_, fresh_fit(model, 9209, 1).centroids_)


def test_a_state_from_before_the_cost_fix_refits_at_its_next_change():
    """Costs in an older state may be stale: such a state loads, but certifies nothing until it refits."""
    rng = np.random.default_rng(3)
    model = QKMeans(k=3, seed=1, eps=0.3)
    model.insert([f"p{i}" for i in range(300)], rng.normal(size=(300, 2)))
    state = state_format.loads(model.to_state())
    del state["cache"]["costs_tracked"]
    body = {key: value for key, value in state.items() if key not in ("format", "version")}
    old = QKMeans.from_state(state_format.dumps(body))
    assert np.array_equal(old.centroids_, model.centroids_)
    refits = old.refits_
    old.delete(["p7"])
    assert np.array_equal(old.centroids_, old.refit().centroids_) and old.refits_ == refits + 1
    # A current state keeps its cache: the same delete is certified without a refit.
    current = QKMeans.from_state(model.to_state())
    current.delete(["p7"])
    assert current.refits_ == model.refits_ and current.certificates_passed_ == model.certificates_passed_ + 1


SCORES = np.array([[-0.2, -1.0], [-0.3, -1.0]])  # the runners' race keys; the last of each is LAST


def test_a_newcomer_may_join_a_race_only_where_the_outcome_is_provable():
    # step 0: key -0.5 ranks second, pushing the last runner (who lost) out: certified, pending its own cost
    rank, key = np.empty(2, dtype=np.int64), np.empty(2)
    assert kernels.q_seeding_certificate(np.array([1.0]), np.array([-0.5, -2.0]), 1.0, NONE_LEAVING, CAND, CHOSEN,
                                         POTENTIALS, LAST, 10.0, np.empty((2, 2)), SCORES, rank, key, np.zeros(2),
                                         np.empty(2))
    assert rank.tolist() == [1, -1] and key[0] == -0.5
    assert holds(1.0, +1, logu=(-0.5, -2.0), scores=SCORES)
    assert not holds(1.0, +1, logu=(-0.2, -2.0), scores=SCORES)  # ties a runner's key: the point order decides
    # the newcomer would push out the step's winner (the last runner)
    assert not holds(1.0, +1, logu=(-0.5, -2.0), scores=SCORES, chosen=[1, 0], potentials=[[200.0, 100.0], [50.0, 80.0]])
    # a race with an empty slot (fewer points than runners): any newcomer joins it; never certified
    assert not holds(1.0, +1, logu=(-0.5, -2.0), scores=[[-0.2, -np.inf], [-0.3, -1.0]], last=[-np.inf, -1.0])


def assert_as_fresh(model: QKMeans) -> QKMeans:
    """The model's centroids, Lloyd centres and counts, and every seeding runner, key, winner and cost
    (within rounding) equal a fresh fit's on its points; returns that fit."""
    fresh = model.refit()
    mine, theirs = model._arrays, fresh._arrays
    assert np.array_equal(model.centroids_, fresh.centroids_)
    for name in ("centres", "counts", "candidate_vectors", "chosen", "scores", "last_scores"):
        assert np.array_equal(mine[name], theirs[name]), name
    assert np.allclose(mine["potentials"], theirs["potentials"], rtol=1e-12, atol=0)
    assert model._candidate_slots == fresh._candidate_slots
    return fresh


def test_after_every_certified_change_or_partial_refit_the_model_is_a_fresh_fits():
    """Newcomers that join races (and lose), and deleted runners that leave them (their successors
    losing), are certified: every runner, key, winner and cost then equals a fresh fit's, batch inserts
    included (points later in a call are not yet in the model).
    When only Lloyd's certificate fails, at some update, the refit goes on from the seeding and the
    updates before that one, kept: its centres and counts are then a fresh fit's bit for bit, and so
    are the sums of a full refit; a partial one's are within rounding (the kept updates' were edited,
    and so were those it reran from the statistics the failure dropped, by the points that moved)."""
    joined = left = certified = partial = resumed = edited = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        k, d, n0 = int(rng.integers(2, 5)), int(rng.integers(1, 4)), int(rng.integers(8, 40))
        X = rng.normal(size=(n0 + 30, d)) * 3 + rng.integers(0, 3, size=(n0 + 30, 1)) * 5
        if seed % 3 == 0:
            X = np.round(X)
        ids = [f"p{i}" for i in range(len(X))]
        model = QKMeans(k=k, seed=seed, eps=[0.05, 0.5, 2.0, 8.0][seed % 4], gamma=0.2, max_iter=6)
        model.insert(ids[:n0], X[:n0])
        model.flush()
        i = n0
        while i < len(X):
            passed, refits, lloyd_refits = model.certificates_passed_, model.refits_, model.lloyd_refits_
            runners = [list(r) for r in model._candidate_slots]
            deleting = rng.random() < 0.2
            if deleting:
                model.delete([next(j for j in ids[:i] if j in model)])
            else:
                b = int(rng.integers(1, 6))
                model.insert(ids[i : i + b], X[i : i + b])
                i += b
            kept = len(model._arrays["sums"]) if model._seeding_kept else 0
            model.flush()
            mine, theirs = model._arrays, assert_as_fresh(model)._arrays
            if model.lloyd_refits_ > lloyd_refits:  # from the kept updates: sums within rounding
                assert np.allclose(mine["sums"], theirs["sums"], rtol=1e-12, atol=1e-9)
                resumed += kept > 0
            elif model.refits_ > refits:  # in full: the fresh sums' bits
                assert np.array_equal(mine["sums"], theirs["sums"])
            if model.certificates_passed_ > passed:
                certified += 1
                joined += not deleting and model._candidate_slots != runners
                left += deleting and model._candidate_slots != runners
        partial += model.lloyd_refits_
        edited += model.edited_updates_
    assert certified > 300 and joined > 20 and left > 5 and partial > 100 and resumed > 15 and edited > 200


def test_a_deleted_runner_leaves_its_races_to_the_successor_a_fresh_fit_would_seat():
    """Deleting a seeding runner that did not win: the point with the next race key takes the last seat
    (found in one pass, exact keys), and when it provably loses the deletion is certified. Every
    runner, key, winner and cost then equals a fresh fit's on the survivors."""
    left = 0
    for seed in range(24):
        rng = np.random.default_rng(seed)
        k, d, n = int(rng.integers(2, 6)), int(rng.integers(1, 4)), int(rng.integers(40, 160))
        X = rng.normal(size=(n, d)) * 3 + rng.integers(0, 4, size=(n, 1)) * 6
        if seed % 3 == 0:
            X = np.round(X)  # ties of distances, so of race keys too
        ids = [f"p{i}" for i in range(n)]
        model = QKMeans(k=k, seed=seed, eps=[0.05, 0.5, 2.0][seed % 3], max_iter=6)
        model.insert(ids, X)
        model.flush()
        for _ in range(8):
            chosen = model._arrays["chosen"]
            losers = sorted({r for j, row in enumerate(model._candidate_slots) for s, r in enumerate(row)
                             if r is not None and s != chosen[j]})
            refits = model.refits_
            model.delete([losers[int(rng.integers(len(losers)))]])
            model.flush()
            assert_as_fresh(model)
            left += model.refits_ == refits
    assert left > 40


def test_a_state_whose_seeding_runners_do_not_match_k_is_refused():
    """A tampered certificate cache is a clear StateError at load, never a model that certifies from it."""
    rng = np.random.default_rng(4)
    model = QKMeans(k=3, seed=1, eps=0.3)
    model.insert([f"p{i}" for i in range(200)], rng.normal(size=(200, 2)))
    model.flush()
    state = state_format.loads(model.to_state())
    state["cache"]["candidate_slots"] = state["cache"]["candidate_slots"][:-1]
    body = {key: value for key, value in state.items() if key not in ("format", "version")}
    with pytest.raises(state_format.StateError, match="runners do not match"):
        QKMeans.from_state(state_format.dumps(body))
    # Arrays the compiled certificates index without bounds checks: any wrong shape or index is refused.
    for name, tamper, message in (
        ("candidate_vectors", lambda a: a[:, :1], "candidate_vectors has shape"),
        ("peak_counts", lambda a: a[:, :2], "peak_counts has shape"),
        ("chosen", lambda a: a + 5, "winner outside its race"),
    ):
        state = state_format.loads(model.to_state())
        arrays = state["cache"]["arrays"]
        arrays[name] = state_format.pack_array(tamper(state_format.unpack_array(arrays[name])))
        body = {key: value for key, value in state.items() if key not in ("format", "version")}
        with pytest.raises(state_format.StateError, match=message):
            QKMeans.from_state(state_format.dumps(body))
    # An older state without the runners' keys, the costs' peaks or the clusters' peak counts is no
    # error: it loads and refits at its next change.
    for name in ("peaks", "peak_counts"):
        state = state_format.loads(model.to_state())
        del state["cache"]["arrays"][name]
        body = {key: value for key, value in state.items() if key not in ("format", "version")}
        old = QKMeans.from_state(state_format.dumps(body))
        refits = old.refits_
        old.delete(["p7"])
        assert np.array_equal(old.centroids_, old.refit().centroids_) and old.refits_ == refits + 1


def test_a_state_holds_nothing_of_a_point_forgotten_by_a_certified_delete():
    """A certified delete keeps the cache, which then carries traces of the point (here: its
    extreme coordinate, kept as the largest |x| of its feature). The state goes without the cache
    until the next full fit, so its bytes hold nothing of the point; a restore refits at its next
    change. Inserts alone keep the cache in the state."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4))
    X[17, 2] = 9.123456789
    trace = np.float64(9.123456789).tobytes()
    ids = [f"p{i}" for i in range(len(X))]
    model = QKMeans(k=4, seed=1, eps=0.5)
    model.insert(ids[:2900], X[:2900])
    model.flush()
    model.insert(ids[2900:], X[2900:])  # certified inserts: the state keeps its cache
    model.flush()
    assert model.refits_ == 1 and model.certificates_passed_ > 0
    assert trace in model.to_state() and state_format.loads(model.to_state())["cache"]["fitted"]
    passed = model.certificates_passed_
    model.delete(["p17"])
    model.flush()
    assert model.certificates_passed_ == passed + 1 and model.refits_ == 1  # certified: no refit
    state = model.to_state()
    assert trace not in state
    restored = QKMeans.from_state(state)
    assert np.array_equal(restored.centroids_, model.centroids_) and restored.verify()
    assert restored.certificates_passed_ == model.certificates_passed_  # the counters travel anyway
    restored.delete(["p18"])
    restored.flush()
    assert restored.refits_ == model.refits_ + 1 and restored.verify()  # no cache: a refit
    # After a full fit the state is clean and carries the cache again.
    restored.insert(ids[:3000:7], X[:3000:7] + 0.5)  # a bulk change: full refit
    restored.flush()
    assert restored.refits_ == model.refits_ + 2 and state_format.loads(restored.to_state())["cache"]["fitted"]


def test_lloyd_rounding_margin_follows_the_largest_count_since_the_fit():
    """A stored cluster sum keeps the rounding of every partial sum it went through. Shrink one
    cluster from 6000 points to 3 by certified deletes, with ``eps`` put so that a cell edge falls
    between the stored sum's mean and a fresh sum's mean: a margin sized by the current count (3)
    passed all 5997 certificates and left centroids that are not a fresh fit's (found in review).
    Sized by the largest count since the fit, a certificate fails and the model refits."""
    from stream_unlearn.quantize import phase

    n0, keep = 6000, 3
    rng = np.random.default_rng(3)
    ids = [f"p3_{i}" for i in range(n0)]
    probe = QKMeans(k=1, seed=0, eps=100.0, gamma=0.0, max_iter=1)
    probe.insert(ids, rng.random((n0, 1)))
    probe.flush()
    runners = sorted(probe._candidate_ids)  # k=1: the seeding race's runners depend on the keys alone
    vals = 1.1 + 1e-3 * 0.998 * rng.random(n0)
    vals[ids.index(runners[0])], vals[ids.index(runners[1])] = 1.1 + 1e-3, 1.1 + 0.999e-3  # never deleted
    order = sorted((i for i in range(n0) if ids[i] not in runners), key=lambda i: vals[i])
    gone = order[: n0 - keep]
    # The stored sum after the deletes, as the certificates keep it, and a fresh sum of the survivors.
    model = QKMeans(k=1, seed=0, eps=100.0, gamma=0.0, max_iter=1)
    model.insert(ids, vals[:, None])
    _, X_sorted, ids_sorted = model._store.canonical()
    stored = 0.0
    for v in X_sorted[:, 0]:
        stored += v
    for i in gone:
        stored = stored + (-1.0) * vals[i]
    dropped = {ids[i] for i in gone}
    fresh = 0.0
    for v, pid in zip(X_sorted[:, 0], ids_sorted):
        if pid not in dropped:
            fresh += v
    stored, fresh = stored / keep, fresh / keep
    old_margin = 2.0 * (n0 + 3) * 2.0**-53 * vals.max() + 16 * 2.0**-53 * 1.1
    assert fresh - stored > 2.2 * old_margin  # the setup does put the two means apart
    edge = (stored + fresh) / 2
    model = QKMeans(k=1, seed=0, eps=edge / (phase(0, 1)[0] + 0.5), gamma=0.0, max_iter=1)
    model.insert(ids, vals[:, None])
    model.flush()
    for i in gone:
        model.delete([ids[i]])
    assert model.certificates_failed_ >= 1
    assert model.verify()


def test_a_call_far_longer_than_the_changes_per_failed_certificate_refits_without_certifying():
    """Where certificates fail often, a long call would refit anyway after paying for them: it is
    refit at once. Without failures so far it is certified. Both ways give F(S)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3400, 4))
    failing, unproven = QKMeans(k=4, seed=2, eps=0.03), QKMeans(k=4, seed=2, eps=0.03)
    failing.insert(range(3000), X[:3000])
    failing.flush()
    for i in range(3000, 3060):  # one change per call: each is certified
        failing.insert([i], X[i : i + 1])
        failing.flush()
    unproven.insert(range(3060), X[:3060])  # a fit: no certificate tried yet
    unproven.flush()
    assert failing.certificates_failed_ > failing.certificates_passed_  # ~1.3 changes per failure
    assert unproven.certificates_failed_ == 0
    for m, certified in ((failing, False), (unproven, True)):
        tried = m.certificates_passed_ + m.certificates_failed_
        m.insert(range(3060, 3360), X[3060:3360])  # 300 changes: over _BULK_MIN, under n / 8
        m.flush()
        assert (m.certificates_passed_ + m.certificates_failed_ > tried) == certified
        fresh = QKMeans(k=4, seed=2, eps=0.03)
        fresh.insert(range(3360), X[:3360])
        assert np.array_equal(m.centroids_, fresh.centroids_)


def test_the_compiled_run_of_insert_certificates_keeps_what_one_at_a_time_keeps():
    """Inserts are certified in one compiled loop while they pass; the point that fails or joins a
    race goes the Python way. Against a twin that certifies every point in Python, after every
    call: the same counters and the same certificate cache, bit for bit."""
    in_runs = 0
    for seed in range(24):
        rng = np.random.default_rng(100 + seed)
        k, d = int(rng.integers(2, 5)), int(rng.integers(1, 5))
        shape = ["blobs", "duplicates", "flat-column", "uniform"][seed % 4]
        X = make_vectors(shape, rng, 500, d)
        params = {"k": k, "seed": seed, "eps": [0.05, 0.5, 2.0][seed % 3], "max_iter": 6}
        fast, slow = QKMeans(**params), QKMeans(**params)
        slow._certify_run = lambda X, logu: 0
        run = fast._certify_run

        def counted(X, logu):
            nonlocal in_runs
            passed = run(X, logu)  # noqa: B023 - called here, before the loop goes on
            in_runs += passed
            return passed

        fast._certify_run = counted
        ids = [point_id(i) for i in range(len(X))]
        for m in (fast, slow):
            m.insert(ids[:200], X[:200])
            m.flush()
        i = 200
        while i < len(X):
            if rng.random() < 0.15:
                gone = [j for j in ids[:i] if j in fast][: int(rng.integers(1, 4))]
                calls = [("delete", gone)]
            else:
                b = int(rng.integers(1, 40))
                calls = [("insert", (ids[i : i + b], X[i : i + b]))]
                i += b
            for m in (fast, slow):
                for op, args in calls:
                    m.delete(args) if op == "delete" else m.insert(*args)
            for m in (fast, slow):
                m.flush()
            assert (fast.certificates_passed_, fast.certificates_failed_, fast.refits_) == \
                   (slow.certificates_passed_, slow.certificates_failed_, slow.refits_)
            assert (fast._n_model, fast._ops, fast._fitted) == (slow._n_model, slow._ops, slow._fitted)
            assert fast._arrays.keys() == slow._arrays.keys()
            for name, value in fast._arrays.items():
                assert np.array_equal(value, slow._arrays[name]), name
            assert fast._candidate_slots == slow._candidate_slots
            assert np.array_equal(fast.centroids_, slow.centroids_)
    assert in_runs > 2000


def test_an_edited_lloyd_update_is_the_fresh_one_or_declines():
    """``kernels.q_edited_update``: moving the points whose labels changed between two sums gives the
    counts of a fresh pass and, where each centre lies well inside its cell, its snapped centres;
    a centre on a cell edge (rounding could flip its snap) is declined (-1): a fresh pass decides."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3)) * 4
    start = rng.normal(size=(4, 3)) * 4
    old_labels = rng.integers(0, 4, size=200)
    labels = old_labels.copy()
    labels[rng.choice(200, size=17, replace=False)] = (old_labels[:17] + 1) % 4
    theta, eps, gamma = rng.random(3), 0.5, 0.2

    def sums_of(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, c = np.zeros((4, 3)), np.zeros(4)
        np.add.at(s, lab, X)
        np.add.at(c, lab, 1.0)
        return s, c

    s, c = sums_of(old_labels)
    peaks = c.copy()
    snapped = np.empty((4, 3))
    V, rows = X[::-1].copy(), np.arange(199, -1, -1)  # point i is V[rows[i]]: read in place
    moved = kernels.q_edited_update(V, rows, labels, old_labels, s, c, peaks, start, theta, eps, gamma, 200,
                                    np.abs(X).max(0), snapped)
    fresh_s, fresh_c = sums_of(labels)
    centre, _ = corrected_centroids(fresh_s, fresh_c, start, 200, 4, gamma)
    assert moved == int((labels != old_labels).sum()) > 0
    assert np.array_equal(c, fresh_c) and np.allclose(s, fresh_s, rtol=1e-12, atol=1e-12)
    assert np.all(peaks >= np.maximum(c, sums_of(old_labels)[1]))
    assert np.array_equal(snapped, snap(centre, eps, theta)[0])
    # Put cluster 0's first coordinate exactly on a cell edge: z = cell + 0.5.
    s, c = sums_of(labels)
    s[0, 0] = c[0] * eps * (3.5 + theta[0])
    assert kernels.q_edited_update(V, rows, labels, labels, s, c, c.copy(), start, theta, eps, gamma, 200,
                                   np.abs(X).max(0), snapped) == -1
