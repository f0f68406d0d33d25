"""Who owns which partition: the consumer-group listener and per-partition owner locks.

Kafka's consumer group decides which worker owns which partitions of the
co-partitioned insert and delete topics. kafka-python calls a
:class:`ConsumerRebalanceListener` from inside ``poll()``; ours only records
what happened (:class:`RebalanceLog`), and the worker's loop does the work
right after ``poll()`` returns: snapshot and release what was revoked, then
acquire and restore what was assigned.

Between an old owner releasing a partition and a new owner restoring it, the
shared snapshot directory is the hand-over. :class:`OwnerLock` (``flock`` on
``<store>/.owner``) makes it safe: an owner holds the lock of each partition
it owns, and releases it only after the partition's final snapshot is
durable; a new owner waits for the lock before it restores. A worker killed
with -9 loses its locks at once (the kernel drops them), and its successor
restores its last snapshot and replays from there. The lock also stops two
workers that disagree on ownership (e.g. a zombie whose session expired)
from writing one partition's store at the same time.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["OWNER_LOCK_NAME", "OwnerLock", "OwnershipError", "RebalanceLog", "partitions_of"]

OWNER_LOCK_NAME = ".owner"


class OwnershipError(RuntimeError):
    """A partition assignment the worker cannot work with, or a lock it could not get."""


def partitions_of(tps: Iterable[Any], topics: tuple[str, str]) -> set[int]:
    """Partition numbers of an assignment of the two co-partitioned input topics.

    Raises :class:`OwnershipError` if the assignment is not co-partitioned
    (a worker must own the same partition numbers of both topics: an id's
    insert and delete share a partition) or names another topic.
    """
    by_topic: dict[str, set[int]] = {t: set() for t in topics}
    for tp in tps:
        if tp.topic not in by_topic:
            raise OwnershipError(f"assigned a partition of unexpected topic {tp.topic!r}")
        by_topic[tp.topic].add(int(tp.partition))
    a, b = (by_topic[t] for t in topics)
    if a != b:
        raise OwnershipError(
            f"assignment is not co-partitioned: {topics[0]} partitions {sorted(a)} but {topics[1]} "
            f"partitions {sorted(b)}; use the RangeAssignor (the default) for workers of one group"
        )
    return a


class RebalanceLog:
    """A ``ConsumerRebalanceListener`` that only records events, for the poll loop to handle.

    Built lazily as a subclass of kafka-python's listener class so that this
    module imports without Kafka.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, frozenset[tuple[str, int]]]] = []
        #: monotonic time of the last revocation (to measure rebalances)
        self.revoked_at: float | None = None

    def listener(self) -> Any:
        from kafka import ConsumerRebalanceListener

        log = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                log._record("revoked", revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                log._record("assigned", assigned)

        return _Listener()

    def _record(self, kind: str, tps: Any) -> None:
        with self._lock:
            if kind == "revoked":
                self.revoked_at = time.monotonic()
            self._events.append((kind, frozenset((tp.topic, int(tp.partition)) for tp in tps)))

    def take(self) -> list[tuple[str, frozenset[tuple[str, int]]]]:
        """The events recorded since the last call, oldest first."""
        with self._lock:
            events, self._events = self._events, []
        return events


class OwnerLock:
    """An exclusive ``flock`` on ``<directory>/.owner``, held while a partition is owned."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / OWNER_LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float, poll: float = 0.05) -> float:
        """Take the lock, waiting up to ``timeout`` seconds; returns the seconds waited."""
        if self._fd is not None:
            return 0.0
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - started > timeout:
                        raise OwnershipError(
                            f"{self.path} is still locked by another worker after {timeout:.0f}s "
                            "(a previous owner that has not let go of the partition)"
                        ) from None
                    time.sleep(poll)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return time.monotonic() - started

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
