"""Compiled k-means kernels (numba): one node's weighted k-means, sequentially.

Why compiled: a DC-k-means delete refits a leaf and its ancestors, nodes of
tens to hundreds of items, where numpy spends its time dispatching small
calls. Why this is exact: every reduction is written out as a loop in a
fixed order (distances with four interleaved accumulators combined in a
fixed way, sums over items left to right), numba does not reassociate
floating point without ``fastmath`` and does not fuse multiply-adds, so a
node's result is a pure function of its items in the order given, however
it is called. Items of weight 0 are skipped entirely (padding is inert).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Segments of up to this many keys are sorted by insertion (DC leaves); longer ones by merge sort.
INSERTION_SORT_MAX = 64
_OPTS = {"cache": True, "boundscheck": False, "nogil": True}

#: Skipping a point's reassignment needs ``upper + _SLACK * scale < lower``: the
#: bounds' own rounding (relative ~(d + 200) u of ``scale``) is far below it.
_SLACK = 1e-9
_SKIP_MAX_FEATURES = 100_000
_MIN_SCALE = 1e-150  # below it the bounds' relative rounding analysis does not hold (subnormals)
#: Nodes of at least _SIMD_MIN_ITEMS items and at most _SIMD_MAX_VALUES values
#: (items x features: 8 MiB of float64) compute distances over transposed
#: items (SIMD); others one pair at a time (same bits). Below, the transposed
#: copy costs more than SIMD saves; above, the copy (as big as the node's
#: data) stops fitting in cache and the pair loop, which reads each item once
#: for all of a step's candidates, is faster (seeding, SIMD / pair: 20k x 16
#: 0.6, 49k x 9 0.64-0.88, 40k x 25 0.83-0.94, 60k x 25 1.05, 100k x 25 1.33,
#: 3000 x 784 1.25), and the fit needs no second copy of a big X.
_SIMD_MIN_ITEMS = 16
_SIMD_MAX_VALUES = 1 << 20


@njit(inline="always", **_OPTS)
def sqd(A: np.ndarray, i: int, B: np.ndarray, j: int) -> float:
    """Squared distance between rows ``A[i]`` and ``B[j]``: four interleaved accumulators, one fixed order."""
    return sqd_below(A, i, B, j, np.inf)


@njit(inline="always", **_OPTS)
def sqd_below(A: np.ndarray, i: int, B: np.ndarray, j: int, cap: float) -> float:
    """The squared distance of rows ``A[i]`` and ``B[j]`` if it is below ``cap``, else some value ``>= cap``.

    Feature f goes to accumulator f mod 4, in order, and the four are added
    as ``(s0 + s1) + (s2 + s3)``: one fixed order, whatever the cap. Every 8
    features it stops once the partial sum reaches ``cap``: exact, because
    IEEE addition of non-negative terms never decreases, so the full sum
    could only be larger still.
    """
    d = A.shape[1]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    f = 0
    while f + 8 <= d:  # two rounds of four per check: ~10% faster than a loop of four with a test
        s0, s1, s2, s3 = _four_more(A, i, B, j, f, s0, s1, s2, s3)
        s0, s1, s2, s3 = _four_more(A, i, B, j, f + 4, s0, s1, s2, s3)
        f += 8
        if (s0 + s1) + (s2 + s3) >= cap:
            return cap
    if f + 4 <= d:
        s0, s1, s2, s3 = _four_more(A, i, B, j, f, s0, s1, s2, s3)
        f += 4
    while f < d:
        t0 = A[i, f] - B[j, f]
        s0 += t0 * t0
        f += 1
    return (s0 + s1) + (s2 + s3)


@njit(inline="always", **_OPTS)
def _four_more(A, i, B, j, f, s0, s1, s2, s3):
    """Features f..f+3 of ``A[i] - B[j]``, squared, each into its accumulator."""
    t0 = A[i, f] - B[j, f]
    t1 = A[i, f + 1] - B[j, f + 1]
    t2 = A[i, f + 2] - B[j, f + 2]
    t3 = A[i, f + 3] - B[j, f + 3]
    return s0 + t0 * t0, s1 + t1 * t1, s2 + t2 * t2, s3 + t3 * t3


@njit(**_OPTS)
def distances_to_row(XT, y, a0, a1, a2, a3, out):
    """``out[i]`` = :func:`sqd` of item i and row ``y``, for the items of ``XT`` (d, m), all at once.

    Same additions in the same order as :func:`sqd` (feature f into
    accumulator f mod 4, the tail into the first, then ``(a0 + a1) + (a2 +
    a3)``), so the same bits; but each step runs over all items, which the
    compiler turns into SIMD instructions (about 3x faster). ``a0..a3`` are
    work space of m items.
    """
    d, m = XT.shape
    a0[:] = 0.0
    a1[:] = 0.0
    a2[:] = 0.0
    a3[:] = 0.0
    f = 0
    while f + 4 <= d:
        y0 = y[f]
        y1 = y[f + 1]
        y2 = y[f + 2]
        y3 = y[f + 3]
        for i in range(m):
            t0 = XT[f, i] - y0
            t1 = XT[f + 1, i] - y1
            t2 = XT[f + 2, i] - y2
            t3 = XT[f + 3, i] - y3
            a0[i] += t0 * t0
            a1[i] += t1 * t1
            a2[i] += t2 * t2
            a3[i] += t3 * t3
        f += 4
    while f < d:
        y0 = y[f]
        for i in range(m):
            t0 = XT[f, i] - y0
            a0[i] += t0 * t0
        f += 1
    for i in range(m):
        out[i] = (a0[i] + a1[i]) + (a2[i] + a3[i])


@njit(inline="always", **_OPTS)
def _transposed_for_simd(X):
    """X.T as a C-contiguous (d, m) copy if the node's size takes the SIMD loops, else (d, 0)."""
    if _SIMD_MIN_ITEMS <= X.shape[0] and X.shape[0] * X.shape[1] <= _SIMD_MAX_VALUES:
        return np.ascontiguousarray(X.T)
    return np.empty((X.shape[1], 0))


@njit(inline="always", **_OPTS)
def _bound_scale(upper, lower):
    """The magnitude a point's Hamerly bounds are compared at (``lower`` is inf with one centre)."""
    return upper + (lower if lower < np.inf else 0.0)


@njit(inline="always", **_OPTS)
def nearest(X: np.ndarray, i: int, C: np.ndarray) -> int:
    """Index of the centre nearest to ``X[i]`` (first on ties)."""
    best = 0
    best_d = np.inf
    for j in range(C.shape[0]):
        dist = sqd_below(X, i, C, j, best_d)
        if dist < best_d:
            best_d = dist
            best = j
    return best


@njit(**_OPTS)
def assign_rows(X: np.ndarray, C: np.ndarray, out: np.ndarray) -> None:
    """``out[i]`` = nearest centre of ``X[i]``."""
    for i in range(X.shape[0]):
        out[i] = nearest(X, i, C)


@njit(**_OPTS)
def nearest_sq_dist_sum(V, slots, C):
    """Sum over rows ``V[slots]`` of the squared distance to the nearest centre of ``C`` (k >= 1).

    For the loss (a report, not a decision): walking the store's rows in
    place copies nothing; slots in increasing order read memory front to back.
    """
    total = 0.0
    for p in range(len(slots)):
        s = slots[p]
        best = np.inf
        for j in range(C.shape[0]):
            dist = sqd_below(V, s, C, j, best)
            if dist < best:
                best = dist
        total += best
    return total


@njit(**_OPTS)
def take_rows_abs_max(V, slots, out, max_abs):
    """``out[p] = V[slots[p]]``, and ``max_abs[f]`` = the largest ``|out[:, f]|`` (0 if no rows).

    One pass where numpy takes three (gather, ``abs``, column max along
    axis 0): a Q-k-means refit of 120k x 25 points, 37 -> 10 ms. The rows
    are read in slot order and written to their places (150k x 25 in
    random order: 25 -> 10 ms), as sequential reads beat random ones; the
    slots must be distinct (a repeat falls back to reading in ``slots``' order).
    """
    d = V.shape[1]
    for f in range(d):
        max_abs[f] = 0.0
    where = np.full(V.shape[0], -1, np.int64)
    for p in range(len(slots)):
        where[slots[p]] = p
    placed = 0
    for s in range(V.shape[0]):
        p = where[s]
        if p >= 0:
            _take_row(V, s, out, p, max_abs)
            placed += 1
    if placed != len(slots):  # a repeated slot: some rows were not placed
        for p in range(len(slots)):
            _take_row(V, slots[p], out, p, max_abs)


@njit(inline="always", **_OPTS)
def _copy_row(V, s, out, p):
    """``out[p] = V[s]`` as a loop over features: half the time of a row-slice assignment in numba
    (a 100k-point fit's leaf gathers: 8.5 -> 4.3 ms of one thread)."""
    for f in range(V.shape[1]):
        out[p, f] = V[s, f]


@njit(**_OPTS)
def write_rows(V, slots, X):
    """``V[slots[i]] = X[i]`` by :func:`_copy_row`: ~2.5x faster than numpy's scatter of rows (a 100k x 25
    store's new rows: ~10.5 -> ~4 ms)."""
    for i in range(len(slots)):
        _copy_row(X, i, V, slots[i])


@njit(inline="always", **_OPTS)
def _take_row(V, s, out, p, max_abs):
    for f in range(V.shape[1]):
        x = V[s, f]
        out[p, f] = x
        a = abs(x)
        if a > max_abs[f]:
            max_abs[f] = a


@njit(**_OPTS)
def seed_node(X, w, logu, k, L, seed_index, cand, cand_score, pots, fallback, d2, nearest_seed):
    """Greedy k-means++ by exponential races on one node's items (see :func:`_seed`)."""
    _seed(X, _transposed_for_simd(X), w, logu, k, L, seed_index, cand, cand_score, pots, fallback, d2,
          np.empty((k, 0)), np.zeros(k, np.bool_), nearest_seed)


@njit(**_OPTS)
def _seed(X, XT, w, logu, k, L, seed_index, cand, cand_score, pots, fallback, d2, seed_rows, row_ready, nearest_seed):
    """Greedy k-means++ by exponential races on one node's items.

    Step j: the L items with the highest ``log(u_j) / (w D^2)`` (ties: lower
    index) are k-means++ candidates (Efraimidis-Spirakis); the one leaving
    the lowest weighted cost ``sum w min(D^2, |x - c|^2)`` wins. When no item
    has positive mass (fewer distinct items than k) the step draws a
    duplicate by weight alone and is flagged in ``fallback``.

    A candidate's distances to all items come from :func:`distances_to_row`
    (the bits of :func:`sqd`, computed for every item at once). Where
    ``sqd_below`` would have stopped early the full distance is at least
    D^2, so the kept ``min(D^2, d^2)`` is the same.

    ``XT`` is :func:`_transposed_for_simd` of X. If ``seed_rows`` (k, m)
    has room, a step whose winner came from :func:`distances_to_row` keeps
    the winner's distances to every item there and sets ``row_ready[j]``:
    they are the bits Lloyd's first assignment would compute again.

    If ``nearest_seed`` has room (m), it gets each item's nearest seed,
    first on ties: the labels :func:`nearest` gives against the seeds, read
    off the running D^2 for free. Items of weight 0, and every item if a
    step chose no seed, get -1.
    """
    m = X.shape[0]
    topi = np.empty(L, np.int64)
    tops = np.empty(L)
    trial = np.empty((L, m))
    slot_pots = np.empty(L)
    want_labels = nearest_seed.shape[0] == m
    labelled = want_labels
    if want_labels:
        nearest_seed[:] = -1
    n_wide = XT.shape[1]
    wide = n_wide > 0
    keep_rows = wide and seed_rows.shape[1] == n_wide
    a0, a1, a2, a3 = np.empty(n_wide), np.empty(n_wide), np.empty(n_wide), np.empty(n_wide)
    raw = np.empty((L, n_wide))
    for j in range(k):
        for slot in range(L):
            topi[slot] = -1
            tops[slot] = -np.inf
        for i in range(m):
            wi = w[i]
            if wi <= 0.0:
                continue
            mass = wi if j == 0 else wi * d2[i]
            if mass <= 0.0:
                continue
            score = logu[j, i] / mass
            if score > tops[L - 1]:
                p = L - 1
                while p > 0 and score > tops[p - 1]:
                    tops[p] = tops[p - 1]
                    topi[p] = topi[p - 1]
                    p -= 1
                tops[p] = score
                topi[p] = i
        for slot in range(L):
            cand[j, slot] = topi[slot]
            cand_score[j, slot] = tops[slot]
            pots[j, slot] = np.inf
        pick = -1
        if topi[0] < 0:
            fallback[j] = True
            best = -np.inf
            for i in range(m):
                if w[i] > 0.0:
                    score = logu[j, i] / w[i]
                    if score > best:
                        best = score
                        pick = i
            seed_index[j] = pick
            if pick < 0:
                labelled = False
                continue
            for i in range(m):
                dist = sqd(X, i, X, pick)
                if j == 0 or dist < d2[i]:
                    d2[i] = dist
                    if want_labels and w[i] > 0.0:
                        nearest_seed[i] = j
            continue
        # Each candidate's min(D^2, |x - c|^2) per item, kept for the winner:
        # it is the winner's new D^2 (items of weight 0 never need one).
        if wide:
            for slot in range(L):
                c = topi[slot]
                if c < 0:
                    continue
                distances_to_row(XT, X[c], a0, a1, a2, a3, raw[slot])
                pot = 0.0
                for i in range(m):
                    if w[i] <= 0.0:
                        continue
                    dist = raw[slot, i]
                    if j > 0 and d2[i] < dist:
                        dist = d2[i]
                    trial[slot, i] = dist
                    pot += w[i] * dist
                slot_pots[slot] = pot
        else:  # all candidates in one pass over the items: a node too big for cache is read once, not L times
            for slot in range(L):
                slot_pots[slot] = 0.0
            for i in range(m):
                wi = w[i]
                if wi <= 0.0:
                    continue
                for slot in range(L):
                    c = topi[slot]
                    if c < 0:
                        break  # runners fill the slots from the front
                    dist = sqd(X, i, X, c) if j == 0 else sqd_below(X, i, X, c, d2[i])
                    if j > 0 and d2[i] < dist:
                        dist = d2[i]
                    trial[slot, i] = dist
                    slot_pots[slot] += wi * dist
        best_pot = np.inf
        best_slot = -1
        for slot in range(L):
            c = topi[slot]
            if c < 0:
                continue
            pot = slot_pots[slot]
            pots[j, slot] = pot
            if pot < best_pot:
                best_pot = pot
                best_slot = slot
                pick = c
        seed_index[j] = pick
        if best_slot < 0:
            labelled = False
            continue  # every potential overflowed: no candidate wins
        for i in range(m):
            if w[i] > 0.0:
                if want_labels and (j == 0 or trial[best_slot, i] < d2[i]):
                    nearest_seed[i] = j  # a strictly nearer seed, as nearest() decides
                d2[i] = trial[best_slot, i]
        if keep_rows:
            seed_rows[j] = raw[best_slot]
            row_ready[j] = True
    if want_labels and not labelled:
        nearest_seed[:] = -1


@njit(**_OPTS)
def cluster_sums(X, w, labels, k, sums, counts):
    """Weighted sums and weights per cluster, items left to right."""
    sums[:] = 0.0
    counts[:] = 0.0
    d = X.shape[1]
    for i in range(X.shape[0]):
        wi = w[i]
        if wi <= 0.0:
            continue
        lab = labels[i]
        counts[lab] += wi
        for f in range(d):
            sums[lab, f] += wi * X[i, f]


@njit(**_OPTS)
def cluster_sums_of_rows(V, rows, labels, k, sums, counts):
    """:func:`cluster_sums` of unit-weight items ``V[rows[i]]``, items in the order of ``rows`` (the same
    additions: ``1.0 * x`` is ``x``), read where they are."""
    sums[:] = 0.0
    counts[:] = 0.0
    d = V.shape[1]
    for i in range(len(rows)):
        lab = labels[i]
        counts[lab] += 1.0
        r = rows[i]
        for f in range(d):
            sums[lab, f] += V[r, f]


@njit(**_OPTS)
def assign_cluster_sums(V, rows, C, sums, counts, labels, margins, lowers):
    """:func:`cluster_sums_of_rows` of items ``V[rows[i]]`` under :func:`nearest` labels (written to
    ``labels``), in one pass; each item's :func:`nearest_margin` into ``margins`` and ``lowers``.

    Same additions in the same order, so the same bits as the two passes;
    a big V is read once.
    """
    sums[:] = 0.0
    counts[:] = 0.0
    d = V.shape[1]
    for i in range(len(rows)):
        r = rows[i]
        lab, margins[i], lowers[i] = nearest_margin(V, r, C)
        labels[i] = lab
        counts[lab] += 1.0
        for f in range(d):
            sums[lab, f] += V[r, f]


@njit(**_OPTS)
def match_sorted_keys(old_keys, new_keys, changed, out):
    """``out[p]`` = the position of ``new_keys[p]`` in ``old_keys``, or -1 if absent or in ``changed``.

    All three ascending. Returns False (``out`` undefined) if ``old_keys`` or
    ``new_keys`` repeats a key: a 64-bit collision, where a key does not name
    one point.
    """
    for i in range(1, len(old_keys)):
        if old_keys[i] == old_keys[i - 1]:
            return False
    q = 0
    c = 0
    for p in range(len(new_keys)):
        key = new_keys[p]
        if p > 0 and key == new_keys[p - 1]:
            return False
        while q < len(old_keys) and old_keys[q] < key:
            q += 1
        while c < len(changed) and changed[c] < key:
            c += 1
        if q < len(old_keys) and old_keys[q] == key and not (c < len(changed) and changed[c] == key):
            out[p] = q
        else:
            out[p] = -1
    return True


@njit(inline="always", **_OPTS)
def nearest_margin(X: np.ndarray, i: int, C: np.ndarray):
    """:func:`nearest` of ``X[i]`` (same comparisons, same label), its margin and its lower bound.

    The margin is how far the centres may move, its own centre's move plus
    the largest other one, before the label could change: a Hamerly bound,
    ``lower - upper - _SLACK * (upper + lower)`` with ``upper`` the distance
    to the nearest centre and ``lower`` the one to the second nearest, which
    is returned too (:func:`labels_from` settles labels with it). The slack is the
    one :func:`_lloyd` skips with. Margin and lower are -inf where the
    analysis does not hold, inf with a single centre.
    """
    best, upper, lower = nearest_two(X, i, C)
    if C.shape[0] < 2:
        return best, np.inf, np.inf
    scale = _bound_scale(upper, lower)
    if X.shape[1] > _SKIP_MAX_FEATURES or not scale > _MIN_SCALE or lower == np.inf:
        return best, -np.inf, -np.inf
    return best, lower - upper - _SLACK * scale, lower


@njit(inline="always", **_OPTS)
def _moves(C, before, moved):
    """``moved[j]``: how far centre j moved from ``before``; returns the largest move, its centre and
    the second largest (a point's other centres moved at most the largest move not its own)."""
    far, far_at, second_far = 0.0, -1, 0.0
    for j in range(C.shape[0]):
        moved[j] = np.sqrt(sqd(C, j, before, j))
        if moved[j] > far:
            second_far = far
            far = moved[j]
            far_at = j
        elif moved[j] > second_far:
            second_far = moved[j]
    return far, far_at, second_far


@njit(**_OPTS)
def anchor_moves(C, anchors, out, moved_centres, n_moved):
    """``out[g, a]``: how far centre a of ``C`` moved from anchor g, plus the farthest any other
    centre moved, grown by the slack as :func:`_lloyd` grows its bounds (a label's margin must exceed
    it). The centres that moved at all from anchor g, ascending: ``moved_centres[g, :n_moved[g]]``."""
    k = C.shape[0]
    moved = np.empty(k)
    for g in range(anchors.shape[0]):
        far, far_at, second_far = _moves(C, anchors[g], moved)
        n_moved[g] = 0
        for a in range(k):
            out[g, a] = (moved[a] + (second_far if a == far_at else far)) * (1.0 + _SLACK)
            if moved[a] > 0.0:  # 0 only where every coordinate is equal: the distances are the same
                moved_centres[g, n_moved[g]] = a
                n_moved[g] += 1


@njit(inline="always", **_OPTS)
def _nearest_among_moved(X, p, C, a, lower, moved_centres):
    """The label of ``X[p]`` in ``C`` from its distances to its anchor label ``a`` and to the centres
    that moved since the anchor (ascending), with its margin and lower bound against ``C``; label -1
    if those do not settle it.

    Every other centre is where it was, so at least ``lower`` away. If the
    nearest of the ones computed is closer than that by the slack, it is
    :func:`nearest`'s label (it takes the first of equals, as this does);
    its new lower bound is the smaller of ``lower`` and the second nearest
    computed. A distance stops once past the second nearest so far, or past
    ``lower``: it can change neither then (where rounding puts the cap, it
    only makes the new lower bound smaller or the label unsettled).
    """
    best, best_d, second_d = -1, lower * lower, lower * lower
    own_pending = True
    t = 0
    while t < len(moved_centres) or own_pending:  # the moved centres and a, in index order
        if own_pending and (t == len(moved_centres) or a <= moved_centres[t]):
            j = a
            own_pending = False
            if t < len(moved_centres) and moved_centres[t] == a:
                t += 1
        else:
            j = moved_centres[t]
            t += 1
        dist = sqd_below(X, p, C, j, second_d)
        if dist < best_d:
            second_d, best_d, best = best_d, dist, j
        elif dist < second_d:
            second_d = dist
    if best < 0:
        return -1, -np.inf, -np.inf
    upper = np.sqrt(best_d)
    second = min(lower, np.sqrt(second_d))
    scale = _bound_scale(upper, second)
    if not scale > _MIN_SCALE or not upper + _SLACK * (upper + lower) < lower:
        return -1, -np.inf, -np.inf
    return best, second - upper - _SLACK * scale, second


@njit(**_OPTS)
def labels_from(V, rows, C, same, old_labels, old_margins, old_lowers, old_anchor, positions, moves, moved_centres,
                n_moved, new_anchor, labels, margins, lowers, anchor, anchor_counts):
    """Each point's (``V[rows[p]]``) :func:`nearest` centre in ``C`` with its margin, lower bound and
    anchor, and the points per anchor, from a fit's labels where they provably hold. Returns how many
    were computed in full, and how many settled by the centres that moved.

    ``positions[p]``: point p's row in the cached arrays, -1 if it must be
    computed. If ``same`` (C is the cached fit's start, bit for bit) every
    cached label holds. Otherwise a cached label holds while its margin,
    exact against the centres of its anchor, exceeds ``moves[anchor, label]``
    (:func:`anchor_moves`), keeping margin, lower bound and anchor. Else the
    distances to its own centre and to those that moved from its anchor may
    settle it (:func:`_nearest_among_moved`). The rest are computed, against
    ``C``; these and the settled ones take anchor ``new_anchor``.

    The labels that need distances are worked out in the order of their
    rows in V, not of p (each label is its own: the same results): rows read
    where they are then come in memory order.
    """
    anchor_counts[:] = 0
    pending = np.zeros(V.shape[0], np.int64)  # row -> p + 1 of a label that needs distances
    for p in range(len(rows)):
        q = positions[p]
        if q >= 0:
            a = old_labels[q]
            g = old_anchor[q]
            if same or old_margins[q] > moves[g, a]:
                labels[p] = a
                margins[p] = old_margins[q]
                lowers[p] = old_lowers[q]
                anchor[p] = g
                anchor_counts[g] += 1
                continue
        pending[rows[p]] = p + 1
    computed = 0
    settled = 0
    for r in range(V.shape[0]):
        if pending[r] == 0:
            continue
        p = pending[r] - 1
        q = positions[p]
        anchor[p] = new_anchor
        anchor_counts[new_anchor] += 1
        if q >= 0 and old_margins[q] > -np.inf:
            g = old_anchor[q]
            label, margin, lower = _nearest_among_moved(V, r, C, old_labels[q], old_lowers[q],
                                                        moved_centres[g, : n_moved[g]])
            if label >= 0:
                labels[p], margins[p], lowers[p] = label, margin, lower
                settled += 1
                continue
        labels[p], margins[p], lowers[p] = nearest_margin(V, r, C)
        computed += 1
    return computed, settled


@njit(**_OPTS)
def renumber(values, numbers):
    """``values[i] = numbers[values[i]]`` in place."""
    for i in range(len(values)):
        values[i] = numbers[values[i]]


@njit(inline="always", **_OPTS)
def nearest_two(X: np.ndarray, i: int, C: np.ndarray):
    """Nearest centre of ``X[i]`` (first on ties, as :func:`nearest`) and the square roots
    of the smallest and second smallest squared distances (inf if there is one centre).

    A distance stops once it passes the second nearest so far: both come out
    exact, and one below the nearest is computed in full either way.
    """
    best = 0
    best_d = np.inf
    second_d = np.inf
    for j in range(C.shape[0]):
        dist = sqd_below(X, i, C, j, second_d)
        if dist < best_d:
            second_d = best_d
            best_d = dist
            best = j
        elif dist < second_d:
            second_d = dist
    return best, np.sqrt(best_d), np.sqrt(second_d)


@njit(**_OPTS)
def nearest_two_of_rows(rows, labels, first, second):
    """:func:`nearest_two_all` from precomputed squared distances ``rows`` (k, m): same comparisons."""
    _reset_nearest(labels, first, second)
    for j in range(rows.shape[0]):
        _fold_nearest(rows[j], j, labels, first, second)
    _root_nearest(first, second)


@njit(**_OPTS)
def nearest_two_all(XT, C, work, labels, first, second):
    """:func:`nearest_two` for every item of ``XT`` (d, m) at once: same comparisons, same bits.

    ``work`` (5, m) is work space.
    """
    _reset_nearest(labels, first, second)
    column = work[4]
    for j in range(C.shape[0]):
        distances_to_row(XT, C[j], work[0], work[1], work[2], work[3], column)
        _fold_nearest(column, j, labels, first, second)
    _root_nearest(first, second)


@njit(inline="always", **_OPTS)
def _reset_nearest(labels, first, second):
    for i in range(len(labels)):
        labels[i] = 0
        first[i] = np.inf
        second[i] = np.inf


@njit(inline="always", **_OPTS)
def _fold_nearest(dists, j, labels, first, second):
    """Centre j's squared distances into each item's nearest and second nearest (first on ties)."""
    for i in range(len(labels)):
        dist = dists[i]
        if dist < first[i]:
            second[i] = first[i]
            first[i] = dist
            labels[i] = j
        elif dist < second[i]:
            second[i] = dist


@njit(inline="always", **_OPTS)
def _root_nearest(first, second):
    for i in range(len(first)):
        first[i] = np.sqrt(first[i])
        second[i] = np.sqrt(second[i])


@njit(**_OPTS)
def lloyd_node(X, w, C, max_iter, weights):
    """Weighted Lloyd from centres ``C`` (updated in place); see :func:`_lloyd`."""
    return _lloyd(X, _transposed_for_simd(X), w, C, max_iter, weights, np.empty((C.shape[0], 0)), False)


@njit(**_OPTS)
def _lloyd(X, XT, w, C, max_iter, weights, start_rows, rows_ready):
    """Weighted Lloyd from centres ``C`` (updated in place) to an exact fixpoint or ``max_iter``.

    An empty cluster keeps its centre. ``weights`` gets each cluster's total
    item weight under the final assignment. Returns the updates run.

    Reassignment skips a point when Hamerly bounds prove its centre is still
    the nearest: an upper bound on the distance to its own centre and a
    lower bound on the distance to any other, moved by how far the centres
    moved. A skip needs a margin of ``_SLACK`` times the magnitudes involved,
    a thousand times the worst rounding of the bounds, and then every
    computed distance to another centre is provably larger than the one to
    its own: the labels are the bits :func:`nearest` would give.

    ``XT`` is :func:`_transposed_for_simd` of X. If ``rows_ready``,
    ``start_rows`` (k, m) hold every item's squared distance to each centre
    of ``C`` as :func:`distances_to_row` gives them (seeding computed them),
    and the first assignment reads them instead of computing them again.
    """
    m, d = X.shape
    k = C.shape[0]
    can_skip = d <= _SKIP_MAX_FEATURES
    labels = np.empty(m, np.int64)
    upper = np.empty(m)
    lower = np.empty(m)
    scale = np.empty(m)
    n_wide = XT.shape[1]
    wide = n_wide > 0
    work = np.empty((5, n_wide))
    near = np.empty(n_wide, np.int64)
    first = np.empty(n_wide)
    second = np.empty(n_wide)
    pending = np.empty(m, np.int64)
    if rows_ready:
        nearest_two_of_rows(start_rows, labels, upper, lower)
    elif wide:
        nearest_two_all(XT, C, work, labels, upper, lower)
    else:
        for i in range(m):
            labels[i], upper[i], lower[i] = nearest_two(X, i, C)
    for i in range(m):
        scale[i] = _bound_scale(upper[i], lower[i])
    sums = np.empty((k, d))
    counts = np.empty(k)
    previous = np.empty((k, d))
    moved = np.empty(k)
    n_iter = 0
    for _ in range(max_iter):
        cluster_sums(X, w, labels, k, sums, counts)
        n_iter += 1
        same = True
        for j in range(k):
            for f in range(d):
                previous[j, f] = C[j, f]
            if counts[j] > 0.0:
                for f in range(d):
                    value = sums[j, f] / counts[j]
                    if value != C[j, f]:
                        same = False
                    C[j, f] = value
        if same:
            break
        far, far_at, second_far = _moves(C, previous, moved)
        n_pending = 0
        for i in range(m):
            a = labels[i]
            other = second_far if a == far_at else far
            upper[i] += moved[a]
            lower[i] -= other
            scale[i] += moved[a] + other
            if can_skip and scale[i] > _MIN_SCALE and upper[i] + _SLACK * scale[i] < lower[i]:
                continue
            pending[n_pending] = i
            n_pending += 1
        if wide and 3 * n_pending >= m:  # many to redo: all distances at once (SIMD) beat one point at a time
            nearest_two_all(XT, C, work, near, first, second)
            for p in range(n_pending):
                i = pending[p]
                labels[i], upper[i], lower[i] = near[i], first[i], second[i]
                scale[i] = _bound_scale(upper[i], lower[i])
        else:
            for p in range(n_pending):
                i = pending[p]
                if can_skip and scale[i] > _MIN_SCALE:
                    upper[i] = np.sqrt(sqd(X, i, C, labels[i]))  # tighten the bound, then try the skip again
                    if upper[i] + _SLACK * scale[i] < lower[i]:
                        continue
                labels[i], upper[i], lower[i] = nearest_two(X, i, C)
                scale[i] = _bound_scale(upper[i], lower[i])
    weights[:] = 0.0
    for i in range(m):
        if w[i] > 0.0:
            weights[labels[i]] += w[i]
    return n_iter


@njit(**_OPTS)
def fit_node(X, w, logu, k, L, max_iter, centroids, weights):
    """Weighted k-means of one node's items: greedy race seeding, then Lloyd. Returns the updates run.

    Items of weight 0 are dropped first: inert in every step, they would still
    cost their distances (a leaf holding fewer points than k pads its level's
    nodes with them: Letter's first internal level is 84% padding).
    """
    m = X.shape[0]
    centroids[:] = 0.0
    weights[:] = 0.0
    live = 0
    for i in range(m):
        if w[i] > 0.0:
            live += 1
    if live == 0:
        return 0
    if live < m:
        keep = np.empty(live, np.int64)
        live = 0
        for i in range(m):
            if w[i] > 0.0:
                keep[live] = i
                live += 1
        X, w, logu = X[keep], w[keep], logu[:, keep]
        m = live
    L = min(L, m)
    seed_index = np.full(k, -1, np.int64)
    XT = _transposed_for_simd(X)
    seed_rows = np.empty((k, XT.shape[1]))
    row_ready = np.zeros(k, np.bool_)
    _seed(X, XT, w, logu, k, L, seed_index, np.full((k, L), -1, np.int64), np.full((k, L), -np.inf),
          np.full((k, L), np.inf), np.zeros(k, np.bool_), np.zeros(m), seed_rows, row_ready, np.empty(0, np.int64))
    if seed_index[0] < 0:
        return 0  # no item of positive weight
    for j in range(k):
        centroids[j] = X[seed_index[j]]
    return _lloyd(X, XT, w, centroids, max_iter, weights, seed_rows, row_ready.all())


@njit(**_OPTS)
def fit_nodes(X, w, logu, starts, stops, k, L, max_iter, centroids, weights, n_iter):
    """Fit every node b on items ``starts[b]:stops[b]`` of X (ranges may be anywhere in X)."""
    for b in range(len(starts)):
        lo, hi = starts[b], stops[b]
        n_iter[b] = fit_node(X[lo:hi], w[lo:hi], logu[:, lo:hi], k, L, max_iter, centroids[b], weights[b])


@njit(**_OPTS)
def fit_path(V, slots, leaf_logu, leaf, centroids, weights, items, item_weights, level_logu, widths, ks, max_iters,
             n_candidates, fanout):
    """Refit one DC leaf from its rows ``V[slots]`` (weight 1 each), then each of its ancestors from its children.

    Per level l: ``centroids[l]`` (nodes, k, d) and ``weights[l]`` (nodes, k)
    of all partitions' nodes (``widths[l]`` per partition); ``items[l]`` and
    ``item_weights[l]``, the same as one row per (node, centre): the items of
    level l + 1; ``level_logu[l - 1]`` level l's race log-uniforms of one
    partition's child rows. The calls of :func:`fit_node` are those of a
    level-by-level refit of the same path, with arguments of the types
    :func:`fit_nodes` passes (no second compilation of the solver).
    """
    m = slots.shape[0]
    rows = np.empty((m, V.shape[1]))
    for i in range(m):
        _copy_row(V, slots[i], rows, i)
    fit_node(rows[0:m], np.ones(m)[0:m], leaf_logu[:, 0:m], ks[0], max(1, n_candidates[0]), max_iters[0],
             centroids[0][leaf], weights[0][leaf])  # sliced as fit_nodes slices: its argument types
    child = leaf
    for level in range(1, len(widths)):
        child_width, child_k = widths[level - 1], ks[level - 1]
        partition, local = child // child_width, child % child_width
        first = local - local % fanout
        node = partition * widths[level] + local // fanout
        base = partition * child_width * child_k
        lo, hi = first * child_k, min(first + fanout, child_width) * child_k
        fit_node(items[level - 1][base + lo : base + hi], item_weights[level - 1][base + lo : base + hi],
                 level_logu[level - 1][:, lo:hi], ks[level], max(1, n_candidates[level]), max_iters[level],
                 centroids[level][node], weights[level][node])
        child = node


@njit(**_OPTS)
def fit_nodes_gathered(V, rows, w, logu, starts, stops, k, L, max_iter, centroids, weights, n_iter):
    """``fit_nodes`` on the rows ``V[rows[i]]``: each node's rows are copied into one small scratch
    buffer (in cache while its node is solved), not gathered for every node up front by the caller."""
    longest = 0
    for b in range(len(starts)):
        longest = max(longest, stops[b] - starts[b])
    buf = np.empty((longest, V.shape[1]))
    for b in range(len(starts)):
        lo, hi = starts[b], stops[b]
        for i in range(hi - lo):
            _copy_row(V, rows[lo + i], buf, i)
        n_iter[b] = fit_node(buf[: hi - lo], w[lo:hi], logu[:, lo:hi], k, L, max_iter, centroids[b], weights[b])


@njit(**_OPTS)
def segment_order(keys, offsets, order):
    """``order[lo:hi]`` = indices sorting each segment ``offsets[b]:offsets[b+1]`` of ``keys`` (stable).

    Returns True if some segment holds equal keys (the caller then breaks
    those ties by id). DC leaves are small, so insertion sort; a big
    segment (few leaves, many points) takes a merge sort instead.
    """
    ties = False
    for b in range(len(offsets) - 1):
        lo = offsets[b]
        hi = offsets[b + 1]
        if hi - lo > INSERTION_SORT_MAX:
            local = np.argsort(keys[lo:hi], kind="mergesort")
            for p in range(hi - lo):
                order[lo + p] = lo + local[p]
                if p > 0 and keys[order[lo + p - 1]] == keys[order[lo + p]]:
                    ties = True
            continue
        for i in range(lo, hi):
            key = keys[i]
            p = i
            while p > lo and keys[order[p - 1]] > key:
                order[p] = order[p - 1]
                p -= 1
            order[p] = i
            if p > lo and keys[order[p - 1]] == key:
                ties = True
    return ties


@njit(**_OPTS)
def q_seeding_certificate(x, logu, sign, leaving, cand, chosen, potentials, last_scores, scale, new_potentials,
                          scores, entry_rank, entry_score, peaks, new_peaks):
    """True if adding (+1) or removing (-1) point ``x`` provably leaves the greedy race seeding unchanged.

    ``cand`` (k, L, d): each step's candidates; ``chosen`` (k,): the winner's
    slot; ``potentials`` (k, L): their weighted costs in the fit (inf where
    none ran); ``last_scores`` (k,): the L-th best race key of each step;
    ``logu`` (k,): the newcomer's race log-uniforms (inserts only). Each
    step's winner must keep the lowest cost by more than two summation
    orders of ``scale`` terms may differ (``4 scale u M``), where M is the
    largest cost the step has held since the fit (``peaks``, (k,), or the
    costs now if larger): every rounding of a kept cost was at most u times
    a value of at most M, and costs shrink as points are deleted, so the
    current costs alone would understate the error. ``new_peaks`` receives
    the peaks with the changed costs, for the caller to keep with them.
    Distances are :func:`sqd`, as in the fit. ``new_potentials`` receives
    the costs with the change applied: the caller keeps them once the
    change is certified, or the next certificate would judge the race by
    costs the points no longer have.

    A newcomer whose race key puts it among a step's runners is refused,
    unless ``scores`` (k, L) (the runners' race keys; pass (k, 0) to refuse
    always) shows all L slots taken, no runner with the newcomer's key and
    a winner other than the last runner, whom the newcomer pushes out.
    Then ``entry_rank[j]`` gets the newcomer's slot, ``entry_score[j]``
    its key, and the winner is judged among the runners that stay; the
    caller must still show the newcomer loses (:func:`q_entry_cost`).
    Steps it does not enter get rank -1.

    A deleted point that was a runner leaves its race: ``leaving[j]``, its
    slot in step j (else -1), is judged out of it like a pushed-out runner;
    the caller must still show its successor loses (:func:`q_race_entrant`).
    """
    k, L, d = cand.shape
    u = 2.0**-53
    x2 = x.reshape(1, d)
    new_potentials[:] = potentials
    entry_rank[:] = -1
    pots = np.empty(L)  # each runner's cost with the change (inf: none, or it overflowed)
    prev = np.inf  # D^2 of x before step j: its distance to the nearest seed chosen so far
    for j in range(k):
        dropped = leaving[j]
        if sign > 0:
            if prev == 0.0:
                score = -np.inf  # log(u) < 0 over zero mass
            else:
                score = logu[j] / (1.0 if prev == np.inf else prev)
            if score >= last_scores[j]:
                if scores.shape[1] != L or last_scores[j] == -np.inf or chosen[j] == L - 1:
                    return False
                rank = 0
                for slot in range(L):
                    if scores[j, slot] == score:
                        return False  # a tie: the canonical order of the two points decides
                    if scores[j, slot] > score:
                        rank += 1
                entry_rank[j] = rank
                entry_score[j] = score
                dropped = L - 1
        best = 0
        best_pot = np.inf
        top = peaks[j]
        for slot in range(L):
            if slot == dropped:
                continue
            dist = sqd(x2, 0, cand[j], slot)
            if prev < dist:
                dist = prev
            pot = potentials[j, slot] + sign * dist
            pots[slot] = pot if np.isfinite(pot) else np.inf
            if not np.isfinite(pot):
                continue
            new_potentials[j, slot] = pot
            top = max(top, abs(pot))
            if pot < best_pot:
                best_pot = pot
                best = slot
        if best != chosen[j]:
            return False
        runner_up = np.inf
        for slot in range(L):
            if slot != best and slot != dropped and pots[slot] < runner_up:
                runner_up = pots[slot]
        if not runner_up - best_pot > 4.0 * scale * u * top:
            return False
        new_peaks[j] = top
        prev = min(prev, sqd(x2, 0, cand[j], chosen[j]))
    return True


@njit(**_OPTS)
def q_race_entrant(V, slots, logu, seeds, last_score):
    """Who takes a leaving runner's place in a seeding race: the point with the highest race key below
    the runners' (``last_score``, the L-th best), as the fit would rank it.

    Over the points ``V[s]``, s in ``slots`` (``logu[t]``: the race
    log-uniform of ``slots[t]`` at this step; ``seeds`` (j, d): the steps
    before), the key is ``log(u) / D^2`` with D^2 the squared distance to
    the nearest seed (no seed: ``log(u)``), the fit's bits; points with no
    mass do not run. Returns (its position t or -1 if none, its key, how many
    points have keys at or above ``last_score``, whether another point ties
    its key: then only the canonical order decides).
    """
    best = -np.inf
    best_t = -1
    above = 0
    tie = False
    for t in range(len(slots)):
        s = slots[t]
        mass = 1.0
        if seeds.shape[0] > 0:
            mass = np.inf
            for j in range(seeds.shape[0]):
                mass = min(mass, sqd_below(V, s, seeds, j, mass))
        if mass <= 0.0:
            continue
        score = logu[t] / mass
        if score >= last_score:
            above += 1
        elif score > best:
            best, best_t, tie = score, t, False
        elif score == best:
            tie = True
    return best_t, best, above, tie


@njit(**_OPTS)
def q_entry_cost(V, slots, skip, x, seeds):
    """The seeding cost of newcomer ``x`` as a runner after ``seeds`` (j, d) were chosen.

    Sums, over the points ``V[s]`` for s in ``slots`` (unless ``skip[s]``),
    ``min(|v - x|^2, D^2)`` with D^2 the squared distance to the nearest
    seed (no seed: the distance to x alone), as the fit's race does; the
    newcomer's own term is 0. The order of the sum differs from the fit's,
    which the certificate's margin covers.
    """
    d = V.shape[1]
    x2 = x.reshape(1, d)
    total = 0.0
    for t in range(len(slots)):
        s = slots[t]
        if skip[s]:
            continue
        dist = sqd(V, s, x2, 0)
        for j in range(seeds.shape[0]):
            dist = min(dist, sqd_below(V, s, seeds, j, dist))
        total += dist
    return total


@njit(**_OPTS)
def q_lloyd_certificate(x, sign, centres, sums, counts, peak_counts, theta, eps, gamma, n_new, max_abs, n_terms,
                        new_sums, new_counts):
    """Redo one point's effect on the stored quantized-Lloyd updates in order; returns how many of them
    provably keep their snapped centres (all ``T``: nothing moves).

    Same arithmetic, operation for operation, as ``quantize.corrected_centroids``
    and ``quantize.snap`` in the fit (elementwise IEEE operations, no fused
    multiply-adds). Each centre must also lie farther inside its grid cell
    than two computations of it may differ by rounding: sums of up to
    ``n_terms`` additions in different orders differ by at most
    ``2 n_terms u sum|x|`` (twice the recursive-summation bound), and
    dividing, blending and snapping add a few ulps of each operand.
    ``sum|x|`` is bounded by ``count * max_abs`` with the cluster's largest
    count since the fit (``peak_counts``, ``max_abs`` likewise a peak): a
    stored sum keeps the rounding of every partial sum it went through,
    however small the cluster is now. ``new_sums``/``new_counts`` receive
    the updated statistics (of the updates that hold).
    """
    T, k, d = sums.shape
    balance = gamma * n_new / k
    x2 = x.reshape(1, d)
    new_sums[:] = sums
    new_counts[:] = counts
    for t in range(T):
        lab = nearest(x2, 0, centres[t])
        for f in range(d):
            new_sums[t, lab, f] += sign * x[f]
        new_counts[t, lab] += sign
        for j in range(k):
            c = new_counts[t, j]
            peak = max(c, peak_counts[t, j])
            for f in range(d):
                snapped, room = _snapped_with_room(new_sums[t, j, f], c, peak, balance, centres[t, j, f], eps,
                                                   theta[f], max_abs[f], n_terms)
                if snapped != centres[t + 1, j, f] or not room:
                    return t
    return T


@njit(inline="always", **_OPTS)
def _snapped_with_room(total, c, peak, balance, prev, eps, theta_f, max_abs_f, n_terms):
    """One coordinate of a quantized Lloyd update from a cluster's sum ``total`` of ``c`` points (the
    arithmetic of ``quantize.corrected_centroids`` and ``quantize.snap``, operation for operation):
    the snapped value, and whether it lies farther inside its grid cell than two computations of
    ``total`` by up to ``n_terms`` additions of terms each at most ``max_abs_f``, in clusters that
    never held more than ``peak``, may differ (see :func:`q_lloyd_certificate`)."""
    u = 2.0**-53
    m = c if c > 0.0 else 1.0
    ratio = c / balance if balance > 0.0 else 1.0
    mean = total / m
    if c > 0.0:
        centre = ratio * mean + (1.0 - ratio) * prev if ratio < 1.0 else mean
    else:
        centre = prev
    z = centre / eps - theta_f
    cell = np.floor(z + 0.5)
    slack = (0.5 - abs(z - cell)) * eps
    bound = (2.0 * (n_terms + 2) * u * (peak * max_abs_f) / m
             + 8.0 * u * (abs(mean) + abs(prev))
             + 4.0 * u * eps * (abs(z) + 1.0))
    return eps * (cell + theta_f), slack > bound


@njit(**_OPTS)
def q_edit_stale(X, sign, starts, sums, counts, peak_counts):
    """Take points ``X`` joining (``sign`` +1) or leaving (-1) into quantized Lloyd updates' statistics
    whose snapped centres are no longer certified (see ``QKMeans._stale``): each point's sum and count
    go to its nearest centre of ``starts[t]``, as that update labelled it; peaks follow the counts."""
    T, d = sums.shape[0], sums.shape[2]
    for i in range(X.shape[0]):
        for t in range(T):
            lab = nearest(X, i, starts[t])
            for f in range(d):
                sums[t, lab, f] += sign * X[i, f]
            counts[t, lab] += sign
            peak_counts[t, lab] = max(peak_counts[t, lab], counts[t, lab])


@njit(**_OPTS)
def q_edited_update(V, rows, labels, old_labels, sums, counts, peak_counts, prev, theta, eps, gamma, n_terms,
                    max_abs, out):
    """One quantized Lloyd update from an earlier computation of it instead of a pass over every point.

    ``sums``/``counts``/``peak_counts`` (k, d)/(k,)/(k,): the update's statistics
    with the points labelled ``old_labels``; each point whose label is now
    ``labels[i]`` moves over, in place (its sum and count out of one cluster,
    into the other; point i is ``V[rows[i]]``; peaks count every point a
    cluster held on the way). Then
    the centres, snapped into ``out``, if each lies farther inside its grid
    cell than the edited sums and a fresh left-to-right pass may differ by
    rounding (``n_terms``: additions ``sums`` went through before, besides
    these moves). Returns the points moved, or -1 where a centre is too
    close to its cell edge: then only the fresh pass decides.
    """
    n, d = len(rows), V.shape[1]
    k = sums.shape[0]
    moved = 0
    for i in range(n):
        new, old = labels[i], old_labels[i]
        if new == old:
            continue
        moved += 1
        r = rows[i]
        for f in range(d):
            sums[new, f] += V[r, f]
            sums[old, f] -= V[r, f]
        counts[new] += 1.0
        counts[old] -= 1.0
        peak_counts[new] = max(peak_counts[new], counts[new])
    balance = gamma * n / k
    certain = True
    for j in range(k):
        c = counts[j]
        peak = max(c, peak_counts[j])
        for f in range(d):
            out[j, f], room = _snapped_with_room(sums[j, f], c, peak, balance, prev[j, f], eps, theta[f], max_abs[f],
                                                 n_terms + moved)
            certain &= room
    return moved if certain else -1


@njit(**_OPTS)
def q_certify_inserts(X, logu, cand, chosen, last_scores, scores, theta, eps, gamma, n_model, ops,
                      potentials, peaks, centres, sums, counts, peak_counts, max_abs):
    """Certify inserts ``X[0], X[1], ...`` in order; returns how many passed before the first that did not.

    For each point, in one compiled loop, exactly what the model does one
    point at a time: :func:`q_seeding_certificate` (with the point's race
    log-uniforms ``logu[i]``), then :func:`q_lloyd_certificate` on the
    Lloyd updates kept (none, or a prefix, once Lloyd's cache failed in this
    call); then the certified statistics are kept: ``potentials``, ``peaks``,
    ``sums``, ``counts``, ``peak_counts`` and ``max_abs``, updated in place
    (pass copies). It stops at the first point whose certificate fails or
    that would join a seeding race: the caller takes that one the slow way.
    A certificate costs ~5 us here against ~30 us of Python per point.
    """
    k, _, d = cand.shape
    new_potentials = np.empty_like(potentials)
    new_peaks = np.empty(k)
    entry_rank = np.empty(k, np.int64)
    entry_score = np.empty(k)
    new_sums = np.empty_like(sums)
    new_counts = np.empty_like(counts)
    new_max_abs = np.empty(d)
    none_leaving = np.full(k, -1, np.int64)
    for i in range(X.shape[0]):
        x = X[i]
        scale = float(n_model + ops + 2)
        if not q_seeding_certificate(x, logu[i], 1.0, none_leaving, cand, chosen, potentials, last_scores, scale,
                                     new_potentials, scores, entry_rank, entry_score, peaks, new_peaks):
            return i
        for j in range(k):
            if entry_rank[j] >= 0:
                return i
        n = n_model + 1
        for f in range(d):
            new_max_abs[f] = max(max_abs[f], abs(x[f]))
        if q_lloyd_certificate(x, 1.0, centres, sums, counts, peak_counts, theta, eps, gamma, n, new_max_abs,
                               n + ops + 1, new_sums, new_counts) < sums.shape[0]:
            return i
        potentials[:] = new_potentials
        peaks[:] = new_peaks
        n_model = n
        ops += 1
        sums[:] = new_sums
        counts[:] = new_counts
        max_abs[:] = new_max_abs
        for t in range(counts.shape[0]):
            for j in range(k):
                peak_counts[t, j] = max(peak_counts[t, j], counts[t, j])
    return X.shape[0]
