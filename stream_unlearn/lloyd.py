"""Weighted k-means over batches of independent problems (nodes).

Seeding is exact greedy k-means++ by hash-keyed exponential races; Lloyd
stops only at an exact fixpoint or after ``max_iter`` updates. The loops
run compiled (:mod:`stream_unlearn.kernels`); every result is a pure
function of one problem's items in the order given, whatever else is in the
batch and however the batch is laid out. Tests pin that invariance down:
the exact-unlearning contract rests on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import kernels
from .compute_pool import compute_pool, n_threads
from .hashing import combine, mixed_salts, uniforms_per_mixed_salt

#: Batches of at least this many nodes are split over threads (the solver
#: releases the GIL). A node is always solved alone, in one thread, so this
#: never changes a result.
_PARALLEL_NODES = 16


@dataclass(frozen=True)
class BatchResult:
    """Centroids (B, k, d), total item weight per cluster (B, k), Lloyd updates run (B,)."""

    centroids: np.ndarray
    weights: np.ndarray
    n_iter: np.ndarray


@dataclass(frozen=True)
class Seeds:
    """The outcome of greedy race seeding, enough to certify a later change.

    index: chosen item (B, k), -1 if a problem has no item of positive
    weight; candidates: the race's top items per step (B, k, L), -1 where
    fewer items could run; scores: their race keys (B, k, L); potentials:
    weighted cost after adding each candidate (B, k, L), inf where it did
    not run; fallback: steps that had to draw a duplicate (B, k); nearest:
    each item's nearest seed (B, m), the labels :func:`assign` gives against
    the seeds (-1 for items of weight 0, or all if a step chose no seed).
    """

    index: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    potentials: np.ndarray
    fallback: np.ndarray
    nearest: np.ndarray


def default_candidates(k: int) -> int:
    """Candidates per greedy seeding step, as scikit-learn: ``2 + floor(ln k)``."""
    return 2 + int(np.log(k))


def race_log_uniforms(keys: np.ndarray, k: int, salt: np.uint64) -> np.ndarray:
    """``log(u)`` (k, ...) for each seeding step and item key (numpy's log: its bits are part of the model)."""
    u = uniforms_per_mixed_salt(np.asarray(keys).reshape(-1), _race_steps(np.uint64(salt), k))
    return np.log(u).reshape((k,) + np.shape(keys))


def race_log_uniforms_at(keys: np.ndarray, k: int, salt: np.uint64, step: int) -> np.ndarray:
    """Row ``step`` of :func:`race_log_uniforms` alone: the same bits, for one step's race."""
    steps = _race_steps(np.uint64(salt), k)[step : step + 1]
    return np.log(uniforms_per_mixed_salt(np.asarray(keys).reshape(-1), steps))[0]


@lru_cache(maxsize=256)
def _race_steps(salt: np.uint64, k: int) -> np.ndarray:
    """The k seeding steps' salts, mixed (:func:`hashing.mixed_salts`): the same for every call of a model."""
    steps = mixed_salts(combine(salt, np.arange(k, dtype=np.uint64)))
    steps.setflags(write=False)
    return steps


def assign(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Nearest centre (B, m) for items (B, m, d) among centres (B, k, d).

    The one assignment rule of every model: fits, certificates and predict.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    C = np.ascontiguousarray(C, dtype=np.float64)
    out = np.empty(X.shape[:2], dtype=np.int64)
    for b in range(X.shape[0]):
        kernels.assign_rows(X[b], C[b], out[b])
    return out


def assign_cluster_sums(X: np.ndarray, C: np.ndarray, rows: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``cluster_sums(X, 1, labels, k)`` and ``labels = assign(X, C)``, for unit weights, in one pass over
    X (C-contiguous float64); and each point's margin and lower bound (:func:`kernels.nearest_margin`).
    With ``rows``, the points are ``X[rows]`` (read in place)."""
    rows = all_rows(X) if rows is None else rows
    sums = np.empty(C.shape)
    counts = np.empty(C.shape[0])
    labels = np.empty(len(rows), dtype=np.int64)
    margins = np.empty(len(rows))
    lowers = np.empty(len(rows))
    kernels.assign_cluster_sums(X, rows, np.ascontiguousarray(C, dtype=np.float64), sums, counts, labels, margins,
                                lowers)
    return sums, counts, labels, margins, lowers


def cluster_sums(X: np.ndarray, w: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums (k, d) and weights (k,) per cluster, items left to right."""
    sums = np.empty((k, X.shape[1]))
    counts = np.empty(k)
    kernels.cluster_sums(X, w, labels, k, sums, counts)
    return sums, counts


def cluster_sums_of_rows(V: np.ndarray, rows: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cluster_sums` of unit-weight points ``V[rows]``, read in place (the same bits)."""
    sums = np.empty((k, V.shape[1]))
    counts = np.empty(k)
    kernels.cluster_sums_of_rows(V, rows, labels, k, sums, counts)
    return sums, counts


def all_rows(X: np.ndarray) -> np.ndarray:
    """Row numbers of every point of X, in order: X as a (V, rows) pair."""
    return np.arange(len(X), dtype=np.int64)


def _seed_arrays(B: int, k: int, L: int) -> tuple[np.ndarray, ...]:
    return (np.full((B, k), -1, dtype=np.int64), np.full((B, k, L), -1, dtype=np.int64),
            np.full((B, k, L), -np.inf), np.full((B, k, L), np.inf), np.zeros((B, k), dtype=np.bool_))


def race_seeds(X: np.ndarray, w: np.ndarray, keys: np.ndarray, k: int, salt: np.uint64, n_candidates: int) -> Seeds:
    """Greedy k-means++ seeding of B padded problems (B, m, d); see :func:`kernels.seed_node`."""
    B, m, _ = X.shape
    L = max(1, min(n_candidates, m))
    logu = race_log_uniforms(keys, k, salt)
    index, cand, score, pots, fallback = _seed_arrays(B, k, L)
    nearest = np.empty((B, m), dtype=np.int64)
    X = np.ascontiguousarray(X, dtype=np.float64)
    for b in range(B):
        kernels.seed_node(X[b], np.ascontiguousarray(w[b], dtype=np.float64), np.ascontiguousarray(logu[:, b]),
                          k, L, index[b], cand[b], score[b], pots[b], fallback[b], np.zeros(m), nearest[b])
    return Seeds(index, cand, score, pots, fallback, nearest)


def fit_ragged(
    X: np.ndarray, w: np.ndarray, logu: np.ndarray, offsets: np.ndarray, k: int, max_iter: int, n_candidates: int,
    rows: np.ndarray | None = None, parallel: bool = True,
) -> BatchResult:
    """Weighted k-means of each problem b on items ``offsets[b]:offsets[b+1]`` of X (N, d).

    ``logu`` (k, N) are the items' race log-uniforms. A problem with no item
    of positive weight gets zero centroids and weights. ``rows``: item i is
    row ``X[rows[i]]`` instead (X a store's vectors: no gathered copy).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    return fit_ranges(X, w, logu, offsets[:-1], offsets[1:], k, max_iter, n_candidates, rows, parallel)


def fit_ranges(
    X: np.ndarray, w: np.ndarray, logu: np.ndarray, starts: np.ndarray, stops: np.ndarray, k: int, max_iter: int,
    n_candidates: int, rows: np.ndarray | None = None, parallel: bool = True,
) -> BatchResult:
    """``fit_ragged`` for problems on items ``starts[b]:stops[b]``: ranges anywhere in X, no copying.
    ``parallel=False`` solves them all in the calling thread (a caller that is itself one of
    :func:`in_parallel`'s runs)."""
    B = len(starts)
    d = X.shape[1]
    centroids = np.zeros((B, k, d))
    weights = np.zeros((B, k))
    n_iter = np.zeros(B, dtype=np.int64)
    X, w, logu = (np.ascontiguousarray(a, dtype=np.float64) for a in (X, w, logu))
    starts, stops = (np.ascontiguousarray(a, dtype=np.int64) for a in (starts, stops))
    L = max(1, n_candidates)
    if rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.int64)

    def solve(a: int, b: int) -> None:
        if rows is None:
            kernels.fit_nodes(X, w, logu, starts[a:b], stops[a:b], k, L, max_iter, centroids[a:b], weights[a:b],
                              n_iter[a:b])
        else:
            kernels.fit_nodes_gathered(X, rows, w, logu, starts[a:b], stops[a:b], k, L, max_iter, centroids[a:b],
                                       weights[a:b], n_iter[a:b])

    if parallel:
        in_parallel(stops - starts, solve)
    else:
        solve(0, B)
    return BatchResult(centroids, weights, n_iter)


def in_parallel(sizes: np.ndarray, solve: Callable[[int, int], None]) -> None:
    """``solve(a, b)`` over problems ``a:b``: contiguous runs of about equal work (items plus a fixed cost per
    problem), one per thread, or all at once below :data:`_PARALLEL_NODES` problems. ``solve`` must release
    the GIL to gain, and must not call this again (the pool's threads would wait on themselves)."""
    B = len(sizes)
    threads = n_threads()
    if B < _PARALLEL_NODES or threads < 2:
        solve(0, B)
        return
    work = np.cumsum(np.asarray(sizes, dtype=np.int64) + 16)
    cuts = [0, *np.searchsorted(work, work[-1] * np.arange(1, threads) / threads).tolist(), B]
    jobs = [compute_pool().submit(solve, a, b) for a, b in itertools.pairwise(cuts) if b > a]
    futures.wait(jobs)  # all of them, also when one fails: none may still be writing when the caller goes on
    for job in jobs:
        job.result()


def fit_range_into(
    X: np.ndarray, w: np.ndarray, logu: np.ndarray, start: int, stop: int, k: int, max_iter: int, n_candidates: int,
    centroids: np.ndarray, weights: np.ndarray,
) -> None:
    """One problem on items ``start:stop`` of X, solved straight into ``centroids`` (1, k, d) and
    ``weights`` (1, k): a single-node refit (a few events' dirty nodes) without batch bookkeeping.

    X, w and logu must be C-contiguous float64 (as :func:`fit_ranges` would make them).
    """
    kernels.fit_nodes(X, w, logu, np.array([start], dtype=np.int64), np.array([stop], dtype=np.int64), k,
                      max(1, n_candidates), max_iter, centroids, weights, np.zeros(1, dtype=np.int64))


def fit_batch(
    X: np.ndarray, w: np.ndarray, keys: np.ndarray, k: int, max_iter: int, salt: np.uint64,
    n_candidates: int | None = None,
) -> BatchResult:
    """Weighted k-means on each of B padded problems (B, m, d); weight-0 items are inert."""
    B, m, d = X.shape
    L = default_candidates(k) if n_candidates is None else n_candidates
    logu = race_log_uniforms(keys, k, salt)
    offsets = np.arange(B + 1, dtype=np.int64) * m
    return fit_ragged(X.reshape(B * m, d), w.reshape(B * m), logu.reshape(k, B * m), offsets, k, max_iter, L)


def fit_one(
    X: np.ndarray, w: np.ndarray, keys: np.ndarray, k: int, max_iter: int, salt: np.uint64, n_candidates: int | None = None
) -> BatchResult:
    """``fit_batch`` for a single unpadded problem."""
    return fit_batch(X[None], w[None], keys[None], k, max_iter, salt, n_candidates)
