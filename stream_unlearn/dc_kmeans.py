"""DC-k-means: divide-and-conquer k-means over a fixed tree (DESIGN section 2).

A point's leaf is fixed by its id: ``partition, h(seed, id) mod n_leaves``.
Each node solves a weighted k-means on its items (a leaf: its points, weight
1; an internal node: its children's centroids weighted by cluster weight).
With ``node_k`` > k the internal levels below each partition's top keep
``node_k`` centres instead: a richer summary for the level above.
Levels group ``fanout`` nodes until one node per partition; the root clusters
the partition nodes. The first level under the root is the Kafka partition,
so workers that own different partitions own disjoint subtrees.

An event dirties one leaf; ``flush`` recomputes dirty nodes level by level,
each level in one call of the compiled node solver (up to four nodes one by
one, straight into the level's arrays), so a batch of events costs one
recompute per dirty node. A single dirty leaf's path up the tree is one
compiled call in all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import kernels
from . import state as state_format
from .base import UnlearningModel
from .hashing import combine, murmur2_partitions, seed_key
from .lloyd import default_candidates, fit_one, fit_ragged, fit_range_into, fit_ranges, in_parallel, race_log_uniforms
from .validation import MAX_ID_BYTES, check_int

#: Items an internal node of the default tree holds at most (fanout * k), unless that takes a fanout
#: under _MIN_FANOUT: one node's refit stays well under a millisecond whatever k is.
_INTERNAL_ITEMS = 320
_MIN_FANOUT = 4
#: A summary node (more than k centres) is seeded by plain k-means++ and refined by a few Lloyd
#: updates: with twice k centres, greedy candidates and convergence buy the level above little
#: (Letter: loss 1.035 against 1.029 fully solved) at twice the cost (k=5, the first internal level
#: of a 1000-event batch: 12 ms fully solved, 6 ms as summaries, 3 ms at node_k = k).
_SUMMARY_CANDIDATES = 1
_SUMMARY_MAX_ITER = 3
#: Up to this many dirty nodes in a level are refit one by one, straight into
#: the level's arrays: a few events' paths up the tree pay no batch bookkeeping (one event's path is
#: one compiled call, :meth:`DCKMeans._fit_path`).
_FEW_NODES = 4


class NodeSolver(NamedTuple):
    """How one level's nodes are solved: centres kept, Lloyd updates, seeding candidates per step
    (in the order the solvers of :mod:`stream_unlearn.lloyd` take them)."""

    k: int
    max_iter: int
    n_candidates: int


class DCKMeans(UnlearningModel):
    """Deletion-efficient k-means by divide and conquer, exact under the contract."""

    algorithm = "dc"

    def __init__(
        self,
        k: int = 8,
        seed: int = 0,
        n_leaves: int = 4096,
        fanout: int | None = None,
        n_partitions: int = 1,
        max_iter: int = 10,
        root_max_iter: int = 30,
        max_id_bytes: int = MAX_ID_BYTES,
        node_k: int | None = None,
    ) -> None:
        self.n_leaves = check_int("n_leaves", n_leaves, 1)
        self.fanout = check_int("fanout", default_fanout(k, self.n_leaves) if fanout is None else fanout, 2)
        self.n_partitions = check_int("n_partitions", n_partitions, 1)
        self.max_iter = check_int("max_iter", max_iter, 1)
        self.root_max_iter = check_int("root_max_iter", root_max_iter, 1)
        super().__init__(k=k, seed=seed, max_id_bytes=max_id_bytes)
        self.node_k = check_int("node_k", self.k if node_k is None else node_k, self.k)
        widths = [self.n_leaves]
        while widths[-1] > 1:
            widths.append(-(-widths[-1] // self.fanout))
        self.level_widths_ = widths
        #: how each level's nodes are solved: k-means at the leaves and each partition's top, summaries between
        self._solvers = [self._solver(top=level in (0, len(widths) - 1)) for level in range(len(widths))]
        #: widths, k, max_iter and candidates per level, as :func:`kernels.fit_path` takes them
        self._path_shape = tuple(np.array(v, dtype=np.int64) for v in (widths, *zip(*self._solvers)))
        self._dirty_nodes: list[set[int]] = [set() for _ in widths]
        self._node_centroids: list[np.ndarray | None] = [None] * len(widths)
        self._node_weights: list[np.ndarray | None] = [None] * len(widths)
        self._level_logu: dict[int, np.ndarray] = {}
        self._leaf_salt = seed_key(self.seed, 100)
        #: loaded without the leaf level (see _compact_cache_state): the levels above are valid
        self._leaves_pending = False
        self._path_views_cache: tuple[tuple[np.ndarray, ...], ...] | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "k": self.k, "seed": self.seed, "n_leaves": self.n_leaves, "fanout": self.fanout,
            "n_partitions": self.n_partitions, "max_iter": self.max_iter,
            "root_max_iter": self.root_max_iter, "max_id_bytes": self.max_id_bytes, "node_k": self.node_k,
        }

    def _solver(self, top: bool) -> NodeSolver:
        """k-means for a leaf or a partition's top, and for every node when node_k == k (the paper's tree);
        with node_k > k, the levels between keep summaries of node_k centres."""
        if top or self.node_k == self.k:
            return NodeSolver(self.k, self.max_iter, default_candidates(self.k))
        return NodeSolver(self.node_k, min(self.max_iter, _SUMMARY_MAX_ITER), _SUMMARY_CANDIDATES)

    @property
    def level_k_(self) -> list[int]:
        """Centres each node of a level keeps, leaves first."""
        return [solver.k for solver in self._solvers]

    # -- bucketing ------------------------------------------------------------------
    def _n_buckets(self) -> int:
        return self.n_partitions * self.n_leaves

    def _n_partitions(self) -> int:
        return self.n_partitions

    def _buckets_for(self, ids: Sequence[str], keys: np.ndarray, partitions: np.ndarray | None) -> np.ndarray:
        if partitions is None:
            if self.n_partitions == 1:
                partitions = np.zeros(len(ids), dtype=np.int64)
            else:
                partitions = murmur2_partitions(ids, self.n_partitions)
        leaf = (keys % np.uint64(self.n_leaves)).astype(np.int64)
        return partitions * self.n_leaves + leaf

    def _partition_of_bucket(self, buckets: np.ndarray) -> np.ndarray:
        return buckets // self.n_leaves

    # -- events -----------------------------------------------------------------------
    def _added(self, ids: Sequence[str], keys: np.ndarray, X: np.ndarray, buckets: np.ndarray) -> None:
        if 8 * len(buckets) >= self._n_buckets():  # many: count instead of sorting (100k points: 0.3 ms, not 3)
            touched = np.flatnonzero(np.bincount(buckets, minlength=self._n_buckets()))
        else:  # few: a sort of a handful beats a pass over every bucket
            touched = np.unique(buckets)
        self._dirty_nodes[0].update(touched.tolist())
        self._dirty = True

    def _removed(self, point_id: str, key: np.uint64, vector: np.ndarray, bucket: int) -> None:
        self._dirty_nodes[0].add(bucket)
        self._dirty = True

    # -- recomputation ------------------------------------------------------------------
    def _ensure_arrays(self) -> None:
        if self._node_centroids[0] is not None:
            return
        d = self._store.n_features or 0
        for level, (width, k) in enumerate(zip(self.level_widths_, self.level_k_)):
            self._node_centroids[level] = np.zeros((self.n_partitions * width, k, d))
            self._node_weights[level] = np.zeros((self.n_partitions * width, k))

    def _recompute(self) -> np.ndarray:
        if self._store.n_features is None:
            return np.empty((0, 0))
        self._ensure_arrays()
        if len(self._dirty_nodes[0]) == 1 and len(self.level_widths_) > 1 and not any(self._dirty_nodes[1:]):
            self._fit_path(self._dirty_nodes[0].pop())  # one event's path up the tree
        else:
            self._fit_leaves(sorted(self._dirty_nodes[0]))
            self._dirty_nodes[0].clear()
            for level in range(1, len(self.level_widths_)):
                self._fit_internal(level, sorted(self._dirty_nodes[level]))
                self._dirty_nodes[level].clear()
        self._leaves_pending = False
        return self._fit_root()

    def _fit_path(self, leaf: int) -> None:
        """Recompute one leaf and its ancestors in one compiled call: a single event's flush pays no
        per-level bookkeeping (Shuttle: ~50 of a delete's ~450 us)."""
        keys, slots = self._store.bucket_in_order(leaf)
        kernels.fit_path(
            self._store.vector_rows(), slots, race_log_uniforms(keys, self.k, self._leaf_salt), leaf,
            *self._path_views(), *self._path_shape, self.fanout,
        )

    def _path_views(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """The level arrays as :func:`kernels.fit_path` takes them, made again only when a level array
        was replaced (a load): the views hold the arrays, so an unchanged identity is the same array."""
        C, W = tuple(self._node_centroids), tuple(self._node_weights)
        cached = self._path_views_cache
        if cached is not None and all(a is b for a, b in zip(cached[0] + cached[1], C + W)):
            return cached
        d = self._store.n_features
        items = tuple(c.reshape(-1, d) for c in C)  # type: ignore[union-attr]
        item_weights = tuple(w.reshape(-1) for w in W)  # type: ignore[union-attr]
        # views, not copies: fit_path reads a level's items right after writing its nodes
        assert all(np.shares_memory(v, a) for v, a in zip(items + item_weights, C + W))
        level_logu = tuple(self._item_log_uniforms(level) for level in range(1, len(self.level_widths_)))
        self._path_views_cache = (C, W, items, item_weights, level_logu)  # type: ignore[assignment]
        return self._path_views_cache  # type: ignore[return-value]

    def _mark_parents(self, level: int, nodes: list[int]) -> None:
        if level + 1 < len(self.level_widths_):
            width, parent_width = self.level_widths_[level], self.level_widths_[level + 1]
            self._dirty_nodes[level + 1].update(
                (n // width) * parent_width + (n % width) // self.fanout for n in nodes
            )

    def _fit_leaves(self, leaves: list[int]) -> None:
        """Recompute dirty leaves in one ragged batch (each leaf's points in canonical order)."""
        if not leaves:
            return
        C, W = self._node_centroids[0], self._node_weights[0]
        assert C is not None and W is not None
        dirty = np.asarray(leaves, dtype=np.int64)
        holds = self._store.bucket_sizes[dirty] > 0
        held = dirty[holds]
        if not holds.all():
            empty = dirty[~holds]
            C[empty], W[empty] = 0.0, 0.0
        if len(held) == 1:
            leaf = int(held[0])
            keys, X, _ = self._store.gather(held)
            fit_range_into(X, np.ones(len(keys)), race_log_uniforms(keys, self.k, self._leaf_salt), 0, len(keys),
                           *self._solvers[0], C[leaf : leaf + 1], W[leaf : leaf + 1])
        elif len(held):
            self._fit_held_leaves(held, C, W)
        self._mark_parents(0, leaves)

    def _fit_held_leaves(self, held: np.ndarray, C: np.ndarray, W: np.ndarray) -> None:
        """Refit many non-empty leaves into ``C`` and ``W``, each thread a run of them from its canonical
        order and race uniforms to its solve (all release the GIL: at 100k points the order and the
        uniforms alone were ~15 ms of a fit on one core). The solver reads each leaf's rows from the store:
        no gathered copy of them all."""
        V = self._store.vector_rows()

        def solve(a: int, b: int) -> None:
            run = held[a:b]
            keys, slots, sizes = self._store.gather_slots(run)
            offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
            result = fit_ragged(V, np.ones(len(keys)), race_log_uniforms(keys, self.k, self._leaf_salt), offsets,
                                *self._solvers[0], rows=slots, parallel=False)
            C[run], W[run] = result.centroids, result.weights

        in_parallel(self._store.bucket_sizes[held], solve)

    def _item_log_uniforms(self, level: int) -> np.ndarray:
        """Race log-uniforms (level k, child_width * child k) of the items under one partition at ``level``.

        An internal node's items are its children's (child, cluster) slots,
        laid out as the child level's rows, so they are fixed by the tree
        shape and computed once: item ``r * child_k + c`` is cluster c of child row r.
        """
        if level not in self._level_logu:
            slots = np.arange(self.level_widths_[level - 1] * self._solvers[level - 1].k, dtype=np.uint64)
            keys = combine(seed_key(self.seed, 200 + level), slots)
            self._level_logu[level] = race_log_uniforms(keys, self._solvers[level].k, seed_key(self.seed, 100 + level))
        return self._level_logu[level]

    def _fit_internal(self, level: int, nodes: list[int]) -> None:
        """Recompute dirty internal nodes of one level, straight from the child level's arrays."""
        if not nodes:
            return
        C, W = self._node_centroids[level], self._node_weights[level]
        assert C is not None and W is not None
        width, child_width = self.level_widths_[level], self.level_widths_[level - 1]
        f, solver, child_k = self.fanout, self._solvers[level], self._solvers[level - 1].k
        logu = self._item_log_uniforms(level)
        if len(nodes) <= _FEW_NODES:  # in Python ints: numpy's per-call costs add up on a few events' paths
            for node in nodes:
                p, first = divmod(node, width)
                first *= f
                fit_range_into(*self._child_items(level, p), logu, first * child_k,
                               min(first + f, child_width) * child_k, *solver, C[node : node + 1],
                               W[node : node + 1])
        else:
            node_ids = np.asarray(nodes, dtype=np.int64)
            partitions, local = np.divmod(node_ids, width)
            first = local * f
            starts, stops = first * child_k, np.minimum(first + f, child_width) * child_k
            for p in np.unique(partitions).tolist():
                mine = partitions == p
                result = fit_ranges(*self._child_items(level, p), logu, starts[mine], stops[mine], *solver)
                C[node_ids[mine]], W[node_ids[mine]] = result.centroids, result.weights
        self._mark_parents(level, nodes)

    def _child_items(self, level: int, partition: int) -> tuple[np.ndarray, np.ndarray]:
        """The items (child_width * child k, d) and weights under one partition at ``level``: views of the child
        level."""
        child_C, child_W = self._node_centroids[level - 1], self._node_weights[level - 1]
        assert child_C is not None and child_W is not None
        child_width, child_k = self.level_widths_[level - 1], self._solvers[level - 1].k
        rows = slice(partition * child_width, (partition + 1) * child_width)
        return (child_C[rows].reshape(child_width * child_k, child_C.shape[2]),
                child_W[rows].reshape(child_width * child_k))

    def partition_summaries(self) -> tuple[np.ndarray, np.ndarray]:
        """Centroids (P, k, d) and weights (P, k) of each partition's subtree root."""
        if self._node_centroids[-1] is None and any(self._dirty_nodes):  # loaded without its tree
            self._dirty = True
        self.flush()
        top_C, top_W = self._node_centroids[-1], self._node_weights[-1]
        assert top_C is not None and top_W is not None
        return top_C.copy(), top_W.copy()

    def partition_sizes(self) -> np.ndarray:
        """Points held per partition (P,)."""
        return self._store.bucket_sizes.reshape(self.n_partitions, self.n_leaves).sum(axis=1)

    def _fit_root(self) -> np.ndarray:
        top_C, top_W = self._node_centroids[-1], self._node_weights[-1]
        assert top_C is not None and top_W is not None
        return merge_partitions(top_C, top_W, self.k, self.seed, self.root_max_iter)[0]

    def _cache_state(self) -> dict[str, Any]:
        if self._leaves_pending:  # loaded from a compact state and unchanged since: refit the leaves now
            self._dirty = True
            self.flush()
        if self._store.n_features is not None:
            self._ensure_arrays()
        return self._pack_levels(0)

    def _compact_cache_state(self) -> dict[str, Any]:
        """The tree above the leaves: the leaf level (n_leaves * k * d floats, 4 MB at the defaults,
        whatever the points) is refit from the points at the first change after a load."""
        if len(self.level_widths_) == 1 or self._store.n_features is None:
            return self._cache_state()
        self._ensure_arrays()
        return self._pack_levels(1)

    def _pack_levels(self, first: int) -> dict[str, Any]:
        cache: dict[str, Any] = {
            "centroids": [state_format.pack_array(c) for c in self._node_centroids[first:] if c is not None],
            "weights": [state_format.pack_array(w) for w in self._node_weights[first:] if w is not None],
        }
        if first:
            cache["first_level"] = first
        return cache

    def _load_cache(self, cache: dict[str, Any]) -> None:
        centroids = [state_format.unpack_array(c) for c in cache.get("centroids", [])]
        weights = [state_format.unpack_array(w) for w in cache.get("weights", [])]
        first = cache.get("first_level", 0)
        if first not in (0, 1) or (first and len(self.level_widths_) == 1):
            raise state_format.StateError(f"DC tree cache starts at level {first!r}")
        if centroids or first:
            levels = range(first, len(self.level_widths_))
            if len(centroids) != len(levels) or len(weights) != len(centroids):
                raise state_format.StateError("DC tree cache does not match the tree shape")
            d = self._store.n_features or 0
            for C, W, level in zip(centroids, weights, levels):
                rows, k = self.n_partitions * self.level_widths_[level], self.level_k_[level]
                if C.shape != (rows, k, d) or W.shape != (rows, k):
                    raise state_format.StateError(f"DC tree cache level {level} has the wrong shape")
            self._node_centroids[first:] = [C.astype(np.float64) for C in centroids]
            self._node_weights[first:] = [W.astype(np.float64) for W in weights]
            if not first:
                return
            rows = self.n_partitions * self.level_widths_[0]
            self._node_centroids[0], self._node_weights[0] = np.zeros((rows, self.k, d)), np.zeros((rows, self.k))
            self._leaves_pending = True
        # No leaves (or no tree): every held leaf is refit, with its ancestors, at the next change.
        self._dirty_nodes[0].update(np.flatnonzero(self._store.bucket_sizes).tolist())


def default_fanout(k: object, n_leaves: object = 4096) -> int:
    """Children per internal node: the fewest levels over ``n_leaves`` whose nodes hold at most
    320 items (fanout * k; past k = 80, 4 children), with the smallest fanout that needs no more levels.

    Each level summarizes the one below, so fewer levels lose less; an event
    refits one node per level, at a cost growing like k^2 * fanout, so an even
    spread refits fewer items. ``320 // k`` alone could leave a top level of
    3 children: Shuttle (k=7) got 4096 -> 92 -> 3 -> 1, 651 items refit per
    event, where 4096 -> 256 -> 16 -> 1 refits 336 at the same depth.
    """
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in (k, n_leaves)):
        return 2  # the bad value itself is refused by the constructor with a clear error
    levels = 1
    while True:
        fanout = _smallest_root(int(n_leaves), levels)
        if fanout * int(k) <= _INTERNAL_ITEMS or fanout <= _MIN_FANOUT:
            return max(fanout, 2)
        levels += 1


def _smallest_root(n: int, levels: int) -> int:
    """The smallest f with f ** levels >= n."""
    f = max(1, round(n ** (1.0 / levels)))
    while f ** levels < n:
        f += 1
    while f > 1 and (f - 1) ** levels >= n:
        f -= 1
    return f


def merge_partitions(centroids: np.ndarray, weights: np.ndarray, k: int, seed: int, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """The global root from partition summaries (P, k, d) and (P, k).

    A pure function of the summaries, so any worker or reader that holds the
    same summaries computes the same global model.
    """
    P, _, d = centroids.shape
    if P == 1:
        # One partition: the root's items are k centres already, so they ARE the root. (Weights are
        # sums of positive weights or 0: any() is "some > 0", without a temporary: every flush asks.)
        return (centroids[0].copy(), weights[0].copy()) if weights.any() else (np.empty((0, d)), np.zeros(0))
    keys = combine(seed_key(seed, 300), np.arange(P * k, dtype=np.uint64))
    w = weights.reshape(P * k)
    if not np.any(w > 0):
        return np.empty((0, d)), np.zeros(0)
    result = fit_one(centroids.reshape(P * k, d), w, keys, k, max_iter, seed_key(seed, 301))
    return result.centroids[0], result.weights[0]
