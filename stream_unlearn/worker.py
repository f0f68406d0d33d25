"""``stream-unlearn worker``: Kafka events in, an exactly-forgetting model out.

One thread does everything, in this order, so that a snapshot is always a
consistent cut (model, semantics state and offsets after the same record):

1. poll a batch (``--max-batch`` records) from every partition of the
   co-partitioned insert and delete topics (``assign()``, no group join);
2. decode; a bad record goes to the dead-letter topic with its reason and
   source position in headers;
3. fold the batch into the per-id event-time semantics
   (:mod:`stream_unlearn.semantics`), apply the net change to the model and
   flush it (one recompute per dirty node);
4. account metrics; publish centroids (rate-limited); commit offsets to
   the consumer group (only for lag tools: the snapshot's offsets are the
   truth);
5. every ``--snapshot-interval`` seconds: flush the producer (dead letters
   are durable before offsets pass them), write a snapshot, prune every
   older one, then send one erasure receipt per delete, and replace the
   snapshot by one that no longer lists the receipts' ids.

Restart = load the newest valid snapshot, seek to its offsets, replay.
Replayed events meet a state that already holds their effect, and the
semantics are a function of the SET of events, so a kill -9 at any instant
loses nothing and applies nothing twice. Pending receipts are in the
snapshot and re-sent after a crash (at-least-once).
"""

from __future__ import annotations

import argparse
import collections
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from . import DCKMeans, QKMeans, __version__, load_model
from .base import UnlearningModel
from .broker import ensure_topics
from .config import ConfigError, WorkerConfig, config_from_args
from .receipts import PendingReceipt, encode_receipt, pending_from_meta, pending_to_meta
from .semantics import EventTimeState, SemanticsError
from .snapshot import Snapshot, SnapshotError, SnapshotStore
from .state import StateError
from .wire import BadRecord, DeleteEvent, InsertEvent, decode_delete, decode_insert

__all__ = [
    "MODEL_PART",
    "SEMANTICS_PART",
    "Worker",
    "WorkerError",
    "encode_model_message",
    "main_worker",
]

log = logging.getLogger(__name__)

MODEL_PART = "model.msgpack"
SEMANTICS_PART = "semantics.msgpack"
META_FORMAT = 1
#: Seconds between loss computations (O(n)), lag updates and offset commits.
LOSS_INTERVAL = 5.0
HOUSEKEEPING_INTERVAL = 1.0
POLL_TIMEOUT_MS = 200
_DETAIL_MAX = 1000
_LATENCY_OUTCOMES = frozenset(("applied", "replaced", "tombstoned"))


class WorkerError(RuntimeError):
    """A condition the worker cannot run under (exit status 2 from the CLI)."""


# --------------------------------------------------------------------------
# what the worker publishes


def encode_model_message(model: UnlearningModel, version: int, algorithm: str) -> bytes:
    """The model-topic value: centroids as float64 LE bytes plus their shape."""
    C = np.ascontiguousarray(model.centroids_, dtype="<f8")
    return msgpack.packb(
        {"centroids": C.tobytes(), "shape": list(C.shape), "n_points": model.n_points_,
         "version": int(version), "ts": time.time(), "algorithm": algorithm},
        use_bin_type=True,
    )


def dead_letter_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter record: why it was refused and where it came from."""
    return [
        ("reason", reason.encode()),
        ("detail", detail[:_DETAIL_MAX].encode("utf-8", "replace")),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]


class PublishError(RuntimeError):
    """Records sent to Kafka were not acknowledged."""


class _Publisher:
    """A KafkaProducer whose send failures surface on :meth:`flush`."""

    def __init__(self, config: WorkerConfig) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=config.bootstrap_list,
            acks="all",
            linger_ms=5,
            max_request_size=max(1 << 20, config.max_value_bytes + (64 << 10)),
            client_id="stream-unlearn-worker",
        )
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        if key is None and value is None:
            value = b""  # Kafka needs one of them
        self._producer.send(topic, key=key, value=value, headers=headers).add_errback(self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def flush(self, timeout: float = 30.0) -> None:
        self._producer.flush(timeout=timeout)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise PublishError(f"{len(errors)} record(s) not acknowledged, first: {errors[0]!r}")

    def close(self) -> None:
        self._producer.close(timeout=10)


# --------------------------------------------------------------------------
# restore


@dataclass
class _Restored:
    """What a snapshot gives back."""

    snapshot: Snapshot
    model: UnlearningModel
    semantics: EventTimeState
    offsets: dict[tuple[str, int], int]
    pending: list[PendingReceipt]
    dim: int | None
    version: int


def _restore(snap: Snapshot, config: WorkerConfig, expected: UnlearningModel, n_partitions: int) -> _Restored:
    """Load a snapshot and check it belongs to this configuration."""
    meta = snap.meta
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise WorkerError(f"{snap.path}: not a worker snapshot (meta format {meta!r:.80})")
    try:
        model = load_model(snap.parts[MODEL_PART])
        semantics = EventTimeState.from_bytes(snap.parts[SEMANTICS_PART], horizon=config.tombstone_horizon)
        pending = pending_from_meta(meta.get("pending_receipts"))
    except (KeyError, StateError, SemanticsError, ValueError) as exc:
        raise WorkerError(f"{snap.path}: unreadable snapshot content: {exc}") from exc
    if model.get_params() != expected.get_params():
        raise WorkerError(
            f"{snap.path} was written with model {model!r}, but this worker is configured for "
            f"{expected!r} on {n_partitions} partition(s); use the same flags or a fresh --snapshot-dir"
        )
    topics = meta.get("topics", {})
    if [topics.get("inserts"), topics.get("deletes")] != list(config.input_topics):
        raise WorkerError(
            f"{snap.path} holds offsets of topics {topics}, not of {list(config.input_topics)}; "
            "use a fresh --snapshot-dir"
        )
    offsets = {(t, int(p)): int(o) for t, parts in meta.get("offsets", {}).items() for p, o in parts.items()}
    dim = meta.get("dim") or model.n_features_in_
    return _Restored(snap, model, semantics, offsets, pending, dim, int(meta.get("model_version", 0)))


# --------------------------------------------------------------------------
# the worker


class Worker:
    """The consume-apply-snapshot loop; see the module docstring.

    ``metrics``: a :class:`~stream_unlearn.metrics.WorkerMetrics` or
    ``NullMetrics``; by default one is built (and served when
    ``config.metrics_port`` is not 0) once the partition count is known.
    """

    def __init__(self, config: WorkerConfig, metrics: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self._own_metrics = metrics is None
        self._stop = threading.Event()
        self.model: UnlearningModel | None = None
        self.semantics = EventTimeState(config.tombstone_horizon)
        #: next offset to read, per (topic, partition)
        self.offsets: dict[tuple[str, int], int] = {}
        self.n_partitions = 0
        self.metrics_port: int | None = None
        self.last_snapshot_seq: int | None = None
        #: seq of the snapshot restored at start (None: started from scratch)
        self.restored_seq: int | None = None
        #: records handled since start (dead letters included)
        self.records_handled = 0
        #: set once started (topics checked, snapshot restored, partitions assigned)
        self.ready = threading.Event()
        self._dim: int | None = config.dim or None
        self._version = 0
        self._published_version = -1
        self._changed = False
        self._new_pending: list[PendingReceipt] = []
        self._unsent: list[PendingReceipt] = []
        self._store: SnapshotStore | None = None
        self._consumer: Any = None
        self._publisher: _Publisher | None = None
        self._tps: list[Any] = []
        self._last_snapshot = self._last_publish = self._last_loss = self._last_housekeeping = 0.0
        self._q_counters = (0, 0, 0)

    # -- control ---------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask :meth:`run` to finish the current batch, snapshot and return."""
        self._stop.set()

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Run until ``stop_event`` (or :meth:`request_stop`) is set.

        Raises :class:`WorkerError` for configuration problems found at start
        (topics not co-partitioned, snapshot of another configuration);
        other exceptions are fatal runtime errors. Either way nothing is
        snapshotted after a failure, so a restart replays from the last
        consistent snapshot.
        """
        stop = stop_event if stop_event is not None else self._stop
        try:
            self._start()
            while not (stop.is_set() or self._stop.is_set()):
                self.step()
            self._shutdown()
        finally:
            self._close()

    # -- start -------------------------------------------------------------------
    def _start(self) -> None:
        from kafka import KafkaConsumer

        c = self.config
        self._store = SnapshotStore(c.snapshot_dir)
        if c.create_topics:
            ensure_topics(c.bootstrap_servers, {c.insert_topic: c.partitions, c.delete_topic: c.partitions,
                                                c.dead_letter_topic: 1, c.receipts_topic: 1, c.model_topic: 1})
        self._consumer = KafkaConsumer(
            bootstrap_servers=c.bootstrap_list,
            group_id=c.group_id,
            client_id="stream-unlearn-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=c.max_batch,
            max_partition_fetch_bytes=max(1 << 20, c.max_value_bytes + (64 << 10)),
            fetch_max_bytes=64 << 20,
        )
        self.n_partitions = self._partition_count()
        self._publisher = _Publisher(c)
        expected = self._new_model()
        restored = self._load_snapshot(expected)
        self.model = expected if restored is None else restored.model
        if self.metrics is None:
            from .metrics import WorkerMetrics

            self.metrics = WorkerMetrics(algorithm=c.algorithm, k=c.k, seed=c.seed, version=__version__,
                                         partitions=self.n_partitions)
        if self._own_metrics and c.metrics_port:
            self.metrics_port = self.metrics.serve(c.metrics_port, c.metrics_addr)
            log.info("metrics on http://%s:%d/metrics", c.metrics_addr, self.metrics_port)
        self._q_counters = self._q_stats()
        self._assign_and_seek()
        self._account_model(force_loss=True)
        self.metrics.tombstones(self.semantics.n_tombstones)
        if self._unsent:  # receipts of the restored snapshot may not have gone out
            assert restored is not None
            self._send_receipts(restored.snapshot.seq, restored.snapshot.parts)
        self._last_snapshot = time.monotonic()
        self.ready.set()
        log.info("worker started: %s k=%d seed=%d on %d partition(s) of %s/%s, %d points held",
                 c.algorithm, c.k, c.seed, self.n_partitions, c.insert_topic, c.delete_topic, self.model.n_points_)

    def _partition_count(self) -> int:
        """Partitions of the input topics, which must be co-partitioned."""
        c = self.config
        deadline = time.monotonic() + 30.0
        counts: dict[str, int] = {}
        while True:
            counts = {t: len(self._consumer.partitions_for_topic(t) or ()) for t in c.input_topics}
            if all(counts.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = [t for t, n in counts.items() if not n]
        if missing:
            raise WorkerError(f"topic(s) {missing} do not exist (run with --create-topics or create them)")
        if counts[c.insert_topic] != counts[c.delete_topic]:
            raise WorkerError(
                f"{c.insert_topic} has {counts[c.insert_topic]} partitions but {c.delete_topic} has "
                f"{counts[c.delete_topic]}: inserts and deletes must be co-partitioned by id "
                "(same partition count, same key partitioner)"
            )
        return counts[c.insert_topic]

    def _new_model(self) -> UnlearningModel:
        c = self.config
        if c.algorithm == "dc":
            return DCKMeans(**c.model_params(), n_partitions=self.n_partitions)
        return QKMeans(**c.model_params())

    def _load_snapshot(self, expected: UnlearningModel) -> _Restored | None:
        assert self._store is not None
        snap = self._store.load_latest()
        for skipped in self._store.skipped:
            log.warning("ignored invalid snapshot %s: %s", skipped.path, skipped.reason)
        if snap is None:
            log.info("no snapshot in %s: starting from the beginning of the topics", self.config.snapshot_dir)
            return None
        restored = _restore(snap, self.config, expected, self.n_partitions)
        self._store.prune(snap.seq)  # older ones may hold data of people deleted since
        self.semantics = restored.semantics
        self.offsets = restored.offsets
        self._unsent = restored.pending
        self._dim = self._dim or restored.dim
        self._version = self._published_version = restored.version
        self.last_snapshot_seq = self.restored_seq = snap.seq
        log.info("restored snapshot %s: %d points, offsets %s", snap.path, restored.model.n_points_,
                 {f"{t}/{p}": o for (t, p), o in sorted(self.offsets.items())})
        return restored

    def _assign_and_seek(self) -> None:
        from kafka import TopicPartition

        self._tps = [TopicPartition(t, p) for t in self.config.input_topics for p in range(self.n_partitions)]
        self._consumer.assign(self._tps)
        for tp in self._tps:
            offset = self.offsets.get((tp.topic, tp.partition))
            if offset is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)

    # -- the loop ----------------------------------------------------------------
    def step(self) -> int:
        """Poll and apply one batch, then do what is due; returns records handled."""
        batch = self._consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=self.config.max_batch)
        n = self._apply(batch) if batch else 0
        self.records_handled += n
        now = time.monotonic()
        if self._version != self._published_version and now - self._last_publish >= self.config.model_publish_interval:
            self._publish_model()
        if now - self._last_housekeeping >= HOUSEKEEPING_INTERVAL:
            self._housekeeping()
        if now - self._last_snapshot >= self.config.snapshot_interval:
            self.snapshot()
        return n

    def _apply(self, batch: Mapping[Any, list[Any]]) -> int:
        """Decode, fold into the semantics, apply to the model, account."""
        assert self.model is not None
        events: list[InsertEvent | DeleteEvent] = []
        partitions: list[int] = []
        consumed: dict[tuple[str, int], int] = {}
        dead = 0
        for tp, records in batch.items():
            is_insert = tp.topic == self.config.insert_topic
            for record in records:
                try:
                    event = self._decode(record, is_insert)
                except BadRecord as bad:
                    self._dead_letter(tp, record, bad, "insert" if is_insert else "delete")
                    dead += 1
                    continue
                events.append(event)
                partitions.append(tp.partition)
            if records:
                consumed[(tp.topic, tp.partition)] = records[-1].offset + 1

        plan = self.semantics.apply(events, partitions)
        started = time.perf_counter()
        if plan.delete_ids:
            self.model.delete(plan.delete_ids)
        if plan.insert_ids:
            parts = np.asarray(plan.insert_partitions, dtype=np.int64) if self.config.algorithm == "dc" else None
            self.model.insert(plan.insert_ids, plan.insert_vectors, partitions=parts)
        self.model.flush()
        seconds = time.perf_counter() - started
        if plan.changes_model:
            self._version += 1
        self.offsets.update(consumed)  # only now: the model reflects these records
        self._changed = True
        self._account_batch(events, plan.outcomes, seconds)
        return len(events) + dead

    def _decode(self, record: Any, is_insert: bool) -> InsertEvent | DeleteEvent:
        c = self.config
        record_ts = record.timestamp / 1000.0 if record.timestamp is not None and record.timestamp >= 0 else time.time()
        if is_insert:
            event = decode_insert(record.value, dim=self._dim, record_ts=record_ts, key=record.key,
                                  max_id_bytes=c.max_id_bytes, max_value_bytes=c.max_value_bytes)
            if self._dim is None:
                self._dim = len(event.vec)
            return event
        return decode_delete(record.value, record_ts=record_ts, key=record.key,
                             max_id_bytes=c.max_id_bytes, max_value_bytes=c.max_value_bytes)

    def _dead_letter(self, tp: Any, record: Any, bad: BadRecord, kind: str) -> None:
        assert self._publisher is not None
        headers = dead_letter_headers(bad.reason, bad.detail, tp.topic, tp.partition, record.offset)
        self._publisher.send(self.config.dead_letter_topic, record.key, record.value, headers)
        self.metrics.dead_letter(bad.reason)
        self.metrics.events(kind, "dead_letter")
        log.debug("dead letter %s/%d@%d: %s", tp.topic, tp.partition, record.offset, bad)

    def _account_batch(self, events: list[InsertEvent | DeleteEvent], outcomes: list[str], seconds: float) -> None:
        assert self.model is not None
        m = self.metrics
        now = time.time()
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        latency: dict[str, list[float]] = {"insert": [], "delete": []}
        forgotten: list[float] = []
        for event, outcome in zip(events, outcomes):
            kind = "insert" if isinstance(event, InsertEvent) else "delete"
            counts[kind, outcome] += 1
            if outcome in _LATENCY_OUTCOMES:
                latency[kind].append(now - event.ts)
            if kind == "delete":
                self._new_pending.append(PendingReceipt(event.id, event.ts, now))
                if outcome == "applied":
                    forgotten.append(now - event.ts)
        for (kind, outcome), n in counts.items():
            m.events(kind, outcome, n)
        for kind, values in latency.items():
            if values:
                m.event_to_model(kind, values)
        if forgotten:
            m.delete_forgotten(forgotten)
        if events:
            m.model_update(seconds, len(events))
        self._account_model()

    def _q_stats(self) -> tuple[int, int, int]:
        model = self.model
        if isinstance(model, QKMeans):
            return (model.certificates_passed_, model.certificates_failed_, model.refits_)
        return (0, 0, 0)

    def _account_model(self, force_loss: bool = False) -> None:
        assert self.model is not None
        now = time.monotonic()
        loss = None
        if force_loss or now - self._last_loss >= LOSS_INTERVAL:
            loss = self.model.loss()
            self._last_loss = now
        self.metrics.model_state(self.model.n_points_, loss)
        stats = self._q_stats()
        passed, failed, refits = (new - old for new, old in zip(stats, self._q_counters))
        if passed or failed:
            self.metrics.certificates(passed, failed)
        if refits:
            self.metrics.refits(refits)
        self._q_counters = stats

    def _housekeeping(self) -> None:
        """Lag per partition, tombstone count, offsets committed for lag tools."""
        from kafka.structs import OffsetAndMetadata

        self._last_housekeeping = time.monotonic()
        for tp in self._tps:
            high = self._consumer.highwater(tp)
            offset = self.offsets.get((tp.topic, tp.partition))
            if high is not None and offset is not None:
                self.metrics.lag(tp.topic, tp.partition, high - offset)
        self.metrics.tombstones(self.semantics.n_tombstones)
        commit = {tp: OffsetAndMetadata(self.offsets[(tp.topic, tp.partition)], "", -1)
                  for tp in self._tps if (tp.topic, tp.partition) in self.offsets}
        if commit:
            try:
                self._consumer.commit(commit)
            except Exception as exc:  # lag tools only; never worth stopping for
                log.debug("offset commit failed: %r", exc)

    def _publish_model(self) -> None:
        assert self.model is not None and self._publisher is not None
        value = encode_model_message(self.model, self._version, self.config.algorithm)
        self._publisher.send(self.config.model_topic, b"model", value)
        self._published_version = self._version
        self._last_publish = time.monotonic()

    # -- snapshots and receipts ---------------------------------------------------------
    def _meta(self, pending: Iterable[PendingReceipt]) -> dict[str, Any]:
        assert self.model is not None
        c = self.config
        offsets: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in sorted(self.offsets.items()):
            offsets.setdefault(topic, {})[partition] = offset
        return {
            "format": META_FORMAT,
            "writer": f"stream-unlearn {__version__}",
            "algorithm": c.algorithm,
            "k": c.k,
            "seed": c.seed,
            "params": self.model.get_params(),
            "partitions": self.n_partitions,
            "topics": {"inserts": c.insert_topic, "deletes": c.delete_topic},
            "offsets": offsets,
            "dim": self._dim,
            "model_version": self._version,
            "n_points": self.model.n_points_,
            "pending_receipts": pending_to_meta(pending),
        }

    def snapshot(self) -> int | None:
        """Write a snapshot if anything changed, prune older ones, send receipts.

        Returns the new snapshot's seq, or None if there was nothing to do or
        the write failed (it is retried at the next interval).
        """
        assert self.model is not None and self._store is not None and self._publisher is not None
        self._last_snapshot = time.monotonic()
        if not self._changed and not self._unsent:
            return None
        # Dead letters must be durable before a snapshot's offsets pass them.
        self._publisher.flush()
        pending = self._unsent + self._new_pending
        started = time.perf_counter()
        try:
            parts = {MODEL_PART: self.model.to_state(), SEMANTICS_PART: self.semantics.to_bytes()}
            info = self._store.write(parts, self._meta(pending))
        except OSError as exc:
            self.metrics.snapshot_failed("os_error")
            log.error("snapshot failed, retrying in %.1fs: %s", self.config.snapshot_interval, exc)
            return None
        self.metrics.snapshot(time.perf_counter() - started, info.size_bytes, info.created_at)
        self._store.prune(info.seq, verify=False)  # write() returned: it is durable
        self.metrics.delete_persisted([info.created_at - p.deleted_ts for p in self._new_pending])
        self._unsent, self._new_pending, self._changed = pending, [], False
        self.last_snapshot_seq = info.seq
        log.debug("snapshot %s: %d points, %d receipts pending", info.path, self.model.n_points_, len(pending))
        self._send_receipts(info.seq, parts)
        return self.last_snapshot_seq

    def _send_receipts(self, seq: int, parts: dict[str, bytes]) -> None:
        """Publish the receipts of snapshot ``seq``, then drop their ids from disk.

        The snapshot lists the receipts' ids so that a crash cannot lose
        them; once they are acknowledged, an identical snapshot without that
        list replaces it, so no file under the snapshot root names a person
        whose receipt is out.
        """
        assert self._publisher is not None and self._store is not None
        if not self._unsent:
            return
        for pending in self._unsent:
            self._publisher.send(self.config.receipts_topic, *encode_receipt(pending, seq))
        try:
            self._publisher.flush()
        except PublishError as exc:
            log.warning("receipts not acknowledged, re-sent after the next snapshot: %s", exc)
            return
        self.metrics.receipts(len(self._unsent))
        self._unsent = []
        try:
            info = self._store.write(parts, self._meta([]))
        except OSError as exc:
            self.metrics.snapshot_failed("os_error")
            log.error("could not replace snapshot %d after its receipts: %s", seq, exc)
            self._changed = True  # retry at the next interval
            return
        self._store.prune(info.seq, verify=False)
        self.last_snapshot_seq = info.seq

    # -- stop ----------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Clean stop: final snapshot, receipts, centroids, committed offsets."""
        self.snapshot()
        if self._version != self._published_version:
            self._publish_model()
        self._housekeeping()
        assert self._publisher is not None
        self._publisher.flush()
        log.info("worker stopped cleanly; last snapshot %s", self.last_snapshot_seq)

    def _close(self) -> None:
        for closer in (getattr(self._consumer, "close", None), getattr(self._publisher, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception as exc:  # closing must not mask the real error
                    log.debug("close failed: %r", exc)
        if self._own_metrics and self.metrics is not None:
            self.metrics.close()


# --------------------------------------------------------------------------
# the command


def main_worker(args: argparse.Namespace) -> int:
    """Run the ``worker`` command: 0 after SIGTERM/SIGINT, 2 bad config, 1 failure."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"stream-unlearn worker: error: {exc}", flush=True, file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    worker = Worker(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s: finishing the batch", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run(stop)
    except (WorkerError, SnapshotError) as exc:
        log.error("%s", exc)
        return 2
    except Exception:
        log.exception("worker failed")
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
