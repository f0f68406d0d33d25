"""A Prometheus histogram that takes a whole batch of observations in one call.

The worker records one latency per event; prometheus_client's ``observe``
costs ~7 us per value under its lock, a tenth of the worker's budget per
record. This collector bins a batch with one numpy ``searchsorted`` and
exposes exactly what a ``Histogram`` would (``_bucket`` with ``le``,
``_count``, ``_sum``, ``_created``), through the public collector API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class BulkHistogram:
    """``namespace_name`` histogram with fixed label names, fed by :meth:`observe_many`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 namespace: str, registry: CollectorRegistry) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be strictly increasing")
        self._name = f"{namespace}_{name}"
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = np.array(bounds)
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float], float]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> None:
        """Create the series for these label values at zero (shows 0, not "no data")."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values!r}")
        with self._lock:
            self._series.setdefault(values, (np.zeros(len(self._le), dtype=np.int64), [0.0], time.time()))

    def observe_many(self, values: Sequence[float] | np.ndarray, *labelvalues: str) -> None:
        """Record every value (negative ones as 0) in the series of ``labelvalues``."""
        v = np.maximum(np.asarray(values, dtype=np.float64).reshape(-1), 0.0)
        if not len(v):
            return
        if np.isnan(v).any():
            raise ValueError(f"{self._name}: NaN observation")
        slots = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=len(self._le))
        self.labels(*labelvalues)
        with self._lock:
            counts, total, _ = self._series[labelvalues]
            counts += slots
            total[0] += float(v.sum())

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            series = [(values, np.cumsum(counts).tolist(), total[0], created)
                      for values, (counts, total, created) in sorted(self._series.items())]
        for values, cumulative, total, created in series:
            family.add_metric(list(values), buckets=list(zip(self._le, cumulative)), sum_value=total)
            family.samples.append(Sample(self._name + "_created", dict(zip(self._labelnames, values)), created))
        yield family
