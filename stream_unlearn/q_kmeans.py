"""Q-k-means: quantized Lloyd whose deletions are certified (DESIGN section 3).

After each Lloyd update every balance-corrected centroid is snapped to a grid
of spacing ``eps`` shifted by a random phase (one per model, so quantized
Lloyd can reach an exact fixpoint and stop there: fewer iterations to
certify, and a cheaper refit). The model keeps each
iteration's exact cluster sums, so removing (or adding) a point costs
O(T k d): redo its effect on the sums and check that every snapped centroid,
and the seeding, come out the same with room to spare for rounding. Then the
model is unchanged and still bit-identical to a fresh fit; otherwise it
refits. ``eps`` is in data units: scale features first (see
``stream_unlearn.scaling``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import kernels
from . import state as state_format
from .base import UnlearningModel
from .hashing import seed_key
from .lloyd import (
    all_rows,
    assign_cluster_sums,
    cluster_sums_of_rows,
    default_candidates,
    race_log_uniforms,
    race_log_uniforms_at,
    race_seeds,
)
from .lloyd_labels import LabelBounds, LloydLabels
from .quantize import corrected_centroids, phase, snap
from .validation import MAX_ID_BYTES, check_int, check_real

_BUCKETS = 64
#: Certify a batch point by point only while it has at most max(_BULK_MIN, n / this) changes,
#: and at most _RUNS_PER_CALL times the changes that one certificate failure has come with so far.
_CERTIFY_VS_REFIT = 8
_BULK_MIN = 256
_RUNS_PER_CALL = 2
#: After a failed Lloyd certificate, keep certifying the seeding for the rest of the call only
#: while at most n / this changes remain: a seeding certificate costs ~8 us of Python, a fresh
#: seeding ~0.3 us per point (k=5, d=25). Either way the model is exact.
_SEEDING_CERTS_VS_SEEDING = 32
_ARRAYS = ("centres", "sums", "counts", "peak_counts", "max_abs", "candidate_vectors", "potentials", "chosen",
           "last_scores", "scores", "peaks")
_U = 2.0**-53
#: The arrays of QKMeans._stale, as kernels.q_edit_stale takes them.
_STALE = ("starts", "sums", "counts", "peak_counts")


class QKMeans(UnlearningModel):
    """Quantized k-means with O(T k d) certified inserts and deletes."""

    algorithm = "q"

    def __init__(
        self,
        k: int = 8,
        seed: int = 0,
        eps: float = 0.5,
        gamma: float = 0.2,
        max_iter: int = 10,
        n_candidates: int | None = None,
        max_id_bytes: int = MAX_ID_BYTES,
    ) -> None:
        self.eps = check_real("eps", eps, 0.0, sys.float_info.max, low_open=True)
        self.gamma = check_real("gamma", gamma, 0.0, 1.0)
        self.max_iter = check_int("max_iter", max_iter, 1)
        self.n_candidates = None if n_candidates is None else check_int("n_candidates", n_candidates, 1)
        super().__init__(k=k, seed=seed, max_id_bytes=max_id_bytes)
        self.certificates_passed_ = 0
        self.certificates_failed_ = 0
        self.refits_ = 0
        self.lloyd_refits_ = 0
        #: Lloyd updates of refits that edited their dropped sums instead of summing every point
        self.edited_updates_ = 0
        self._changes_left = 0  # of the insert or delete call being applied
        self._fitted = False
        self._seeding_kept = False  # not fitted, but the seeding is certified for the points held
        #: a certified delete since the full fit: the cache carries traces of a point no longer held
        self._forgot_since_fit = False
        self._n_model = 0
        self._ops = 0
        self._candidate_slots: list[list[str | None]] = []  # each step's runners' ids, by slot
        self._candidate_ids: set[str] = set()  # all of them: a delete of one cannot be certified
        self._arrays: dict[str, np.ndarray] = {}
        self._theta: np.ndarray | None = None
        self.n_iter_ = 0
        self._race_salt = seed_key(self.seed, 2)
        self._no_logu = np.zeros(self.k)
        self._none_leaving = np.full(self.k, -1, dtype=np.int64)
        self._lloyd_labels = LloydLabels()
        #: The statistics of the Lloyd updates a failed certificate dropped (from the first that failed
        #: on), with every change since taken in as those updates labelled it: a refit edits them by the
        #: points whose labels moved instead of summing every point again (:meth:`_edited_update`).
        #: In memory only, until that refit.
        self._stale: dict[str, Any] | None = None

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed, "eps": self.eps, "gamma": self.gamma, "max_iter": self.max_iter,
                "n_candidates": self.n_candidates, "max_id_bytes": self.max_id_bytes}

    @property
    def certificate_pass_rate_(self) -> float:
        """Share of certificates that passed (NaN before any was tried)."""
        tried = self.certificates_passed_ + self.certificates_failed_
        return self.certificates_passed_ / tried if tried else float("nan")

    def _n_buckets(self) -> int:
        # Buckets only group rows in the store (Q uses one canonical order of all points); kept at 64
        # so that states of earlier versions, which stored these bucket numbers, still load.
        return _BUCKETS

    def _buckets_for(self, ids: Sequence[str], keys: np.ndarray, partitions: np.ndarray | None) -> np.ndarray:
        return (keys % np.uint64(_BUCKETS)).astype(np.int64)

    def _L(self) -> int:
        return default_candidates(self.k) if self.n_candidates is None else self.n_candidates

    # -- events ----------------------------------------------------------------------
    def _expect_changes(self, count: int) -> None:
        self._changes_left = count
        # Changes per failed certificate so far: a call much longer than that will almost surely
        # refit anyway, after paying for the certificates up to the failure (and the seeding
        # certificates after it).
        failed = self.certificates_failed_
        run = (self.certificates_passed_ + failed) / failed if failed else math.inf
        bulk = max(_BULK_MIN, min(self._n_model // _CERTIFY_VS_REFIT, _RUNS_PER_CALL * run))
        if (self._fitted or self._seeding_kept) and count > bulk:
            # A certificate costs ~15 us, a refit ~1-4 us per point: for a bulk
            # change refitting is cheaper, and gives the same F(S).
            self._fitted = self._seeding_kept = False
            self._dirty = True

    def _added(self, ids: Sequence[str], keys: np.ndarray, X: np.ndarray, buckets: np.ndarray) -> None:
        self._lloyd_labels.inserted(keys)
        if not (self._fitted or self._seeding_kept):
            self._dirty = True
            return
        # (n, k): one numpy pass for the call, each point's row contiguous for its certificate
        logu = np.ascontiguousarray(race_log_uniforms(keys, self.k, self._race_salt).T)
        X = np.ascontiguousarray(X, dtype=np.float64)
        i = 0
        while i < len(ids):
            i += self._certify_run(X[i:], logu[i:])
            if i < len(ids):  # a certificate failed, or the point joins a seeding race: one at a time
                self._certify(X[i], ids[i], +1, logu[i], (ids, i + 1))
                i += 1

    def _certify_run(self, X: np.ndarray, logu: np.ndarray) -> int:
        """Certify inserts in one compiled loop while they pass (the common case); returns how many did.

        Both certificates, as :meth:`_certify`: the seeding's and Lloyd's on
        the updates kept (all of them when fitted). The statistics are edited
        in copies, then swapped in: a snapshot being written may still hold
        the arrays it captured.
        """
        a = self._arrays
        if not (self._fitted or self._seeding_kept) or a["fallback"]:
            return 0
        edited = {name: a[name].copy() for name in ("potentials", "peaks", "sums", "counts", "peak_counts", "max_abs")}
        passed = int(kernels.q_certify_inserts(
            X, logu, a["candidate_vectors"], a["chosen"], a["last_scores"], a["scores"], self._theta, self.eps,
            self.gamma, self._n_model, self._ops, edited["potentials"], edited["peaks"], a["centres"], edited["sums"],
            edited["counts"], edited["peak_counts"], edited["max_abs"]))
        if passed:
            a.update(edited)
            self._edit_stale(X[:passed], +1)
            self._n_model += passed
            self._ops += passed
            self._changes_left -= passed
            if self._fitted:
                self.certificates_passed_ += passed
        return passed

    def _removed(self, point_id: str, key: np.uint64, vector: np.ndarray, bucket: int) -> None:
        self._certify(vector, point_id, -1, None)

    def _certify(self, x: np.ndarray, point_id: str, sign: int, logu: np.ndarray | None,
                 call: tuple[Sequence[str], int] = ((), 0)) -> None:
        """Apply one insert (+1, with its race log-uniforms) or delete (-1) without refitting if provably exact.

        ``call`` = (ids, i): the insert call's ids from i on are stored but not in the model yet.
        When only the Lloyd certificate fails, at some update, the seeding and
        the updates before that one still hold: they are kept, and certified
        change after change, so that the refit can start from the last of them
        (:meth:`_refit_lloyd`); a failed seeding certificate drops them all.
        """
        self._changes_left -= 1
        if not (self._fitted or self._seeding_kept):
            self._dirty = True
            return
        seeding = self._seeding_after(x, point_id, sign, logu, call)
        if seeding is None:
            if self._fitted:
                self.certificates_failed_ += 1
            self._fitted = self._seeding_kept = False
            self._dirty = True
            return
        lloyd = self._lloyd_after(x, sign)
        if lloyd[0] == len(self._arrays["sums"]):
            if self._fitted:
                self.certificates_passed_ += 1
        else:
            if self._fitted:
                self.certificates_failed_ += 1
            self._fitted, self._dirty = False, True
            self._seeding_kept = self._changes_left * _SEEDING_CERTS_VS_SEEDING <= self._n_model
            if not self._seeding_kept:
                return
        self._apply_lloyd(x, sign, lloyd)
        self._arrays["potentials"], self._arrays["peaks"], reseats = seeding
        self._forgot_since_fit |= sign < 0
        for reseat in reseats:
            self._reseat_runner(*reseat)

    def _seeding_after(self, x: np.ndarray, point_id: str, sign: int, logu: np.ndarray | None,
                       call: tuple[Sequence[str], int]) -> tuple[np.ndarray, np.ndarray, list[tuple]] | None:
        """The seeding potentials and their peaks with the change applied, and the runners that change
        seats (:meth:`_reseat_runner`'s arguments), if the seeding's winners provably stay; else None.

        A newcomer may join races (pushing each one's last runner out); a
        deleted runner leaves its races, its successor taking the last seat.
        Either way the one who comes in must provably lose.
        """
        a = self._arrays
        leaving = self._leaving_slots(point_id) if sign < 0 else self._none_leaving
        if a["fallback"] or leaving is None:
            return None
        x = np.ascontiguousarray(x, dtype=np.float64)
        potentials = np.empty_like(a["potentials"])
        rank, key, peaks = np.empty(self.k, dtype=np.int64), np.empty(self.k), np.empty(self.k)
        scale = float(self._n_model + self._ops + 2)
        holds = kernels.q_seeding_certificate(
            x, self._no_logu if logu is None else np.ascontiguousarray(logu), float(sign), leaving,
            a["candidate_vectors"], a["chosen"], a["potentials"], a["last_scores"], scale, potentials, a["scores"],
            rank, key, a["peaks"], peaks)
        if not holds:
            return None
        last = potentials.shape[1] - 1
        reseats = []
        # (k-long rows: a list beats numpy's per-call cost, ~6 us of a ~55 us certified delete each)
        for j, at in enumerate(rank.tolist()):  # x comes in at its rank; the last runner goes
            if at < 0:
                continue
            cost = self._entry_cost(x, j, call)
            if (top := self._loses(potentials[j], last, cost, scale, j)) is None:
                return None
            reseats.append((j, last, at, point_id, x, float(key[j]), cost))
            peaks[j] = top
        for j, seat in enumerate(leaving.tolist()):  # x goes; the best of the rest comes in last
            if seat < 0:
                continue
            successor = self._race_successor(j)
            if successor is None or (top := self._loses(potentials[j], seat, successor[3], scale, j)) is None:
                return None
            reseats.append((j, seat, last, *successor))
            peaks[j] = top
        return potentials, peaks, reseats

    def _loses(self, potentials: np.ndarray, out: int, cost: float, scale: float, step: int) -> float | None:
        """If a runner of ``cost`` replacing runner ``out`` of ``step`` (``potentials``: the step's costs)
        provably loses to the winner, with room for rounding: the step's new cost peak; else None."""
        winner = int(self._arrays["chosen"][step])
        kept = {s: float(p) for s, p in enumerate(potentials.tolist()) if s != out and np.isfinite(p)}
        others = [p for s, p in kept.items() if s != winner] + [cost]
        top = max(abs(p) for p in [*kept.values(), cost, float(self._arrays["peaks"][step])])
        return top if min(others) - kept[winner] > 4.0 * scale * _U * top else None

    def _leaving_slots(self, point_id: str) -> np.ndarray | None:
        """Per seeding step, the slot of deleted ``point_id`` among its runners (-1: not one); None if it
        won a step, or ran in a race with no spare runner (then the seeding changes)."""
        if point_id not in self._candidate_ids:
            return self._none_leaving
        a = self._arrays
        leaving = self._none_leaving.copy()
        for j, runners in enumerate(self._candidate_slots):
            if point_id in runners:
                slot = runners.index(point_id)
                if slot == a["chosen"][j] or a["last_scores"][j] == -np.inf:
                    return None
                leaving[j] = slot
        return leaving

    def _race_successor(self, step: int) -> tuple[str, np.ndarray, float, float] | None:
        """The held point that takes a leaving runner's seat in ``step``'s race (id, vector, race key,
        cost), as a fresh fit would rank it: one pass over the points; None if none or a tie."""
        a = self._arrays
        V, slots = self._store.held_rows()
        logu = race_log_uniforms_at(self._store.keys_at(slots), self.k, self._race_salt, step)
        t, key, above, tie = kernels.q_race_entrant(V, slots, logu, self._seeds_before(step),
                                                    float(a["last_scores"][step]))
        if t < 0 or tie or above != a["potentials"].shape[1] - 1:
            return None  # no point to take the seat, or the canonical order would decide between two
        x = V[slots[t]].copy()
        return str(self._store.ids_at(slots[t : t + 1])[0]), x, float(key), self._entry_cost(x, step, ((), 0))

    def _set_candidates(self, runners: list[list[str | None]]) -> None:
        self._candidate_slots = runners
        self._candidate_ids = {i for row in runners for i in row if i is not None}

    def _entry_cost(self, x: np.ndarray, step: int, call: tuple[Sequence[str], int]) -> float:
        """Newcomer x's seeding cost as a runner of ``step``: one pass over the points of the model."""
        V, slots = self._store.held_rows()
        skip = np.zeros(len(V), dtype=np.bool_)
        ids, first = call
        skip[[self._store.slot(i) for i in ids[first:]]] = True
        return float(kernels.q_entry_cost(V, slots, skip, x, self._seeds_before(step)))

    def _seeds_before(self, step: int) -> np.ndarray:
        """The seeds (step, d) the seeding chose before ``step``."""
        a = self._arrays
        return np.ascontiguousarray(a["candidate_vectors"][np.arange(step), a["chosen"][:step]])

    def _reseat_runner(self, step: int, out: int, seat: int, runner_id: str, x: np.ndarray, key: float,
                       cost: float) -> None:
        """In ``step``'s race, runner ``out`` leaves and ``runner_id`` (vector, race key, cost) takes seat
        ``seat`` of the runners that stay, the race order kept; neither is the winner. The rows are edited
        in copies: a snapshot being written may still hold the arrays it captured."""
        a = self._arrays
        for name, value in (("candidate_vectors", x), ("potentials", cost), ("scores", key)):
            row = a[name] = a[name].copy()
            row[step] = np.insert(np.delete(row[step], out, axis=0), seat, value, axis=0)
        chosen = a["chosen"] = a["chosen"].copy()
        winner = int(chosen[step]) - (out < chosen[step])
        chosen[step] = winner + (seat <= winner)
        last_scores = a["last_scores"] = a["last_scores"].copy()
        last_scores[step] = a["scores"][step, -1]
        runners = self._candidate_slots[step]
        runners.pop(out)
        runners.insert(seat, runner_id)
        self._set_candidates(self._candidate_slots)

    def _lloyd_after(self, x: np.ndarray, sign: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """How many of the kept Lloyd updates, from the first, provably keep their snapped centres with
        the change applied (all: it is certified), and their sums, counts and largest |x| with the change."""
        a = self._arrays
        sums, counts = np.empty_like(a["sums"]), np.empty_like(a["counts"])
        max_abs = np.maximum(a["max_abs"], np.abs(x)) if sign > 0 else a["max_abs"]
        n = self._n_model + sign
        held = kernels.q_lloyd_certificate(
            np.ascontiguousarray(x, dtype=np.float64), float(sign), a["centres"], a["sums"], a["counts"],
            a["peak_counts"], self._theta, self.eps, self.gamma, n, max_abs,
            max(n, self._n_model) + self._ops + 1, sums, counts)
        return held, sums, counts, max_abs

    def _apply_lloyd(self, x: np.ndarray, sign: int, lloyd: tuple[int, np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Take change ``x`` into the Lloyd statistics (:meth:`_lloyd_after`'s), dropping the updates from
        the first that failed on: the ones before keep edited sums, as after a certified change; the
        dropped ones go to :attr:`_stale`, the change taken in."""
        a = self._arrays
        held, sums, counts, max_abs = lloyd
        T = len(a["sums"])
        if self._stale is not None or held < T:  # (a certified change, the common case, needs neither)
            x = np.ascontiguousarray(x, dtype=np.float64).reshape(1, -1)
            self._edit_stale(x, sign)
        if held < T:  # update `held` took x in already (the certificate's edit), the later ones not yet
            dropped = {"starts": a["centres"][held:T], "sums": sums[held:T].copy(), "counts": counts[held:T].copy(),
                       "peak_counts": np.maximum(a["peak_counts"][held:T], counts[held:T])}
            kernels.q_edit_stale(x, float(sign), *(dropped[name][1:] for name in _STALE))
            if self._stale is not None:  # dropped before: those updates come after these
                dropped = {name: np.concatenate([dropped[name], self._stale[name]]) for name in _STALE}
            self._stale = {"first": held, **dropped}
        a["centres"] = a["centres"][: held + 1]
        a["sums"], a["counts"], a["max_abs"] = sums[:held], counts[:held], max_abs
        a["peak_counts"] = np.maximum(a["peak_counts"][:held], a["counts"])
        self._n_model += sign
        self._ops += 1

    # -- fitting ------------------------------------------------------------------------
    def _recompute(self) -> np.ndarray:
        d = self._store.n_features or 0
        if len(self._store) == 0:
            self._fitted = self._seeding_kept = False
            self._n_model = 0
            return np.empty((0, d))
        if self._seeding_kept or not self._fitted:
            keys, slots = self._store.canonical_slots()
            V = self._store.vector_rows()
            if self._seeding_kept:  # read in place: the updates left after a failed certificate touch few rows
                self._refit_lloyd(keys, V, slots)
            else:  # the seeding reads every row many times: in canonical order, one copy
                X, max_abs = np.empty((len(slots), V.shape[1])), np.empty(V.shape[1])
                kernels.take_rows_abs_max(V, slots, X, max_abs)
                self._fit(keys, slots, X, max_abs)
        return self._arrays["centres"][-1].copy()

    def _fit(self, keys: np.ndarray, slots: np.ndarray, X: np.ndarray, max_abs: np.ndarray) -> None:
        """Seed, then quantized Lloyd until the snapped centres repeat or ``max_iter``.

        ``X`` holds the points in canonical order, ``slots`` their rows in
        the store, ``max_abs`` the largest ``|X|`` per feature.
        """
        n, d = X.shape
        k = self.k
        w = np.ones(n)
        self._stale = None  # dropped with the seeding: the changes since were not all taken into it
        seeds = race_seeds(X[None], w[None], keys[None], k, self._race_salt, self._L())
        self._theta = phase(self.seed, d)
        cand = seeds.candidates[0]
        runner_ids = self._store.ids_at(slots[np.maximum(cand, 0)]).tolist()
        self._set_candidates([[pid if i >= 0 else None for i, pid in zip(row, id_row)]
                              for row, id_row in zip(cand.tolist(), runner_ids)])
        # With fewer runners than L any newcomer would join the race: never certify then.
        last = np.where(cand[:, -1] >= 0, seeds.scores[0][:, -1], -np.inf)
        self._arrays = {
            "candidate_vectors": X[np.maximum(cand, 0)], "potentials": seeds.potentials[0],
            "chosen": np.argmax(cand == seeds.index[0][:, None], axis=1), "last_scores": last,
            "scores": seeds.scores[0], "peaks": _largest_finite(seeds.potentials[0]),
            "fallback": np.array(bool(seeds.fallback.any())),
        }
        self._ops = 0
        self._forgot_since_fit = False
        # the seeding's nearest seeds are Lloyd's first labels (unless a step chose no seed)
        first_labels = seeds.nearest[0] if (seeds.index[0] >= 0).all() else None
        self._lloyd(keys, X, all_rows(X), X[seeds.index[0]][None], max_abs, first_labels)
        self.refits_ += 1

    def _edit_stale(self, X: np.ndarray, sign: int) -> None:
        """Take points ``X`` joining (+1) or leaving (-1) into the dropped updates' statistics."""
        if self._stale is not None and len(X):
            kernels.q_edit_stale(X, float(sign), *(self._stale[name] for name in _STALE))

    def _refit_lloyd(self, keys: np.ndarray, V: np.ndarray, rows: np.ndarray) -> None:
        """The refit when only Lloyd changed: the kept seeding and the Lloyd updates kept with it are
        the fresh fit's, so go on from the centres the last of them snapped. The points are
        ``V[rows]`` in canonical order.

        ``_ops`` keeps counting: the seeding costs and the kept sums carry every change since the full
        fit; so does the largest |x| (every point held came in through a certificate, which took its
        |x| in): the bound for sums edited, not summed again.
        """
        a = self._arrays
        kept = len(a["sums"])
        self._lloyd(keys, V, rows, a["centres"][: kept + 1], a["max_abs"],
                    kept=(a["sums"], a["counts"], a["peak_counts"]))
        self.refits_ += 1
        self.lloyd_refits_ += 1

    def _lloyd(self, keys: np.ndarray, X: np.ndarray, rows: np.ndarray, starts: np.ndarray, max_abs: np.ndarray,
               labels: np.ndarray | None = None, kept: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """Quantized Lloyd from the last of ``starts`` until the snapped centres repeat or ``max_iter``.

        The points are ``X[rows]``, in canonical order (``keys``: their
        canonical keys), read in place. ``starts``: the seeds, then the
        centres of the updates ``kept`` (their sums, counts and peak counts),
        whose statistics stay. ``labels``: each point's nearest seed, if
        already known (the seeding found them); other updates take what they
        can from the last fit's labels or this fit's previous update
        (:meth:`_labels_for`).
        """
        n = len(rows)
        centres, all_labels, all_bounds = list(starts), [], []
        previous = None  # this fit's last update: its labels, their bounds, and its start
        moved_most = 0  # points an edited update moved, at most: additions its sums went through besides
        sums, counts, peak_counts = ([], [], []) if kept is None else (list(stats) for stats in kept)
        positions = self._lloyd_labels.positions(keys)
        for update in range(len(sums)):  # the kept updates' labels, for the next refit: the cache's
            cached = self._lloyd_labels.labels(update, centres[update], X, positions, rows)
            if cached is None:
                break
            all_labels.append(cached[0])
            all_bounds.append(cached[1])
        if len(all_labels) < len(sums):  # the cache could not serve them: no cache after this fit
            positions, all_labels = None, None
        for update in range(len(sums), self.max_iter):
            seeded = labels is not None
            if seeded:  # the seeding's: exact, with no margin to move by
                bounds = LabelBounds.none(n, centres[-1])
            elif (derived := self._labels_for(update, centres[-1], X, rows, positions, previous)) is not None:
                labels, bounds = derived
            edited = None
            if labels is None:
                s, c, labels, margins, lowers = assign_cluster_sums(X, centres[-1], rows)
                bounds = LabelBounds.fresh(margins, lowers, centres[-1])
            elif (edited := self._edited_update(update, X, rows, labels, positions, centres[-1], max_abs)) is None:
                s, c = cluster_sums_of_rows(X, rows, labels, self.k)
            if all_labels is not None:
                all_labels.append(labels)
                all_bounds.append(bounds)
            previous = None if seeded else (labels, bounds, centres[-1])
            labels = None
            if edited is None:
                centre, _ = corrected_centroids(s, c, centres[-1], n, self.k, self.gamma)
                snapped, peaks = snap(centre, self.eps, self._theta)[0], c
            else:
                snapped, s, c, peaks, moved = edited
                moved_most = max(moved_most, moved)
                self.edited_updates_ += 1
            sums.append(s)
            counts.append(c)
            peak_counts.append(peaks)
            centres.append(snapped)
            if np.array_equal(centres[-1], centres[-2]):
                break  # an exact fixpoint: every further update would repeat it
        self._stale = None
        self._ops += moved_most
        self.n_iter_ = len(sums)
        if all_labels is None:
            self._lloyd_labels.clear()
        else:
            self._lloyd_labels.record(keys, centres[: len(sums)], all_labels, all_bounds)
        self._arrays.update(centres=np.stack(centres), sums=np.stack(sums), counts=np.stack(counts),
                            peak_counts=np.stack(peak_counts), max_abs=max_abs)
        self._n_model = n
        self._fitted, self._seeding_kept = True, False

    def _edited_update(self, update: int, X: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                       positions: np.ndarray | None, start: np.ndarray, max_abs: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None:
        """Lloyd ``update`` from ``start`` with the points' ``labels``, from its dropped statistics
        (:attr:`_stale`) edited by the points whose labels moved since that update last ran: the
        snapped centres, sums, counts, peak counts and points moved; None where that cannot be
        certified equal to summing every point (then the caller sums them).

        A refit after a failed certificate reruns the updates from the one that failed; each moves
        a centre by about a grid step, which moves few labels. Summing every point again costs a
        pass over all the data per update (Fashion-MNIST: 376 MB, ~28 ms).
        """
        stale = self._stale
        if stale is None or positions is None or not 0 <= update - stale["first"] < len(stale["sums"]):
            return None
        i = update - stale["first"]
        old_labels = self._lloyd_labels.recorded(update, stale["starts"][i], X, positions, rows)
        if old_labels is None:
            return None
        s, c, peaks = stale["sums"][i].copy(), stale["counts"][i].copy(), stale["peak_counts"][i].copy()
        snapped = np.empty_like(start)
        moved = int(kernels.q_edited_update(X, rows, labels, old_labels, s, c, peaks, start, self._theta, self.eps,
                                            self.gamma, len(rows) + self._ops + 1, max_abs, snapped))
        return None if moved < 0 else (snapped, s, c, peaks, moved)

    def _labels_for(self, update: int, start: np.ndarray, X: np.ndarray, rows: np.ndarray, positions: np.ndarray | None,
                    previous: tuple[np.ndarray, LabelBounds, np.ndarray] | None) -> tuple[np.ndarray, LabelBounds] | None:
        """The labels of ``update``, starting from ``start``, and their bounds, derived from the last fit's
        labels of that update or from this fit's ``previous`` update, whichever started from centres
        nearer ``start`` (fewer moved: fewer labels to settle); None if neither is there.

        After a new seeding the last fit's starts differ in most centres, and
        so does every start in a fit with no cache, while from one update to
        the next of a fit many snapped centres stay put or move a cell.
        """
        cached = self._lloyd_labels.start(update) if positions is not None else None
        if previous is not None and _centres_moved(start, previous[2]) < _centres_moved(start, cached):
            return self._lloyd_labels.derive(start, X, previous[0], previous[1], np.arange(len(rows)), rows=rows)
        return self._lloyd_labels.labels(update, start, X, positions, rows)

    # -- persistence ----------------------------------------------------------------------
    def _cache_state(self) -> dict[str, Any]:
        """The certificate cache, unless a certified delete happened since the full fit.

        A certified delete leaves traces of the point in the cache: the
        per-feature largest |x| it may have set, the rounding residue of the
        sums, the seeding costs' peaks. A state must hold nothing of a point
        the model forgot, so it then goes without the cache (the centroids,
        a fresh fit's bits, stay) and a restored model refits at its next change.
        """
        stats = [self.certificates_passed_, self.certificates_failed_, self.refits_]
        if not self._fitted or self._forgot_since_fit:
            return {"fitted": False, "stats": stats}
        return {
            "fitted": True, "costs_tracked": True, "n_model": self._n_model, "ops": self._ops,
            "candidate_slots": [list(row) for row in self._candidate_slots],  # a copy: _reseat_runner edits rows
            "fallback": bool(self._arrays["fallback"]),
            "arrays": {name: state_format.pack_array(self._arrays[name]) for name in _ARRAYS},
            "stats": stats,
        }

    def _load_cache(self, cache: dict[str, Any]) -> None:
        if "stats" in cache:
            self.certificates_passed_, self.certificates_failed_, self.refits_ = (int(v) for v in cache["stats"])
        if not cache.get("fitted"):
            return
        if (not cache.get("costs_tracked") or "candidate_slots" not in cache
                or any(name not in cache["arrays"] for name in _ARRAYS)):
            # States written before certified changes updated the seeding costs may hold stale
            # costs, and later ones lack the runners' race keys or the costs' peaks; without the
            # cache the model refits at its next change (exact either way).
            return
        arrays = {name: state_format.unpack_array(cache["arrays"][name]) for name in _ARRAYS}
        arrays["fallback"] = np.array(bool(cache["fallback"]))
        T, k, d = len(arrays["sums"]), self.k, self._store.n_features or 0
        if not 1 <= T <= self.max_iter or arrays["centres"].shape != (T + 1, k, d) or arrays["sums"].shape != (T, k, d):
            raise state_format.StateError("Q-k-means cache does not match k, max_iter and dimension")
        L = arrays["potentials"].shape[1] if arrays["potentials"].ndim == 2 else -1
        runners = cache["candidate_slots"]
        if arrays["scores"].shape != (k, L) or len(runners) != k or any(len(row) != L for row in runners):
            raise state_format.StateError("Q-k-means cache: seeding runners do not match k")
        # The compiled certificates index these without bounds checks: every shape and index is checked here.
        shapes = {"counts": (T, k), "peak_counts": (T, k), "max_abs": (d,), "candidate_vectors": (k, L, d),
                  "potentials": (k, L), "chosen": (k,), "last_scores": (k,), "peaks": (k,)}
        for name, shape in shapes.items():
            if arrays[name].shape != shape:
                raise state_format.StateError(f"Q-k-means cache: {name} has shape {arrays[name].shape}, not {shape}")
        if L < 1 or np.any((arrays["chosen"] < 0) | (arrays["chosen"] >= L)):
            raise state_format.StateError("Q-k-means cache: a seeding winner outside its race")
        if int(cache["n_model"]) != len(self._store):
            raise state_format.StateError("Q-k-means cache: its point count is not the state's")
        self._arrays = arrays
        self._set_candidates([list(row) for row in cache["candidate_slots"]])
        self._n_model = int(cache["n_model"])
        self._ops = int(cache["ops"])
        self._theta = phase(self.seed, d)
        self.n_iter_ = T
        self._fitted = True


def _centres_moved(start: np.ndarray, other: np.ndarray | None) -> int:
    """How many centres (rows) differ between ``start`` and ``other`` (all and one more if there is none)."""
    if other is None or other.shape != start.shape:
        return len(start) + 1
    return int((start != other).any(axis=1).sum())


def _largest_finite(potentials: np.ndarray) -> np.ndarray:
    """Per seeding step (rows), the largest finite |cost| (0 if none)."""
    finite = np.where(np.isfinite(potentials), np.abs(potentials), 0.0)
    return finite.max(axis=1)
