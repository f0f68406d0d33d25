"""The API every unlearning model shares: insert, delete, read, verify, persist.

A model is a pure function ``F(S, config)`` of the set ``S`` of ``(id,
vector)`` pairs it holds (DESIGN section 1). Subclasses say how a point is
bucketed, what an insert or a removal dirties, and how to recompute; this
class owns validation (a bad call raises ValueError and changes nothing),
lazy recomputation, the proof-of-erasure check and the state format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from . import state as state_format
from .hashing import id_keys, int_id_keys
from .lloyd import assign
from .pieces import Encoder, Pause, Pieces, joined, no_pause
from .store import PointStore
from .validation import MAX_ID_BYTES, as_partitions, as_points, check_int, normalize_ids


class UnlearningModel(ABC):
    """Base of KMeans, DCKMeans and QKMeans (scikit-learn conventions)."""

    algorithm: ClassVar[str]

    def __init__(self, k: int = 8, seed: int = 0, max_id_bytes: int = MAX_ID_BYTES) -> None:
        self.k = check_int("k", k, 1)
        self.seed = check_int("seed", seed, 0, 2**63)
        self.max_id_bytes = check_int("max_id_bytes", max_id_bytes, 1)
        self._store = PointStore(self._n_buckets())
        self._centroids: np.ndarray | None = None
        self._dirty = False

    # -- what subclasses define ---------------------------------------------------
    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters: the ``config`` of ``F(S, config)``."""

    def _n_buckets(self) -> int:
        return 1

    def _n_partitions(self) -> int:
        return 1

    def _buckets_for(self, ids: Sequence[str], keys: np.ndarray, partitions: np.ndarray | None) -> np.ndarray:
        return np.zeros(len(ids), dtype=np.int64)

    def _partition_of_bucket(self, buckets: np.ndarray) -> np.ndarray:
        return np.zeros(len(buckets), dtype=np.int64)

    def _expect_changes(self, count: int) -> None:
        """Called before a call applies ``count`` point changes (a model may prefer one refit)."""

    @abstractmethod
    def _removed(self, point_id: str, key: np.uint64, vector: np.ndarray, bucket: int) -> None:
        """Called after a point left the store."""

    @abstractmethod
    def _added(self, ids: Sequence[str], keys: np.ndarray, X: np.ndarray, buckets: np.ndarray) -> None:
        """Called after points joined the store."""

    @abstractmethod
    def _recompute(self) -> np.ndarray:
        """Bring every cache up to date; return the (k, d) centroids."""

    @abstractmethod
    def _cache_state(self) -> dict[str, Any]:
        """Learned caches to persist so a restore needs no refit: copies, not views of live state
        (:meth:`capture_state` encodes them later)."""

    def _compact_cache_state(self) -> dict[str, Any]:
        """``_cache_state`` without what a load rebuilds cheaply from the points (default: all of it)."""
        return self._cache_state()

    @abstractmethod
    def _load_cache(self, cache: dict[str, Any]) -> None:
        """Inverse of ``_cache_state``."""

    # -- events ---------------------------------------------------------------
    def insert(self, ids: Iterable[object], X: object, partitions: Sequence[int] | np.ndarray | None = None) -> None:
        """Add points; an id already held gets its vector replaced."""
        given = ids
        ids = normalize_ids(ids, self.max_id_bytes)
        X = as_points(X, len(ids), self._store.n_features)
        parts = as_partitions(partitions, len(ids), self._n_partitions())
        if not ids:
            return
        if isinstance(given, np.ndarray) and given.ndim == 1 and given.dtype.kind in "iu":
            keys = int_id_keys(given, self.seed)  # the keys of their decimal strings, without those
        else:
            keys = id_keys(ids, self.seed)
        buckets = self._buckets_for(ids, keys, parts)
        held = self._store.held_among(ids)
        self._expect_changes(len(ids) + len(held))
        if held:
            for point_id in (i for i in ids if i in held):  # in call order, so Q certifies deterministically
                self._remove_one(point_id)
        self._store.add(ids, keys, X, buckets)
        self._added(ids, keys, X, buckets)

    def delete(self, ids: Iterable[object]) -> int:
        """Forget points; returns how many were held (unknown ids are ignored)."""
        ids = normalize_ids(ids, self.max_id_bytes)
        held = [i for i in ids if i in self._store]
        self._expect_changes(len(held))
        for point_id in held:
            self._remove_one(point_id)
        return len(held)

    def _remove_one(self, point_id: str) -> None:
        vector = self._store.vector(point_id)
        key = self._store.key(point_id)
        bucket = self._store.remove(point_id)
        self._removed(point_id, key, vector, bucket)

    def flush(self) -> None:
        """Recompute whatever pending events dirtied (reads do this lazily)."""
        if self._dirty or self._centroids is None:
            self._centroids = self._recompute()
            self._centroids.setflags(write=False)
            self._dirty = False

    # -- reading ----------------------------------------------------------------
    @property
    def centroids_(self) -> np.ndarray:
        """The model: (k, d) float64 centres, or (0, d) while nothing is held."""
        self.flush()
        assert self._centroids is not None
        return self._centroids

    @property
    def n_points_(self) -> int:
        """How many points the model holds."""
        return len(self._store)

    @property
    def n_features_in_(self) -> int | None:
        """Vector dimension, fixed by the first insert."""
        return self._store.n_features

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, point_id: object) -> bool:
        try:
            return normalize_ids([point_id], self.max_id_bytes)[0] in self._store
        except ValueError:
            return False

    def predict(self, X: object) -> np.ndarray:
        """Index of the nearest centroid for each row of ``X``."""
        C = self.centroids_
        if len(C) == 0:
            raise ValueError("the model holds no points yet")
        rows = np.shape(X)[0] if np.ndim(X) else 0  # ragged or odd input: as_points names the problem
        points = as_points(X, rows, self.n_features_in_)
        return assign(points[None], C[None])[0]

    def loss(self) -> float:
        """Mean squared distance of held points to their nearest centroid."""
        C = self.centroids_
        if len(self._store) == 0 or len(C) == 0:
            return 0.0
        return self.sq_dist_sum(C) / len(self._store)

    def sq_dist_sum(self, C: np.ndarray) -> float:
        """Sum over held points of the squared distance to the nearest row of ``C`` (0 if either is empty).

        The loss's O(n) pass, without copying the vectors: the worker runs it on its loop.
        """
        C = np.asarray(C, dtype=np.float64)
        if C.ndim != 2 or (len(self._store) and C.shape[1] != self._store.n_features):
            raise ValueError(f"C must be (k, {self._store.n_features}) centres, got shape {C.shape}")
        if len(self._store) == 0 or len(C) == 0:
            return 0.0
        return self._store.sq_dist_sum(C)

    def held(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Ids, vectors and partitions of every held point (copies)."""
        ids, X, buckets = self._store.items()
        return ids, X, self._partition_of_bucket(buckets)

    def fresh(self) -> Self:
        """A new, empty model with the same configuration."""
        return type(self)(**self.get_params())

    def refit(self) -> Self:
        """``F(S, config)`` computed from scratch on the points held now."""
        model = self.fresh()
        ids, X, partitions = self.held()
        model.insert(ids, X, partitions if self._n_partitions() > 1 else None)
        model.flush()
        return model

    def verify(self) -> bool:
        """Proof of erasure: a fresh fit on the held points gives bit-identical centroids."""
        if len(self._store) == 0:
            return len(self.centroids_) == 0
        return bool(np.array_equal(self.centroids_, self.refit().centroids_))

    # -- persistence --------------------------------------------------------------
    def to_state(self) -> bytes:
        """Versioned msgpack state (held points and caches; never pickle)."""
        return joined(self.capture_state()())

    def capture_state(self, compact: bool = False) -> Encoder:
        """The state as of now, encoded later: returns the function that encodes it (as :mod:`.pieces`).

        Now: copies of what later changes would touch (the held rows, the
        caches). The function builds :meth:`to_state`'s bytes from those
        copies alone, so it may run on another thread while the model goes
        on changing: a snapshot's consistent cut costs the worker's loop the
        flat copies of its arrays (~7 ms at 120k points; :meth:`PointStore.capture_rows`), not the
        gather and encoding.

        ``compact=True`` leaves out the caches that a load rebuilds cheaply
        from the points (DC's leaf level): the loaded model reads the same,
        and refits them at its first change.
        """
        self.flush()
        rows = self._store.capture_rows()
        params, n_features = self.get_params(), self._store.n_features
        centroids = state_format.pack_array(self.centroids_)
        cache = self._compact_cache_state() if compact else self._cache_state()

        def encode(pause: Pause = no_pause) -> Pieces:
            ids, X, buckets = rows(pause)
            pause()
            body = {
                "algorithm": self.algorithm,
                "params": params,
                "n_features": n_features,
                "ids": ids,  # packed a slice at a time: tolist() of 1M ids holds the GIL for ~50 ms
                "vectors": state_format.pack_array(X, view=True),
                "buckets": state_format.pack_array(buckets, view=True),
                "centroids": centroids,
                "cache": cache,
            }
            return state_format.dump_pieces(body, pause)

        return encode

    @classmethod
    def from_state(cls, blob: bytes) -> Self:
        """Load a state written by ``to_state``, without refitting."""
        body = state_format.loads(blob)
        if body.get("algorithm") != cls.algorithm:
            raise state_format.StateError(f"state holds a {body.get('algorithm')!r} model, not {cls.algorithm!r}")
        try:
            model = cls(**body["params"])
            ids = list(body["ids"])
            X = state_format.unpack_array(body["vectors"]).astype(np.float64)
            buckets = state_format.unpack_array(body["buckets"]).astype(np.int64)
            if len(ids) != len(X) or len(ids) != len(buckets):
                raise state_format.StateError("state ids, vectors and buckets disagree in length")
            ids = normalize_ids(ids, model.max_id_bytes)
            if len(ids):
                X = as_points(X, len(ids), body["n_features"])
                if buckets.min() < 0 or buckets.max() >= model._store.n_buckets:
                    raise state_format.StateError("state bucket numbers out of range")
                keys = id_keys(ids, model.seed)
                # A point's bucket follows from its id (and, for DC, the partition the bucket names).
                if not np.array_equal(buckets, model._buckets_for(ids, keys, model._partition_of_bucket(buckets))):
                    raise state_format.StateError("state bucket numbers do not match the ids")
                model._store.add(ids, keys, X, buckets)
            elif body["n_features"] is not None:
                model._store.n_features = int(body["n_features"])
            model._load_cache(body["cache"])
            centroids = state_format.unpack_array(body["centroids"]).astype(np.float64)
            d = model._store.n_features or 0
            if centroids.shape not in ((model.k, d), (0, d)) or (len(centroids) == 0) != (len(ids) == 0):
                raise state_format.StateError(f"state centroids have shape {centroids.shape}, not ({model.k}, {d})")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, state_format.StateError):
                raise
            raise state_format.StateError(f"invalid model state: {exc}") from exc
        centroids.setflags(write=False)
        model._centroids = centroids
        model._dirty = False
        return model

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"
