"""Prometheus metrics of the worker (DESIGN.md section 6).

Every metric is named ``stream_unlearn_*`` in base units (``_seconds``,
``_bytes``, ``_total`` for counters). Labels are low-cardinality and fixed:
event ``type`` and ``outcome``, dead-letter ``reason`` (from
:data:`stream_unlearn.wire.BAD_RECORD_REASONS`), snapshot failure ``reason``,
certificate ``result``, and ``topic``/``partition`` for consumer lag. Every
label series that can be known in advance is created at zero, so dashboards
show 0 rather than "no data" before the first event.

Each :class:`WorkerMetrics` owns its own :class:`CollectorRegistry` (tests
can create several). :class:`NullMetrics` has the same methods, all no-ops:
run the worker with it to measure the cost of metrics.

Typical use by the worker::

    m = WorkerMetrics(algorithm="dc", k=5, seed=0, version=__version__, partitions=3)
    m.serve(9464, "0.0.0.0", stall_after=300)   # /metrics, and /healthz for container probes
    ...                                   # per poll loop step: m.heartbeat(); per polled batch:
    m.events("insert", "applied", n)      # every decoded/handled record, one outcome each
    m.dead_letter("not_msgpack")          # and m.events(type, "dead_letter")
    m.model_update(seconds, events=n)     # once per applied batch
    m.event_to_model("insert", [now - ts for each applied insert])
    m.delete_forgotten([now - ts for each delete that removed a point])
    m.model_state(points, loss); m.certificates(passed, failed); m.refits(n)
    m.lag(topic, partition, records); m.tombstones(n)
    ...                                   # per snapshot:
    m.snapshot(seconds, size_bytes, timestamp)  # or m.snapshot_failed("os_error")
    m.delete_persisted([...]); m.receipts(n)
    m.close()
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Self

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .bulk_histogram import BulkHistogram
from .liveness import Liveness
from .wire import BAD_RECORD_REASONS

__all__ = [
    "BATCH_BUCKETS",
    "CERTIFICATE_RESULTS",
    "EVENT_TYPES",
    "LATENCY_BUCKETS",
    "NAMESPACE",
    "OUTCOMES",
    "SNAPSHOT_FAILURE_REASONS",
    "NullMetrics",
    "WorkerMetrics",
]

NAMESPACE = "stream_unlearn"

EVENT_TYPES: tuple[str, ...] = ("insert", "delete")
OUTCOMES: tuple[str, ...] = ("applied", "replaced", "duplicate", "stale", "tombstoned", "ignored", "dead_letter")
CERTIFICATE_RESULTS: tuple[str, ...] = ("passed", "failed")
#: Pre-initialised snapshot failure reasons; other short fixed strings are accepted too.
SNAPSHOT_FAILURE_REASONS: tuple[str, ...] = ("os_error", "kafka_timeout", "serialize_error", "other")

#: Seconds, from 50 microseconds (sub-millisecond model updates) to 2 minutes
#: (snapshot waits, delete-to-persisted with a long snapshot interval). Finer
#: from 100 to 250 ms, where an event-to-model p99 against a 250 ms objective
#: lies: with no edge between 0.1 and 0.25, histogram_quantile spread that
#: bucket's events evenly over it and read every such p99 as 230-245 ms.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
#: Events per applied batch.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")
    return value


def _label(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValueError(f"{what} label must be a short non-empty string, got {value!r}")
    return value


class WorkerMetrics:
    """The worker's metrics in a private registry, optionally served over HTTP."""

    def __init__(
        self,
        *,
        algorithm: str,
        k: int,
        seed: int,
        version: str,
        partitions: int,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        common = {"namespace": NAMESPACE, "registry": r}  # every stream_unlearn_* metric
        self._server = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._liveness = Liveness()

        # Process/runtime metrics (process_*, python_*), scoped to this registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self._build_info = Gauge(
            "build_info",
            "Constant 1, labelled with the worker's version and model configuration.",
            ["version", "algorithm", "k", "seed", "partitions"],
            **common,
        )
        self._build_info.labels(
            version=str(version), algorithm=str(algorithm), k=str(k), seed=str(seed), partitions=str(partitions)
        ).set(1)

        self._events = Counter(
            "events",
            "Kafka records handled, by event type and outcome.",
            ["type", "outcome"],
            **common,
        )
        self._event_to_model = BulkHistogram(
            "event_to_model_seconds",
            "Event timestamp to the event being applied to the in-memory model.",
            ["type"],
            LATENCY_BUCKETS,
            **common,
        )
        for t in EVENT_TYPES:
            self._event_to_model.labels(t)
            for o in OUTCOMES:
                self._events.labels(type=t, outcome=o)

        self._model_update = Histogram(
            "model_update_seconds",
            "Wall time to apply one batch of events to the model.",
            **common,
            buckets=LATENCY_BUCKETS,
        )
        self._batch_events = Histogram(
            "batch_events",
            "Events per applied batch.",
            **common,
            buckets=BATCH_BUCKETS,
        )
        self._delete_forgotten = BulkHistogram(
            "delete_to_forgotten_seconds",
            "Delete event timestamp to the model no longer holding the point.",
            (),
            LATENCY_BUCKETS,
            **common,
        )
        self._delete_forgotten.labels()
        self._delete_persisted = BulkHistogram(
            "delete_to_persisted_seconds",
            "Delete event timestamp to a durable snapshot without the point (older snapshots removed).",
            (),
            LATENCY_BUCKETS,
            **common,
        )
        self._delete_persisted.labels()
        self._receipts = Counter(
            "receipts",
            "Erasure receipts published.",
            **common,
        )
        self._snapshot_duration = Histogram(
            "snapshot_duration_seconds",
            "Wall time to write one snapshot durably.",
            **common,
            buckets=LATENCY_BUCKETS,
        )
        self._snapshot_size = Gauge(
            "snapshot_size_bytes",
            "Size of the last successful snapshot.",
            **common,
        )
        self._snapshot_last = Gauge(
            "snapshot_last_success_timestamp_seconds",
            "Unix time of the last successful snapshot (0 = none yet).",
            **common,
        )
        self._snapshots = Counter(
            "snapshots",
            "Successful snapshots.",
            **common,
        )
        self._snapshot_failures = Counter(
            "snapshot_failures",
            "Failed snapshot attempts, by reason.",
            ["reason"],
            **common,
        )
        for reason in SNAPSHOT_FAILURE_REASONS:
            self._snapshot_failures.labels(reason=reason)

        self._points = Gauge(
            "points",
            "Points held by the model.",
            **common,
        )
        self._loss = Gauge(
            "model_loss",
            "k-means loss: mean squared distance of the held points to their nearest centroid.",
            **common,
        )
        self._certificates = Counter(
            "certificates",
            "Q-k-means deletion certificates, by result.",
            ["result"],
            **common,
        )
        for res in CERTIFICATE_RESULTS:
            self._certificates.labels(result=res)
        self._refits = Counter(
            "refits",
            "Model refits (a failed certificate, or a DC tree node recomputed from scratch).",
            **common,
        )
        self._lag = Gauge(
            "consumer_lag_records",
            "Records between the worker's position and the end of the partition.",
            ["topic", "partition"],
            **common,
        )
        self._dead_letters = Counter(
            "dead_letters",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            **common,
        )
        for reason in BAD_RECORD_REASONS:
            self._dead_letters.labels(reason=reason)
        self._tombstones = Gauge(
            "tombstones",
            "Deleted ids remembered so that late or replayed inserts stay forgotten.",
            **common,
        )

    # -- events and latency --------------------------------------------------

    def events(self, type: str, outcome: str, n: int = 1) -> None:
        if n:
            self._events.labels(type=_check(type, EVENT_TYPES, "event type"), outcome=_check(outcome, OUTCOMES, "outcome")).inc(n)

    def event_to_model(self, type: str, seconds: Sequence[float]) -> None:
        self._event_to_model.observe_many(seconds, _check(type, EVENT_TYPES, "event type"))

    def model_update(self, seconds: float, events: int) -> None:
        self._model_update.observe(max(0.0, float(seconds)))
        self._batch_events.observe(events)

    def delete_forgotten(self, seconds: Sequence[float]) -> None:
        self._delete_forgotten.observe_many(seconds)

    def delete_persisted(self, seconds: Sequence[float]) -> None:
        self._delete_persisted.observe_many(seconds)

    def receipts(self, n: int) -> None:
        if n:
            self._receipts.inc(n)

    # -- snapshots -----------------------------------------------------------

    def snapshot(self, seconds: float, size_bytes: int, timestamp: float) -> None:
        self._snapshot_duration.observe(max(0.0, float(seconds)))
        self._snapshot_size.set(size_bytes)
        self._snapshot_last.set(timestamp)
        self._snapshots.inc()

    def snapshot_failed(self, reason: str) -> None:
        self._snapshot_failures.labels(reason=_label(reason, "snapshot failure reason")).inc()

    # -- model ---------------------------------------------------------------

    def model_state(self, points: int, loss: float | None) -> None:
        self._points.set(points)
        if loss is not None and math.isfinite(loss):
            self._loss.set(loss)

    def certificates(self, passed: int, failed: int) -> None:
        if passed > 0:
            self._certificates.labels(result="passed").inc(passed)
        if failed > 0:
            self._certificates.labels(result="failed").inc(failed)

    def refits(self, n: int) -> None:
        if n:
            self._refits.inc(n)

    # -- consumer ------------------------------------------------------------

    def lag(self, topic: str, partition: int, records: int) -> None:
        self._lag.labels(topic=_label(topic, "topic"), partition=str(int(partition))).set(max(0, records))

    def dead_letter(self, reason: str) -> None:
        self._dead_letters.labels(reason=_label(reason, "dead-letter reason")).inc()

    def tombstones(self, n: int) -> None:
        self._tombstones.set(n)

    # -- exporter ------------------------------------------------------------

    def heartbeat(self) -> None:
        """The poll loop completed a step (see :mod:`.liveness`)."""
        self._liveness.beat()

    def serve(self, port: int, addr: str = "127.0.0.1", stall_after: float = 0.0) -> int:
        """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` from a daemon thread; return the bound port.

        ``/healthz`` is 503 once no :meth:`heartbeat` came for ``stall_after`` seconds (0: never).
        """
        with self._lock:
            if self._server is not None:
                raise RuntimeError("metrics server already started")
            self._liveness.stall_after = stall_after
            started = start_http_server(port, addr=addr, registry=self.registry)
            if not isinstance(started, tuple):  # prometheus_client < 0.17
                raise RuntimeError("prometheus_client >= 0.17 is required")  # noqa: TRY004 - a version, not an argument
            self._server, self._thread = started
            # The same server, with the liveness route in front of the metrics app (wsgiref's set_app).
            self._server.set_app(self._liveness.wsgi(self._server.get_app()))
            return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP server if it was started (idempotent)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            if thread is not None:
                thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullMetrics:
    """Same interface as :class:`WorkerMetrics`; records nothing, serves nothing."""

    registry = None

    def __init__(
        self,
        *,
        algorithm: str = "",
        k: int = 0,
        seed: int = 0,
        version: str = "",
        partitions: int = 0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        pass

    def events(self, type: str, outcome: str, n: int = 1) -> None:
        pass

    def event_to_model(self, type: str, seconds: Sequence[float]) -> None:
        pass

    def model_update(self, seconds: float, events: int) -> None:
        pass

    def delete_forgotten(self, seconds: Sequence[float]) -> None:
        pass

    def delete_persisted(self, seconds: Sequence[float]) -> None:
        pass

    def receipts(self, n: int) -> None:
        pass

    def snapshot(self, seconds: float, size_bytes: int, timestamp: float) -> None:
        pass

    def snapshot_failed(self, reason: str) -> None:
        pass

    def model_state(self, points: int, loss: float | None) -> None:
        pass

    def certificates(self, passed: int, failed: int) -> None:
        pass

    def refits(self, n: int) -> None:
        pass

    def lag(self, topic: str, partition: int, records: int) -> None:
        pass

    def dead_letter(self, reason: str) -> None:
        pass

    def tombstones(self, n: int) -> None:
        pass

    def heartbeat(self) -> None:
        pass

    def serve(self, port: int, addr: str = "127.0.0.1", stall_after: float = 0.0) -> int:
        return 0

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
