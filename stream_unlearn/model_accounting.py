"""The model's own metrics after each batch: points held, the loss, Q-k-means' certificates and refits.

The loss is an O(n) pass over every held point. It is computed one unit per
batch (as snapshot captures are), every unit of a round against the
centroids of the round's start, so that no single batch pays for all of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .q_kmeans import QKMeans
from .units import Unit

#: Seconds between the starts of two loss rounds.
LOSS_INTERVAL = 5.0


class ModelAccounting:
    """Feeds ``metrics`` (a ``WorkerMetrics`` or ``NullMetrics``) after each applied batch."""

    def __init__(self, metrics: Any, loss_interval: float = LOSS_INTERVAL) -> None:
        self._metrics = metrics
        self._loss_interval = loss_interval
        self._round_started = -math.inf  # the first batch starts a round, however long the machine is up
        self._round: list[Unit] = []  # units still to add to this round's loss
        self._centroids: np.ndarray | None = None  # the round's centroids
        self._sum, self._n = 0.0, 0
        self._q_counters = (0, 0, 0)

    def after_batch(self, units: list[Unit], centroids: Callable[[], np.ndarray], owns: Callable[[Unit], bool],
                    q_model: QKMeans | None = None) -> None:
        """Points held, the loss once a round is complete, and ``q_model``'s new certificates and refits."""
        now = time.monotonic()
        if now - self._round_started >= self._loss_interval and not self._round:
            self._round_started = now
            self._round = list(units)
            self._centroids = centroids() if units else None
            self._sum, self._n = 0.0, 0
        self._metrics.model_state(sum(u.model.n_points_ for u in units), self._loss_step(owns) if units else 0.0)
        stats = ((q_model.certificates_passed_, q_model.certificates_failed_, q_model.refits_)
                 if q_model is not None else (0, 0, 0))
        passed, failed, refits = (new - old for new, old in zip(stats, self._q_counters))
        if passed or failed:
            self._metrics.certificates(passed, failed)
        if refits:
            self._metrics.refits(refits)
        self._q_counters = stats

    def _loss_step(self, owns: Callable[[Unit], bool]) -> float | None:
        """Add one unit's squared distances to the round's centroids; the mean once all are in."""
        C = self._centroids
        while self._round:
            unit = self._round.pop(0)
            if C is None or not owns(unit) or not unit.model.n_points_:
                continue
            self._sum += unit.model.sq_dist_sum(C)
            self._n += unit.model.n_points_
            break
        if self._round or C is None:
            return None
        self._centroids = None
        return self._sum / self._n if self._n else 0.0
