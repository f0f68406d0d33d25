"""``stream-unlearn worker``: Kafka events in, an exactly-forgetting model out.

Workers started with the same flags join one Kafka consumer group
(``--group-id``) and split the partitions of the co-partitioned insert and
delete topics; a worker always owns the same partition numbers of both.
With ``--algorithm dc`` (the default) the first level of the DC tree is the
Kafka partition, so each owned partition is a *unit*: its own subtree (a
one-partition DCKMeans, see :mod:`stream_unlearn.partitioned`), its own
event-time semantics (an id's insert and delete share its partition), its
own offsets of both topics, its own pending receipts, and its own snapshot
store ``<snapshot-dir>/partition-<p>/``. ``--algorithm q`` is one global
model, so it runs as one unit over every partition, snapshots in
``<snapshot-dir>/`` itself, and requires ``--no-group`` (one worker).

One thread (the loop) does everything but snapshot I/O, in this order, so
that a unit's snapshot is always a consistent cut (its model, semantics and
offsets after the same record):

1. poll a batch (``--max-batch`` records); the rebalance listener only
   records what the group revoked or assigned, and the loop handles it
   right after ``poll()`` returns: a revoked partition is snapshotted
   (waiting for its snapshot in flight, then writing a last one and
   waiting for it), its final summary published and its owner lock
   released (the batch before it is already applied); an assigned one is
   locked (waiting for its previous owner to let go), restored from its
   newest snapshot or replayed from the earliest offset, and the consumer
   seeks to its offsets;
2. decode; a bad record goes to the dead-letter topic with its reason and
   source position in headers; records a unit already holds are skipped,
   and offsets that return no record are followed or fetched again
   (:mod:`stream_unlearn.continuity`);
3. fold each unit's events into its semantics
   (:mod:`stream_unlearn.semantics`), apply the net change to its model and
   flush it (one recompute per dirty node);
4. account metrics; publish (rate-limited) the summary of every owned
   partition that changed to the summaries topic, and the merged global
   model to the model topic; read the other workers' summaries; commit
   offsets to the group (only for lag tools: the snapshots' offsets are the
   truth);
5. book the snapshots the writer thread finished (metrics, the unit's last
   seq, receipts put back as pending if the write or their send failed);
6. every ``--snapshot-interval`` seconds, mark the changed units due; each
   step then captures one due unit (copies of its model and semantics
   state, offsets and pending receipts: the cut) unless its previous
   snapshot is still in flight (then it waits for the next interval), and
   hands it to the writer thread (:mod:`stream_unlearn.snapshot_writer`),
   which encodes the copies, flushes
   the producer (dead letters are durable before offsets pass them),
   writes the snapshot, prunes every older one of that unit, then sends one
   erasure receipt per delete, and replaces the snapshot by one that no
   longer lists the receipts' ids. The writer pauses while the loop applies
   a batch (:mod:`stream_unlearn.loop_priority`). :meth:`Worker.snapshot` (SIGTERM, tests)
   is synchronous: it waits for the snapshots in flight and for its own.

Restart or hand-over = load the unit's newest valid snapshot, seek to its
offsets, replay. Replayed events meet a state that already holds their
effect, and the semantics are a function of the SET of events, so a kill -9
at any instant loses nothing and applies nothing twice. Pending receipts
are in the snapshot and re-sent after a crash (at-least-once), by the
writer thread right after the restore. A kill -9 while the writer is busy
leaves the unit's previous snapshot (or, once written, the new one) and at
most a ``.tmp-*`` directory, removed when the store is next opened.
"""

from __future__ import annotations

import argparse
import collections
import gc
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import QKMeans, __version__
from .base import UnlearningModel
from .broker import KafkaUnreachable, ensure_topics, wait_for_kafka
from .config import ConfigError, WorkerConfig, config_from_args
from .continuity import Continuity
from .hashing import murmur2_partitions
from .loop_priority import LoopPriority
from .model_accounting import ModelAccounting
from .model_publishing import ModelPublishing
from .ownership import OwnerLock, OwnershipError, RebalanceLog, partitions_of
from .partitioned import GlobalView, global_params, new_partition_model, partition_dir, partition_dirs
from .publisher import Publisher, PublishError, PublishTimeout, UnknownTopic, dead_letter_headers, encode_global_message
from .receipts import PendingReceipt, pending_to_meta
from .semantics import EventTimeState
from .snapshot import SnapshotError, SnapshotInfo, SnapshotStore
from .snapshot_rounds import CaptureSlots
from .snapshot_writer import Completion, SnapshotJob, SnapshotWriter
from .summaries import GlobalModel
from .units import META_FORMAT, MODEL_PART, SEMANTICS_PART, Unit, WorkerError, restore_unit
from .warmup import warm_up
from .wire import BadRecord, DeleteEvent, InsertEvent, decode_delete, decode_inserts

__all__ = [
    "MODEL_PART",
    "SEMANTICS_PART",
    "Worker",
    "WorkerError",
    "encode_global_message",
    "main_worker",
]

log = logging.getLogger(__name__)

#: Seconds between lag updates and offset commits.
HOUSEKEEPING_INTERVAL = 1.0
POLL_TIMEOUT_MS = 200
_LATENCY_OUTCOMES = frozenset(("applied", "replaced", "tombstoned"))
#: Longest value a dead letter carries (more is cut, header ``truncated_from``): with headers it stays
#: under a default broker's 1 MiB message limit.
DEAD_LETTER_MAX_VALUE = 960 << 10


# --------------------------------------------------------------------------
# the worker


class Worker:
    """The consume-apply-snapshot loop; see the module docstring.

    ``metrics``: a :class:`~stream_unlearn.metrics.WorkerMetrics` or
    ``NullMetrics``; by default one is built (and served when
    ``config.metrics_port`` is not 0) once the partition count is known.

    Readable while it runs (from another thread, as plain values):
    ``offsets`` (next offset per owned (topic, partition)), ``owned``
    (partitions owned now), ``global_model`` (the last merged
    :class:`~stream_unlearn.summaries.GlobalModel`), ``rebalances`` (one
    dict per handled assignment, with its timings). ``model`` (the model of
    the owned partitions: a :class:`~stream_unlearn.partitioned.GlobalView`
    for dc, the QKMeans for q) is for after :meth:`run` returned: models
    are not thread-safe.
    """

    def __init__(self, config: WorkerConfig, metrics: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self._own_metrics = metrics is None
        self._stop = threading.Event()
        #: next offset to read, per owned (topic, partition)
        self.offsets: dict[tuple[str, int], int] = {}
        self.n_partitions = 0
        self.metrics_port: int | None = None
        self.last_snapshot_seq: int | None = None
        #: the last snapshot job found Kafka not acknowledging the records before its cut (an outage)
        self._kafka_away = False
        #: seq of the snapshot restored, per unit (partition, or None for the q unit)
        self.restored_seqs: dict[int | None, int | None] = {}
        #: records handled since start (dead letters included)
        self.records_handled = 0
        #: set once started (topics checked, group joined or partitions assigned)
        self.ready = threading.Event()
        #: set once the first assignment has been handled
        self.assigned = threading.Event()
        self.owned: tuple[int, ...] = ()
        self.rebalances: list[dict[str, Any]] = []
        self._units: dict[int, Unit] = {}
        self._parked: dict[int, Unit] = {}
        self._retired_models: dict[int, UnlearningModel] = {}
        self._dim: int | None = config.dim or None
        self._publish_due = False
        self._publishing: ModelPublishing | None = None
        self._consumer: Any = None
        self._publisher: Publisher | None = None
        self._writer: SnapshotWriter | None = None
        #: raised while a batch is applied: the snapshot writer pauses meanwhile
        self._priority = LoopPriority()
        #: units whose snapshot job is in flight, by unit name
        self._writing: dict[str, Unit] = {}
        #: units due for a periodic snapshot, captured one at a time, spread over the interval
        self._due: list[Unit] = []
        #: when this round's due units may be captured (monotonic clock)
        self._slots = CaptureSlots()
        self._reader: Any = None
        self._rebalance = RebalanceLog()
        self._continuity: Continuity | None = None
        self._root_store: SnapshotStore | None = None
        # "never": the first batch finds each due, however short a time the machine has been up
        self._last_snapshot = self._last_publish = self._last_housekeeping = -math.inf
        self._accounting: ModelAccounting | None = None
        self._global_params: dict[str, Any] = {}

    # -- reading -------------------------------------------------------------------
    @property
    def dc(self) -> bool:
        return self.config.algorithm == "dc"

    def _unique_units(self) -> list[Unit]:
        seen: dict[int, Unit] = {}
        for unit in self._units.values():
            seen.setdefault(id(unit), unit)
        return list(seen.values())

    @property
    def model(self) -> Any:
        """The model of the owned partitions (dc: a GlobalView; q: the QKMeans); None before start.

        After the worker stopped, a dc view still shows the partitions it
        owned last (its units are kept for reading).
        """
        if not self.dc:
            units = self._unique_units()
            return units[0].model if units else self._retired_models.get(-1)
        if not self.n_partitions:
            return None
        models = {p: u.model for p, u in self._units.items()} or dict(self._retired_models)
        return GlobalView(models, self.n_partitions, self._global_params)

    @property
    def global_model(self) -> GlobalModel | None:
        """The last merged global model (dc), None before the first."""
        return self._publishing.global_model if self._publishing is not None else None

    @property
    def restored_seq(self) -> int | None:
        """The seq restored for the q unit, or for the only owned partition (compatibility)."""
        values = list(self.restored_seqs.values())
        return values[0] if len(values) == 1 else None

    # -- control ---------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask :meth:`run` to finish the current batch, snapshot and return."""
        self._stop.set()

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Run until ``stop_event`` (or :meth:`request_stop`) is set.

        Raises :class:`WorkerError` for configuration problems (topics not
        co-partitioned, snapshot of another configuration, an assignment
        that is not co-partitioned); other exceptions are fatal runtime
        errors. Either way no cut is captured after a failure (those captured
        before it, consistent, are still written), so a restart replays from
        the last consistent snapshots.
        """
        stop = stop_event if stop_event is not None else self._stop
        try:
            if not self._start(stop):
                log.info("stopped while waiting for Kafka")
                return
            while not (stop.is_set() or self._stop.is_set()):
                self.step()
            self._shutdown()
        finally:
            self._close()

    # -- start -------------------------------------------------------------------
    def _start(self, stop: threading.Event) -> bool:
        """Connect, restore and join; False if ``stop`` was set while Kafka was not reachable yet."""
        from kafka import KafkaConsumer
        from kafka.coordinator.assignors.range import RangePartitionAssignor

        c = self.config
        self._check_layout()
        if not wait_for_kafka(c.bootstrap_servers, c.connect_timeout, lambda: stop.is_set() or self._stop.is_set()):
            return False
        if c.create_topics:
            ensure_topics(c.bootstrap_servers, {c.insert_topic: c.partitions, c.delete_topic: c.partitions,
                                                c.dead_letter_topic: 1, c.receipts_topic: 1, c.model_topic: 1})
            if self.dc:
                from .model_cmd import ensure_summaries_topic

                ensure_summaries_topic(c.bootstrap_servers, c.summaries_topic)
        self._consumer = KafkaConsumer(
            bootstrap_servers=c.bootstrap_list,
            group_id=c.group_id,
            client_id="stream-unlearn-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=c.max_batch,
            fetch_max_wait_ms=c.fetch_max_wait_ms,
            isolation_level=c.isolation_level,
            max_partition_fetch_bytes=max(1 << 20, c.max_value_bytes + (64 << 10)),
            fetch_max_bytes=64 << 20,
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms,
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        self._continuity = Continuity(self._consumer, POLL_TIMEOUT_MS)
        self.n_partitions = self._partition_count()
        self._publisher = Publisher(c)
        try:
            self._publisher.learn_topics(c.output_topics)
        except UnknownTopic as exc:
            raise WorkerError(str(exc)) from exc
        self._writer = SnapshotWriter(self._publisher, c.receipts_topic, self._priority)
        if self.dc:
            from .model_cmd import SummaryReader

            self._global_params = global_params(new_partition_model(c.model_params()), self.n_partitions)
            self._reader = SummaryReader(c.bootstrap_list, c.summaries_topic, params=self._global_params,
                                         n_partitions=self.n_partitions)
        self._publishing = ModelPublishing(c, self._publisher, self.n_partitions, self._reader)
        if self.metrics is None:
            from .metrics import WorkerMetrics

            self.metrics = WorkerMetrics(algorithm=c.algorithm, k=c.k, seed=c.seed, version=__version__,
                                         partitions=self.n_partitions)
        self._accounting = ModelAccounting(self.metrics)
        if self._own_metrics and c.metrics_port:
            self.metrics_port = self.metrics.serve(c.metrics_port, c.metrics_addr, c.stall_timeout)
            log.info("metrics on http://%s:%d/metrics", c.metrics_addr, self.metrics_port)
        if c.group:
            self._consumer.subscribe(topics=list(c.input_topics), listener=self._rebalance.listener())
        else:
            from kafka import TopicPartition

            self._consumer.assign([TopicPartition(t, p) for t in c.input_topics for p in range(self.n_partitions)])
            self._handle_assignment(set(range(self.n_partitions)), time.monotonic())
        self._settle()
        self._last_snapshot = time.monotonic()
        self.ready.set()
        log.info("worker started: %s k=%d seed=%d, %d partition(s) of %s/%s, %s", c.algorithm, c.k, c.seed,
                 self.n_partitions, c.insert_topic, c.delete_topic,
                 f"consumer group {c.group_id!r}" if c.group else "every partition (no group)")
        return True

    def _settle(self) -> None:
        """Pay start-up costs before ready, not in the first batches.

        Loads the compiled kernels (~1 s from numba's cache), then moves every
        object alive now (numba, llvmlite, kafka-python: ~10^6 of them) out of
        the garbage collector's reach with ``gc.freeze()``, so a full
        collection scans only what the worker allocated since: those scans
        were 75-120 ms pauses of the poll loop.
        """
        seconds = warm_up(self.config.algorithm, **self.config.model_params())
        gc.collect()
        gc.freeze()
        log.info("kernels loaded in %.2fs; %d start-up objects frozen out of the GC", seconds, gc.get_freeze_count())

    def _check_layout(self) -> None:
        """The snapshot root must hold this algorithm's layout (or nothing yet)."""
        root = Path(self.config.snapshot_dir)
        self._root_store = SnapshotStore(root)  # creates it owner-only, or fixes its mode
        if self.dc and self._root_store.list():
            raise WorkerError(
                f"{root} holds whole-model snapshots (snap-*: --algorithm q, or an earlier version of the "
                "worker), but dc workers keep one snapshot store per partition (partition-<p>/); "
                "use a fresh --snapshot-dir"
            )
        if not self.dc and partition_dirs(root):
            raise WorkerError(f"{root} holds per-partition snapshots of dc workers; use a fresh --snapshot-dir")

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
        if self.dc:
            return new_partition_model(c.model_params())
        return QKMeans(**c.model_params())

    # -- ownership -------------------------------------------------------------------
    def _handle_rebalance(self) -> set[int]:
        """Handle what the listener recorded during ``poll()``; returns partitions taken now."""
        taken: set[int] = set()
        for kind, tps in self._rebalance.take():
            if kind == "revoked":
                started = time.monotonic()
                gone = sorted({p for _, p in tps} & set(self._units))
                for p in gone:
                    self._release(p)
                if gone:
                    log.info("revoked partition(s) %s: snapshotted and released in %.3fs", gone,
                             time.monotonic() - started)
            else:
                try:
                    partitions = partitions_of(_TPs(tps), self.config.input_topics)
                except OwnershipError as exc:
                    raise WorkerError(str(exc)) from None
                taken |= self._handle_assignment(partitions, self._rebalance.revoked_at)
        return taken

    def _handle_assignment(self, partitions: set[int], revoked_at: float | None) -> set[int]:
        """Own exactly ``partitions``: release the others, take the new ones, seek all."""
        from kafka import TopicPartition

        started = time.monotonic()
        for p in sorted(set(self._units) - partitions):
            self._release(p)
        new = sorted(partitions - set(self._units))
        waited = 0.0
        reused = []
        if self.dc:
            for p in new:
                unit, w, was_parked = self._take(p)
                waited += w
                if was_parked:
                    reused.append(p)
                self._units[p] = unit
                self.offsets.update(unit.offsets)
        elif new:
            if set(new) != set(range(self.n_partitions)):
                raise WorkerError("--algorithm q needs every partition (one global model); got "
                                  f"{sorted(partitions)} of {self.n_partitions}")
            unit, waited, _ = self._take(None)
            for p in new:
                self._units[p] = unit
        for p in list(self._parked):  # not ours any more: drop their points
            self._drop(self._parked.pop(p))
        self.owned = tuple(sorted(self._units))
        for p in self.owned:
            unit = self._units[p]
            for t in self.config.input_topics:
                tp = TopicPartition(t, p)
                self._consumer.seek(tp, unit.offsets[(t, p)])
        self._publish_due = True
        now = time.monotonic()
        record = {"partitions": list(self.owned), "taken": new, "reused": reused,
                  "handled_seconds": now - started, "lock_wait_seconds": waited,
                  "since_revoke_seconds": None if revoked_at is None else now - revoked_at}
        self.rebalances.append(record)
        self.assigned.set()
        log.info("own partition(s) %s (taken now %s, of which kept in memory %s); handled in %.3fs (%.3fs waiting for "
                 "previous owners)%s", list(self.owned), new, reused, record["handled_seconds"], waited,
                 "" if revoked_at is None else f", {record['since_revoke_seconds']:.3f}s after the revocation")
        return set(new)

    def _take(self, p: int | None) -> tuple[Unit, float, bool]:
        """Lock and restore one unit: from memory if we let go of it in this rebalance and nobody
        wrote it since, else its newest snapshot, else empty at the earliest offsets."""
        c = self.config
        directory = Path(c.snapshot_dir) if p is None else partition_dir(c.snapshot_dir, p)
        parked = self._parked.pop(p, None) if p is not None else None
        lock = parked.lock if parked is not None else OwnerLock(directory)
        waited = lock.acquire(c.handover_timeout)
        try:
            if parked is not None and parked.latest_seq_on_disk() == parked.last_seq:
                parked.summary_dirty = True
                return parked, waited, True
            store = self._root_store if p is None else SnapshotStore(directory)
            assert store is not None
            partitions = tuple(range(self.n_partitions)) if p is None else (p,)
            unit = Unit(p, partitions, store, lock, self._new_model(), EventTimeState(c.tombstone_horizon))
            self._restore_unit(unit)
        except BaseException:
            lock.release()
            raise
        return unit, waited, False

    def _restore_unit(self, unit: Unit) -> None:
        from kafka import TopicPartition

        snap = unit.store.load_latest()
        for skipped in unit.store.skipped:
            log.warning("ignored invalid snapshot %s: %s", skipped.path, skipped.reason)
        if snap is not None:
            restored = restore_unit(snap, self.config, unit.model, self.n_partitions, unit.key)
            if self._dim and restored.dim and restored.dim != self._dim:
                # Without this check the first insert would fail inside the model, at every restart.
                raise WorkerError(f"{unit.name} holds {restored.dim}-dimensional points, this worker's are "
                                  f"{self._dim}-dimensional: all partitions share one dimension (set --dim)")
            unit.store.prune(snap.seq)  # older ones may hold data of people deleted since
            unit.model, unit.semantics = restored.model, restored.semantics
            unit.offsets = {k: v for k, v in restored.offsets.items() if k[1] in unit.partitions}
            unit.unsent = restored.pending
            unit.version = restored.version
            unit.last_seq = unit.restored_seq = snap.seq
            self._dim = self._dim or restored.dim
            log.info("%s: restored snapshot %s: %d points, offsets %s", unit.name, snap.path,
                     restored.model.n_points_, {f"{t}/{p}": o for (t, p), o in sorted(unit.offsets.items())})
        tps = [TopicPartition(t, p) for t in self.config.input_topics for p in unit.partitions]
        missing = [tp for tp in tps if (tp.topic, tp.partition) not in unit.offsets]
        if missing:
            earliest = self._consumer.beginning_offsets(missing)
            for tp in missing:
                unit.offsets[(tp.topic, tp.partition)] = int(earliest.get(tp) or 0)
            if snap is None:
                log.info("%s: no snapshot in %s: replaying from the earliest offsets", unit.name, unit.store.root)
        self.restored_seqs[unit.key] = unit.restored_seq
        self.offsets.update(unit.offsets)
        unit.summary_dirty = True
        if unit.unsent:  # receipts of the restored snapshot may not have gone out: send them in the background
            assert snap is not None
            durable = SnapshotInfo(path=snap.path, seq=snap.seq, created_at=snap.created_at,
                                   size_bytes=snap.size_bytes)
            self._submit(SnapshotJob(unit.name, unit.store, snap.parts, snap.meta, tuple(unit.unsent), (),
                                     durable=durable), unit)
            unit.unsent = []

    def _release(self, p: int) -> None:
        """Let go of partition ``p``: snapshot, final summary, unlock; keep it parked in memory."""
        unit = self._units.pop(p)
        if any(q in self._units for q in unit.partitions):  # the q unit: released with its last partition
            return
        self._snapshot_now(unit)
        self._publish_summaries([unit])
        assert self._publisher is not None
        try:
            self._publisher.flush()
        except PublishError as exc:
            log.warning("%s: final summary not acknowledged: %s", unit.name, exc)
        unit.lock.release()
        for q in unit.partitions:
            for t in self.config.input_topics:
                self.offsets.pop((t, q), None)
                self.metrics.lag(t, q, 0)
        assert self._publishing is not None
        self._publishing.forget(p)
        self.owned = tuple(sorted(self._units))
        if unit.key is not None:
            self._parked[unit.key] = unit

    def _drop(self, unit: Unit) -> None:
        log.info("%s: owned by another worker now; dropped its %d points", unit.name, unit.model.n_points_)
        unit.lock.release()

    # -- the loop ----------------------------------------------------------------
    def step(self) -> int:
        """Poll and apply one batch, then do what is due; returns records handled."""
        before = self._fetch_positions()
        batch = self._consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=self.config.max_batch)
        taken = self._handle_rebalance()
        if taken and batch:  # fetched before we sought to the restored offsets
            batch = {tp: records for tp, records in batch.items() if tp.partition not in taken}
        after = self._fetch_positions()
        n = self._apply(batch, before, after) if batch else 0
        self._follow_empty(batch, before, after)
        self.records_handled += n
        if self._reader is not None and self._reader.poll(0):
            self._publish_due = True
        now = time.monotonic()
        if self._publish_due and now - self._last_publish >= self.config.model_publish_interval:
            self._publish()
        if now - self._last_housekeeping >= HOUSEKEEPING_INTERVAL:
            self._housekeeping()
        self._drain()
        if now - self._last_snapshot >= self.config.snapshot_interval:
            self._last_snapshot = now
            # Units still waiting from the last round keep their place: none starves behind the others.
            self._due += [u for u in self._unique_units() if (u.changed or u.unsent) and u not in self._due]
            self._slots.start_round(now, self.config.snapshot_interval, len(self._due))
        if self._due:
            self._snapshot_next()
        self.metrics.heartbeat()
        return n

    def _fetch_positions(self) -> dict[tuple[str, int], int]:
        """:meth:`Continuity.positions` of the owned partitions."""
        assert self._continuity is not None
        return self._continuity.positions(self._units.__contains__)

    def _follow_empty(self, batch: Mapping[Any, list[Any]], before: Mapping[tuple[str, int], int],
                      after: Mapping[tuple[str, int], int]) -> None:
        """Units in step that got no records, where the consumer moved on anyway (over a marker), move too."""
        assert self._continuity is not None

        def offset_of(key: tuple[str, int]) -> int | None:
            unit = self._units.get(key[1])
            return None if unit is None else unit.offsets[key]

        fetched = {(tp.topic, tp.partition) for tp, records in batch.items() if records}
        for key, position in self._continuity.moved_past(fetched, offset_of, before, after).items():
            self._units[key[1]].offsets[key] = self.offsets[key] = position

    def _apply(self, batch: Mapping[Any, list[Any]], before: Mapping[tuple[str, int], int],
               after: Mapping[tuple[str, int], int]) -> int:
        """Decode, fold into each unit's semantics, apply to its model, account.

        ``before``/``after``: :meth:`_fetch_positions` around the poll that fetched ``batch``.
        """
        assert self._continuity is not None
        work: dict[int, tuple[Unit, list[InsertEvent | DeleteEvent], list[tuple[Any, Any, bool]],
                              dict[tuple[str, int], int]]] = {}
        dead = 0
        for tp, records in batch.items():
            unit = self._units.get(tp.partition)
            if unit is None:
                continue  # not ours (any more)
            key = (tp.topic, tp.partition)
            taken = self._continuity.take(tp, records, unit.offsets[key], before, after)
            if taken is None:
                continue
            records, consumed_to = taken
            _, events, sources, consumed = work.setdefault(id(unit), (unit, [], [], {}))
            is_insert = tp.topic == self.config.insert_topic
            for record, event in zip(records, self._decode(records, is_insert)):
                if isinstance(event, BadRecord):
                    self._dead_letter(tp, record, event, "insert" if is_insert else "delete")
                    dead += 1
                    continue
                events.append(event)
                sources.append((tp, record, is_insert))
            consumed[key] = consumed_to

        n_events = 0
        seconds = 0.0
        for unit, events, sources, consumed in work.values():
            partitions = [tp.partition for tp, _, _ in sources]
            if self.dc and self.n_partitions > 1 and self.config.partitioner == "murmur2":
                events, sources, partitions, misplaced = self._on_their_partition(events, sources, partitions)
                dead += misplaced
            with self._priority.applying():
                plan = unit.semantics.apply(events, partitions)
                started = time.perf_counter()
                if plan.delete_ids:
                    unit.model.delete(plan.delete_ids)
                if plan.insert_ids:
                    unit.model.insert(plan.insert_ids, plan.insert_vectors)
                unit.model.flush()
                seconds += time.perf_counter() - started
            if plan.changes_model:
                unit.version += 1
            unit.offsets.update(consumed)  # only now: the model reflects these records
            self.offsets.update(consumed)
            unit.changed = unit.summary_dirty = True
            self._account_events(unit, events, plan.outcomes)
            n_events += len(events)
        if work:
            self._publish_due = True
            if n_events:
                self.metrics.model_update(seconds, n_events)
            self._account_model()
        return n_events + dead

    def _on_their_partition(
        self, events: list[InsertEvent | DeleteEvent], sources: list[tuple[Any, Any, bool]], partitions: list[int]
    ) -> tuple[list[InsertEvent | DeleteEvent], list[tuple[Any, Any, bool]], list[int], int]:
        """Dead-letter the events whose record is not on its id's partition; returns the rest.

        Each partition is its own DC subtree, with its own semantics: an id's
        insert and delete must meet in the same one (Kafka's default
        partitioner keyed by the id puts them there). A delete on another
        partition would be receipted while the point stays held.
        """
        expected = murmur2_partitions([e.id for e in events], self.n_partitions)
        placed = expected == np.asarray(partitions, dtype=np.int64)
        if placed.all():
            return events, sources, partitions, 0
        for i in np.flatnonzero(~placed).tolist():
            tp, record, is_insert = sources[i]
            bad = BadRecord("wrong_partition", f"id {events[i].id!r} belongs to partition {expected[i]} "
                                               f"(murmur2 of the id, Kafka's default), not {tp.partition}")
            self._dead_letter(tp, record, bad, "insert" if is_insert else "delete")
        keep = np.flatnonzero(placed).tolist()
        return ([events[i] for i in keep], [sources[i] for i in keep], [partitions[i] for i in keep],
                len(events) - len(keep))

    def _decode(self, records: list[Any], is_insert: bool) -> list[InsertEvent | DeleteEvent | BadRecord]:
        """Each record's event, or why it is bad; inserts decode as one batch (see :func:`decode_inserts`)."""
        c = self.config
        if is_insert:
            events, self._dim = decode_inserts([(r.value, r.key, _record_ts(r)) for r in records], dim=self._dim,
                                               max_id_bytes=c.max_id_bytes, max_value_bytes=c.max_value_bytes,
                                               max_ts_ahead=c.max_ts_ahead)
            return events
        deletes: list[InsertEvent | DeleteEvent | BadRecord] = []
        for r in records:
            try:
                deletes.append(decode_delete(r.value, record_ts=_record_ts(r), key=r.key, max_id_bytes=c.max_id_bytes,
                                             max_value_bytes=c.max_value_bytes, max_ts_ahead=c.max_ts_ahead))
            except BadRecord as bad:
                deletes.append(bad)
        return deletes

    def _dead_letter(self, tp: Any, record: Any, bad: BadRecord, kind: str) -> None:
        assert self._publisher is not None
        headers = dead_letter_headers(bad.reason, bad.detail, tp.topic, tp.partition, record.offset)
        value = record.value
        limit = min(self.config.max_value_bytes, DEAD_LETTER_MAX_VALUE)
        if value is not None and len(value) > limit:
            # Re-sent whole, an oversized record could exceed the producer's or the topic's limit:
            # a send error at every replay, a worker that never gets past it. Its head is enough.
            headers.append(("truncated_from", str(len(value)).encode()))
            value = value[:limit]
        self._publisher.send(self.config.dead_letter_topic, record.key, value, headers)
        self.metrics.dead_letter(bad.reason)
        self.metrics.events(kind, "dead_letter")
        log.debug("dead letter %s/%d@%d: %s", tp.topic, tp.partition, record.offset, bad)

    def _account_events(self, unit: Unit, events: list[InsertEvent | DeleteEvent], outcomes: list[str]) -> None:
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
                unit.new_pending.append(PendingReceipt(event.id, event.ts, now))
                if outcome == "applied":
                    forgotten.append(now - event.ts)
        for (kind, outcome), n in counts.items():
            m.events(kind, outcome, n)
        for kind, values in latency.items():
            if values:
                m.event_to_model(kind, values)
        if forgotten:
            m.delete_forgotten(forgotten)

    def _account_model(self) -> None:
        assert self._accounting is not None
        model = None if self.dc else self.model
        self._accounting.after_batch(self._unique_units(), lambda: self.model.centroids_, self._owns,
                                     model if isinstance(model, QKMeans) else None)

    def _housekeeping(self, final: bool = False) -> None:
        """Lag per owned partition, tombstone count, offsets committed for lag tools.

        The commit is asynchronous while running: a synchronous one is a broker round
        trip on the poll loop every second (traced: up to 26 ms in a slow phase). Only
        lag tools read it (the worker resumes from its snapshots), so the ``final`` one,
        at a clean stop, waits for the broker and the rest may fail quietly.
        """
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self._last_housekeeping = time.monotonic()
        tps = [TopicPartition(t, p) for t in self.config.input_topics for p in self.owned]
        offsets = dict(self.offsets)
        for tp in tps:
            high = self._consumer.highwater(tp)
            offset = offsets.get((tp.topic, tp.partition))
            if high is not None and offset is not None:
                self.metrics.lag(tp.topic, tp.partition, max(0, high - offset))
        self.metrics.tombstones(sum(u.semantics.n_tombstones for u in self._unique_units()))
        commit = {tp: OffsetAndMetadata(offsets[(tp.topic, tp.partition)], "", -1)
                  for tp in tps if (tp.topic, tp.partition) in offsets}
        if commit:
            try:
                if final:  # bounded: with the broker away it would hold the stop for ~45 s
                    self._consumer.commit(commit, timeout_ms=5000)
                else:
                    self._consumer.commit_async(commit, callback=_log_failed_commit)
            except Exception as exc:  # noqa: BLE001 - lag tools only; never worth stopping for
                log.debug("offset commit failed: %r", exc)

    # -- publishing: summaries and the global model ---------------------------------------
    def _publish_summaries(self, units: Iterable[Unit]) -> None:
        assert self._publishing is not None
        self._publishing.summaries(units, self._dim)

    def _publish(self) -> None:
        """Summaries of changed owned partitions, then the merged global model if it changed."""
        assert self._publishing is not None
        self._last_publish = time.monotonic()
        self._publish_due = False
        self._publishing.model(self._unique_units(), self._dim)
        if self._dim is None:  # learn it from the other workers' summaries
            self._dim = self._publishing.dim_seen()

    # -- snapshots and receipts ---------------------------------------------------------
    def _meta(self, unit: Unit, pending: Iterable[PendingReceipt]) -> dict[str, Any]:
        c = self.config
        offsets: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in sorted(unit.offsets.items()):
            offsets.setdefault(topic, {})[partition] = offset
        return {
            "format": META_FORMAT,
            "writer": f"stream-unlearn {__version__}",
            "algorithm": c.algorithm,
            "k": c.k,
            "seed": c.seed,
            "params": unit.model.get_params(),
            "partitions": self.n_partitions,
            "partition": unit.key,
            "topics": {"inserts": c.insert_topic, "deletes": c.delete_topic},
            "offsets": offsets,
            "dim": self._dim,
            "model_version": unit.version,
            "n_points": unit.model.n_points_,
            "pending_receipts": pending_to_meta(pending),
        }

    def snapshot(self) -> int | None:
        """Snapshot every owned unit that changed, prune older ones, send receipts; synchronous.

        Waits for the snapshots in flight, then has every changed unit
        written, one after the other (one unit's copies held at a time): on
        return all applied changes are durable and their receipts out, or the
        failure was logged and counted (and is retried at the next interval).
        Returns the seq of the last snapshot written, or None if there was
        nothing to do or a write failed.
        """
        self._last_snapshot = time.monotonic()
        self._due = []
        self._drain(wait=True)
        units = [u for u in self._unique_units() if u.changed or u.unsent]
        seq = None
        for unit in units:
            self._capture(unit)
            for done in self._drain(wait=True, names=[unit.name]):
                if done.last is not None and done.error is None:
                    seq = done.last.seq
            if self._kafka_away:
                break  # this unit's job found Kafka away: the others would wait as long (next interval)
        self._publish_summaries(units)
        return seq

    def _snapshot_next(self) -> None:
        """Capture the next due unit once the writer is idle and its slot in this round has come.

        One job at a time: the loop holds one unit's copies, not every unit's
        (at 1M points a partition's copy is ~250 MB), and each cut is taken
        just before it is written, so its receipts wait for no other unit's
        job. A round's captures are spread over the interval
        (:class:`~.snapshot_rounds.CaptureSlots`).
        """
        if self._writing or not self._slots.open(time.monotonic()):
            return
        while self._due:
            unit = self._due.pop(0)
            if self._owns(unit) and (unit.changed or unit.unsent):
                self._capture(unit)
                self._publish_summaries([unit])
                self._slots.taken()
                return

    def _snapshot_now(self, unit: Unit) -> None:
        """Snapshot one unit synchronously (hand-over): wait for its job in flight, write, wait."""
        self._drain(wait=True, names=[unit.name])
        if unit.changed or unit.unsent:
            self._capture(unit)
            self._drain(wait=True, names=[unit.name])

    def _owns(self, unit: Unit) -> bool:
        """Whether this worker still owns (one of) the unit's partitions."""
        return any(self._units.get(p) is unit for p in unit.partitions)

    def _capture(self, unit: Unit) -> None:
        """Take a unit's consistent cut on the loop and hand it to the writer thread.

        The loop only copies the state; the writer thread encodes the copies.

        The pending receipts move into the job; :meth:`_completed` puts
        them back if the snapshot listing them could not be written.
        """
        started = time.perf_counter()
        # compact: DC's leaf level (4 MB at the defaults, whatever the points) is refit at a restore
        parts = {MODEL_PART: unit.model.capture_state(compact=True), SEMANTICS_PART: unit.semantics.capture_bytes()}
        job = SnapshotJob(unit.name, unit.store, parts, self._meta(unit, unit.unsent + unit.new_pending),
                          tuple(unit.unsent), tuple(unit.new_pending), time.perf_counter() - started)
        unit.unsent, unit.new_pending, unit.changed = [], [], False
        self._submit(job, unit)

    def _submit(self, job: SnapshotJob, unit: Unit) -> None:
        assert self._writer is not None
        self._writing[unit.name] = unit
        self._writer.submit(job)

    def _drain(self, wait: bool = False, names: list[str] | None = None) -> list[Completion]:
        """Book the writer's completions (waiting for those of ``names``, or all, if ``wait``)."""
        if self._writer is None:
            return []
        done = self._writer.wait(names) if wait else self._writer.completions()
        for completion in done:
            self._completed(completion)
        return done

    def _completed(self, done: Completion) -> None:
        """Unit bookkeeping and metrics for a finished snapshot job (on the loop thread)."""
        job = done.job
        unit = self._writing.pop(job.name)
        if done.written is None:  # nothing durable: all stays pending, retried at the next interval
            unit.unsent = [*job.unsent, *unit.unsent]
            unit.new_pending = [*job.new_pending, *unit.new_pending]
            unit.changed = True
            reason = _retried_snapshot_failure(done.error)
            if reason is None:
                assert done.error is not None
                raise done.error  # a dead letter Kafka refused, or a bug: fatal, replayed after a restart
            self.metrics.snapshot_failed(reason)
            self._kafka_away = reason == "kafka_timeout"
            log.error("%s: snapshot failed, retrying in %.1fs: %s", unit.name, self.config.snapshot_interval,
                      done.error)
            return
        self._kafka_away = isinstance(done.receipts_error, PublishTimeout)
        if job.durable is None:
            info = done.written
            taken = job.captured_seconds + done.seconds.get("encode", 0.0) + done.seconds.get("write", 0.0)
            self.metrics.snapshot(taken, info.size_bytes,
                                  info.created_at)
            self.metrics.delete_persisted([info.created_at - p.deleted_ts for p in job.new_pending])
            log.debug("%s: snapshot %s: %d receipts pending", unit.name, info.path, len(job.pending))
        unit.last_seq = self.last_snapshot_seq = done.written.seq
        if job.pending and not done.receipts_acked:
            log.warning("%s: receipts not acknowledged, re-sent after the next snapshot: %s", unit.name,
                        done.receipts_error)
            unit.unsent = [*job.pending, *unit.unsent]
            return
        self.metrics.receipts(len(job.pending))
        if done.replace_error is not None:
            if not isinstance(done.replace_error, OSError):
                raise done.replace_error  # a bug: fatal, as on the loop before
            self.metrics.snapshot_failed("os_error")
            log.error("%s: could not replace snapshot %d after its receipts: %s", unit.name, done.written.seq,
                      done.replace_error)
            unit.changed = True  # retry at the next interval
        elif done.replaced is not None:
            unit.last_seq = self.last_snapshot_seq = done.replaced.seq

    # -- stop ----------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Clean stop: final snapshots, receipts, summaries, global model, committed offsets."""
        self.snapshot()
        if self._kafka_away:  # publishing and committing would wait on it too: stop now, replay at restart
            raise PublishTimeout("Kafka is not acknowledging records, and a snapshot waits for those before it: "
                                 "stopped without the final snapshots")
        if self._reader is not None:
            self._reader.poll(0)
        self._publish()
        self._housekeeping(final=True)
        assert self._publisher is not None
        self._publisher.flush()
        log.info("worker stopped cleanly; last snapshot %s", self.last_snapshot_seq)

    def _close(self) -> None:
        # Keep the models readable through .model after run() returned.
        if self._writer is not None:  # before the owner locks go: it may still write a snapshot
            self._writer.close()
        if self.dc:
            self._retired_models = {p: u.model for p, u in self._units.items()}
        else:
            units = self._unique_units()
            if units:
                self._retired_models = {-1: units[0].model}
        if self._writer is not None and self._writer.stuck:
            # A late snapshot from the stuck writer could land in a store a new owner already took
            # (and prune its newer ones): keep the locks; the process exit drops them.
            log.error("owner locks kept: the snapshot writer is still running")
        else:
            for unit in [*self._unique_units(), *self._parked.values()]:
                unit.lock.release()
        self._units, self._parked = {}, {}
        for closer in (getattr(self._consumer, "close", None), getattr(self._publisher, "close", None),
                       getattr(self._reader, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception as exc:  # noqa: BLE001 - closing must not mask the real error
                    log.debug("close failed: %r", exc)
        if self._own_metrics and self.metrics is not None:
            self.metrics.close()


def _retried_snapshot_failure(error: BaseException | None) -> str | None:
    """The metric reason of a snapshot failure worth retrying at the next interval; None if fatal.

    A disk error may pass (space freed, a mount back); so may a broker that
    has not acknowledged the dead letters before the cut yet (an outage: the
    producer still holds them and retries). Nothing was written either way,
    so the offsets never pass an unacknowledged dead letter.
    """
    if isinstance(error, OSError):
        return "os_error"
    if isinstance(error, PublishTimeout):
        return "kafka_timeout"
    return None


def _log_failed_commit(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.debug("offset commit failed: %r", response)


def _record_ts(record: Any) -> float | None:
    """A Kafka record's timestamp in seconds; None for a record without one (message format v0: -1)."""
    return record.timestamp / 1000.0 if record.timestamp is not None and record.timestamp >= 0 else None


class _TPs(list):
    """(topic, partition) pairs as objects with ``.topic`` and ``.partition``."""

    def __init__(self, pairs: Iterable[tuple[str, int]]) -> None:
        from kafka import TopicPartition

        super().__init__(TopicPartition(t, p) for t, p in pairs)


# --------------------------------------------------------------------------
# the command


def main_worker(args: argparse.Namespace) -> int:
    """Run the ``worker`` command: 0 after SIGTERM/SIGINT, 2 bad config, 1 failure (Kafka unreachable
    at start, records it would not take, a bug)."""
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
    except KafkaUnreachable as exc:
        log.error("%s", exc)
        return 1
    except PublishError as exc:  # nothing lost: the records after the last snapshot are replayed at a restart
        log.error("stopped: %s; a restart replays from the last snapshot (%s)", exc, worker.last_snapshot_seq)
        return 1
    except Exception:
        log.exception("worker failed")
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
