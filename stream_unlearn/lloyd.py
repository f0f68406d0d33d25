"""Batched weighted k-means: exact k-means++ by hash-keyed races, then Lloyd.

A batch holds B independent problems padded to one size; padding items carry
weight 0 and never influence a result. Every result is a pure function of one
problem's items in the order given, whatever else is in the batch, because
each step is row-independent (einsum contractions over the fixed feature
axis, no BLAS whose blocking depends on matrix shape) and every sum over
items runs sequentially in item order (bincount), which trailing zeros cannot
change. Tests pin that invariance down; the exact-unlearning contract rests
on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hashing import combine, uniforms


@dataclass(frozen=True)
class BatchResult:
    """Centroids (B, k, d), total item weight per cluster (B, k), Lloyd updates run (B,)."""

    centroids: np.ndarray
    weights: np.ndarray
    n_iter: np.ndarray


def assign(X: np.ndarray, C: np.ndarray, cc: np.ndarray | None = None) -> np.ndarray:
    """Nearest centre (B, m) for items (B, m, d) among centres (B, k, d).

    Ranks ``|c|^2 - 2 x.c``, which orders centres as the squared distance does.
    The one assignment rule of every model: fits, certificates and predict.
    ``cc`` may pass ``row_norms(C)`` when the centres are reused.
    """
    scores = np.einsum("bmd,bkd->bmk", X, C)
    scores *= -2.0
    scores += (row_norms(C) if cc is None else cc)[:, None, :]
    return np.argmin(scores, axis=2)


def sq_dists(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared distances (B, m, k) between items (B, m, d) and centres (B, k, d)."""
    d2 = np.einsum("bmd,bkd->bmk", X, C)
    d2 *= -2.0
    d2 += np.einsum("bmd,bmd->bm", X, X)[:, :, None]
    d2 += np.einsum("bkd,bkd->bk", C, C)[:, None, :]
    return np.maximum(d2, 0.0, out=d2)


def row_norms(X: np.ndarray) -> np.ndarray:
    """Squared norms (B, m) of items (B, m, d)."""
    return np.einsum("bmd,bmd->bm", X, X)


def sq_dist_to(X: np.ndarray, c: np.ndarray, xx: np.ndarray | None = None) -> np.ndarray:
    """Squared distance (B, m) of each item (B, m, d) to one centre per problem (B, d).

    Uses ``|x|^2 - 2 x.c + |c|^2`` (clamped at 0): one contraction instead of
    a difference array; ``xx`` are the items' precomputed squared norms.
    """
    return sq_dist_to_many(X, c[:, None, :], xx)[:, 0, :]


def sq_dist_to_many(
    X: np.ndarray, C: np.ndarray, xx: np.ndarray | None = None, cc: np.ndarray | None = None
) -> np.ndarray:
    """Squared distance (B, L, m) of each item (B, m, d) to each of L centres (B, L, d).

    ``xx`` and ``cc`` may pass precomputed ``row_norms`` of X and C.
    """
    d2 = np.einsum("bmd,bld->blm", X, C)
    d2 *= -2.0
    d2 += (row_norms(X) if xx is None else xx)[:, None, :]
    d2 += (row_norms(C) if cc is None else cc)[:, :, None]
    return np.maximum(d2, 0.0, out=d2)


def race_log_uniforms(keys: np.ndarray, k: int, salt: np.uint64) -> np.ndarray:
    """``log(u)`` (k, ...) for each seeding step and item key."""
    steps = combine(salt, np.arange(k, dtype=np.uint64)).reshape((k,) + (1,) * keys.ndim)
    return np.log(uniforms(keys[None], steps))


def default_candidates(k: int) -> int:
    """Candidates per greedy seeding step, as scikit-learn: ``2 + floor(ln k)``."""
    return 2 + int(np.log(k))


@dataclass(frozen=True)
class Seeds:
    """The outcome of greedy race seeding, enough to certify a later change.

    index: chosen item (B, k); candidates: the race's top items per step
    (B, k, L), -1 where fewer items could run; scores: their race keys
    (B, k, L); potentials: weighted cost after adding each candidate
    (B, k, L); fallback: steps that had to draw a duplicate (B, k).
    """

    index: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    potentials: np.ndarray
    fallback: np.ndarray


def ordered_sum(values: np.ndarray) -> np.ndarray:
    """Sum over the last axis strictly left to right, so trailing zeros change nothing."""
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1])
    return np.cumsum(values, axis=-1)[..., -1]


def race_seeds(
    X: np.ndarray, w: np.ndarray, keys: np.ndarray, k: int, salt: np.uint64, n_candidates: int,
    logu: np.ndarray | None = None,
) -> Seeds:
    """Greedy k-means++ seeding as exponential races keyed by item hash.

    Step j runs a race: each item's key is ``log(u_j) / (w * D^2)`` with
    ``u_j`` a function of the item's hash, and the ``L`` best keys are a
    weighted sample without replacement proportional to ``w * D^2``
    (Efraimidis-Spirakis), i.e. k-means++ candidates. As in scikit-learn's
    greedy k-means++, the candidate that leaves the lowest weighted cost
    wins. A step where every ``w * D^2`` is 0 (fewer distinct items than k)
    draws a duplicate by weight alone. ``logu`` may be passed precomputed
    (``race_log_uniforms(keys, k, salt)``) when the keys never change.
    """
    B, m, _ = X.shape
    L = max(1, min(n_candidates, m))
    rows = np.arange(B)
    rows_L = rows[:, None]
    if logu is None:
        logu = race_log_uniforms(keys, k, salt)
    xx = row_norms(X)
    mass = w
    d2 = np.zeros_like(w)
    index = np.zeros((B, k), dtype=np.intp)
    candidates = np.full((B, k, L), -1, dtype=np.intp)
    scores = np.full((B, k, L), -np.inf)
    potentials = np.full((B, k, L), np.inf)
    fallback = np.zeros((B, k), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(k):
            race = logu[j] / mass
            cand, cand_score = top_candidates(race, L)
            runs = cand_score > -np.inf
            dists = sq_dist_to_many(X, X[rows_L, cand], xx)
            if j:
                np.minimum(dists, d2[:, None, :], out=dists)
            pots = np.where(runs, ordered_sum(dists * w[:, None, :]), np.inf)
            best = np.argmin(pots, axis=1)
            pick = cand[rows, best]
            dead = ~runs[:, 0]
            if dead.any():
                alt = np.argmax(logu[j] / w, axis=1)
                pick = np.where(dead, alt, pick)
                fallback[:, j] = dead
            index[:, j] = pick
            candidates[:, j] = np.where(runs, cand, -1)
            scores[:, j] = cand_score
            potentials[:, j] = pots
            if j + 1 < k:
                # The winner's distances were computed in the race unless the step fell back.
                chosen = dists[rows, np.where(dead, 0, best)]
                if dead.any():
                    raw = sq_dist_to(X, X[rows, pick], xx)
                    chosen = np.where(dead[:, None], raw if j == 0 else np.minimum(d2, raw), chosen)
                d2 = chosen
                mass = w * d2
    return Seeds(index, candidates, scores, potentials, fallback)


def top_candidates(race: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """The L highest race keys per row, best first (ties: lower index first)."""
    B, m = race.shape
    rows = np.arange(B)[:, None]
    top = np.argpartition(race, m - L, axis=1)[:, m - L :] if L < m else np.broadcast_to(np.arange(m), race.shape)
    top_scores = race[rows, top]
    order = np.lexsort((top, -top_scores), axis=1)
    return top[rows, order], top_scores[rows, order]


class ClusterSums:
    """Per-cluster weighted sums of fixed items under changing labels, in item order."""

    def __init__(self, X: np.ndarray, w: np.ndarray, k: int) -> None:
        B, m, d = X.shape
        self.shape = (B, k, d)
        self.offsets = (np.arange(B) * k)[:, None]
        self.weights = w.ravel()
        self.weighted_T = (X * w[:, :, None]).reshape(B * m, d).T.ravel()
        self.feature_offsets = (np.arange(d) * (B * k))[:, None]

    def counts(self, labels: np.ndarray) -> np.ndarray:
        """Total weight (B, k) per cluster."""
        B, k, _ = self.shape
        groups = (labels + self.offsets).ravel()
        return np.bincount(groups, weights=self.weights, minlength=B * k).reshape(B, k)

    def sums(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted sums (B, k, d) and total weights (B, k); one bincount for all features."""
        B, k, d = self.shape
        groups = (labels + self.offsets).ravel()
        flat = (groups[None, :] + self.feature_offsets).ravel()
        sums = np.bincount(flat, weights=self.weighted_T, minlength=d * B * k)
        return sums.reshape(d, B, k).transpose(1, 2, 0), self.counts(labels)


def fit_batch(
    X: np.ndarray, w: np.ndarray, keys: np.ndarray, k: int, max_iter: int, salt: np.uint64,
    n_candidates: int | None = None, logu: np.ndarray | None = None,
) -> BatchResult:
    """Weighted k-means on each of B padded problems; see the module docstring.

    Lloyd runs at most ``max_iter`` updates and stops early only at an exact
    fixpoint, itself a function of the items. An empty cluster keeps its centre.
    """
    B, m, d = X.shape
    if m == 0:
        return BatchResult(np.zeros((B, k, d)), np.zeros((B, k)), np.zeros(B, dtype=np.int64))
    L = default_candidates(k) if n_candidates is None else n_candidates
    seeds = race_seeds(X, w, keys, k, salt, L, logu)
    C = X[np.arange(B)[:, None], seeds.index]
    acc = ClusterSums(X, w, k)
    labels = assign(X, C)
    n_iter = np.zeros(B, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    for _ in range(max_iter):
        sums, counts = acc.sums(labels)
        filled = counts > 0
        C_new = np.where(filled[:, :, None], sums / np.where(filled, counts, 1.0)[:, :, None], C)
        n_iter += ~done
        done |= (C_new == C).all(axis=(1, 2))
        if done.all():
            break
        C = C_new
        labels = assign(X, C)
    counts = acc.counts(labels)
    empty = ~(w > 0).any(axis=1)
    if empty.any():
        C[empty] = 0.0
    return BatchResult(C, counts, n_iter)


def fit_one(
    X: np.ndarray, w: np.ndarray, keys: np.ndarray, k: int, max_iter: int, salt: np.uint64, n_candidates: int | None = None
) -> BatchResult:
    """``fit_batch`` for a single unpadded problem."""
    return fit_batch(X[None], w[None], keys[None], k, max_iter, salt, n_candidates)
