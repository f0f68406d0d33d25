"""Snapshot I/O off the worker's poll loop: one background writer thread.

The loop captures a unit's consistent cut (copies of the model and
semantics state, offsets in ``meta``, the receipts it makes durable) in a
:class:`SnapshotJob` and submits it; the writer thread then, in this order:

0. encodes the copied state into the parts' bytes (off the loop: at 100k
   points the encoding takes ~4x as long as the copies);
1. flushes the producer, so that dead letters sent before the cut are
   acknowledged before a snapshot's offsets pass them;
2. writes the snapshot (temp dir, fsync, rename) and prunes every older
   one of that unit: after this the deleted points are on no disk;
3. sends the receipts and waits for their acknowledgement;
4. writes a replacement snapshot without the receipts' ids (parts
   hard-linked, not hashed again) and prunes the first.

Between small steps of 0-4 it pauses while the loop applies a batch
(:mod:`.loop_priority`), within a budget per job.

It hands a :class:`Completion` back through a queue that the loop drains,
so unit state and metrics are only touched on the loop thread. The loop
keeps at most one job per unit in flight (:meth:`SnapshotWriter.busy`), so
the queue is bounded by the number of units. A kill -9 at any point leaves
the newest durable snapshot (step 2 or 4) or the one before it on disk,
each a consistent cut that lists the receipts not known to be out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .loop_priority import LoopPriority
from .pieces import Encoder
from .publisher import Publisher
from .receipts import PendingReceipt, encode_receipt
from .snapshot import SnapshotInfo, SnapshotStore

__all__ = ["Completion", "SnapshotJob", "SnapshotWriter", "run_job"]

log = logging.getLogger(__name__)

THREAD_NAME = "snapshot-writer"


@dataclass(frozen=True, eq=False)
class SnapshotJob:
    """A unit's consistent cut, captured on the loop, to make durable and announce.

    ``durable``: the job only sends the receipts of this existing snapshot
    (a restored one) and replaces it; ``parts`` are then its parts.
    """

    #: the unit's name: at most one job per name is in flight
    name: str
    store: SnapshotStore
    #: each part's bytes, or the function that encodes the captured state into them (run once)
    parts: dict[str, bytes | Encoder]
    meta: dict[str, Any]
    #: receipts already listed in the last durable snapshot, then those of deletes applied since
    unsent: tuple[PendingReceipt, ...]
    new_pending: tuple[PendingReceipt, ...]
    captured_seconds: float = 0.0
    durable: SnapshotInfo | None = None

    @property
    def pending(self) -> tuple[PendingReceipt, ...]:
        return self.unsent + self.new_pending


@dataclass(eq=False)
class Completion:
    """What became of a job: handed back to the loop."""

    job: SnapshotJob
    #: the snapshot listing the receipts; None if it could not be written (``error`` says why)
    written: SnapshotInfo | None = None
    error: BaseException | None = None
    receipts_acked: bool = False
    receipts_error: BaseException | None = None
    #: the replacement without the receipts' ids, or why it failed
    replaced: SnapshotInfo | None = None
    replace_error: BaseException | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def last(self) -> SnapshotInfo | None:
        """The newest snapshot this job left on disk."""
        return self.replaced or self.written


def run_job(job: SnapshotJob, publisher: Publisher, receipts_topic: str,
            priority: LoopPriority | None = None) -> Completion:
    """Steps 0-4 of the module docstring for one job (any thread); never raises.

    ``priority``: the loop's; the job pauses for it between steps (its
    ``waited`` seconds are in ``seconds["yielded"]``, and in the phases').
    """
    done = Completion(job)
    clock = time.perf_counter()
    if priority is None:
        priority = LoopPriority(budget=0.0)  # nobody applies under it: it never waits
    priority.job_started()
    pause = priority.pause

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        done.seconds[phase] = now - clock
        done.seconds["yielded"] = priority.waited
        clock = now

    try:
        parts = {name: part(pause) if callable(part) else part for name, part in job.parts.items()}
        lap("encode")
        if job.durable is None:
            publisher.flush()  # dead letters before the offsets that pass them
            lap("flush")
            done.written = job.store.write(parts, job.meta, pause)
            lap("write")
            job.store.prune(done.written.seq, verify=False)  # write() returned: it is durable
            lap("prune")
        else:
            done.written = job.durable
    except BaseException as exc:  # noqa: BLE001 - handed to the loop, which decides (OSError: retry later)
        done.error = exc
        return done
    if not job.pending:
        return done
    try:
        publisher.send_acked(receipts_topic, [encode_receipt(p, done.written.seq) for p in job.pending],
                             pause=pause)
        done.receipts_acked = True
    except Exception as exc:  # noqa: BLE001 - not acknowledged: they stay listed on disk and are re-sent
        done.receipts_error = exc
        return done
    finally:
        lap("receipts")
    try:
        done.replaced = job.store.relabel(done.written.path, {**job.meta, "pending_receipts": []})
        job.store.prune(done.replaced.seq, verify=False)
    except BaseException as exc:  # noqa: BLE001 - the receipts are out; the loop decides (OSError: retry later)
        done.replace_error = exc
    lap("replace")
    return done


class SnapshotWriter:
    """One daemon thread running :func:`run_job` for submitted jobs, in order.

    Only the loop thread calls the methods; it keeps at most one job per
    unit in flight and drains completions with :meth:`completions` or
    :meth:`wait`.
    """

    def __init__(self, publisher: Publisher, receipts_topic: str, priority: LoopPriority | None = None) -> None:
        self._publisher = publisher
        self._topic = receipts_topic
        self._priority = priority
        self._jobs: queue.SimpleQueue[SnapshotJob | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._in_flight: set[str] = set()
        self._thread: threading.Thread | None = None
        #: close() gave up waiting: the thread may still write a snapshot into the units' stores
        self.stuck = False

    def busy(self, name: str | None = None) -> bool:
        """A job of unit ``name`` (of any unit if None) is in flight."""
        return bool(self._in_flight) if name is None else name in self._in_flight

    def submit(self, job: SnapshotJob) -> None:
        if job.name in self._in_flight:
            raise RuntimeError(f"{job.name}: a snapshot is already in flight")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()
        self._in_flight.add(job.name)
        self._jobs.put(job)

    def completions(self) -> list[Completion]:
        """Completions that arrived, without waiting."""
        out: list[Completion] = []
        while True:
            try:
                out.append(self._take(block=False))
            except queue.Empty:
                return out

    def wait(self, names: Sequence[str] | None = None) -> list[Completion]:
        """Block until no job of the units ``names`` (of any unit if None) is in flight.

        Returns every completion taken meanwhile, of any unit.
        """
        out = self.completions()
        while any(self.busy(n) for n in names) if names is not None else self.busy():
            out.append(self._take(block=True))
        return out

    def _take(self, block: bool) -> Completion:
        done = self._done.get(block=block)
        self._in_flight.discard(done.job.name)
        return done

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                done = run_job(job, self._publisher, self._topic, self._priority)
            except BaseException as exc:  # noqa: BLE001 - run_job does not raise; never leave the loop waiting anyway
                done = Completion(job, error=exc)
            self._done.put(done)

    def close(self, timeout: float = 60.0) -> list[Completion]:
        """Let the jobs in flight finish, stop the thread; returns their completions."""
        if self._thread is None:
            return []
        self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("snapshot writer still busy after %.0fs; leaving it", timeout)
            self.stuck = True
        self._thread = None
        return self.completions()

