"""What the worker writes to Kafka besides receipts: model messages and dead letters.

A thin layer over kafka-python's producer whose send failures surface on
``flush`` (called before a snapshot makes offsets durable), so a record the
broker never acknowledged is replayed after a restart rather than lost.

A broker that does not answer (down, restarting, cut off) is not a failure:
records wait in the producer, retried until it is back, and a flush that
times out raises :class:`PublishTimeout`, after which the caller may simply
flush again later. Only a record the broker refused, or one still
unacknowledged after :data:`DELIVERY_TIMEOUT_MS`, raises the plain
:class:`PublishError`: it is gone from the producer.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import msgpack
import numpy as np

from .config import WorkerConfig
from .pieces import Pause, no_pause
from .producer import send_keyed

log = logging.getLogger(__name__)

#: Longest ``detail`` header of a dead letter, in characters.
_DETAIL_MAX = 1000
#: :meth:`Publisher.send_acked` sends this many records between two pauses.
_SEND_STEP = 256
#: How long the producer retries a record before it gives up on it: a day, not kafka-python's 2
#: minutes, so that a broker outage of minutes (a rolling restart, a network cut) only delays the
#: records and the snapshots that wait for them; a dropped dead letter would stop the worker.
DELIVERY_TIMEOUT_MS = 24 * 3600 * 1000
#: How long a send waits for a topic's metadata (kafka-python's default); see :meth:`Publisher.learn_topics`.
MAX_BLOCK_MS = 60_000



def encode_global_message(centroids: np.ndarray, n_points: int, version: int, algorithm: str,
                          complete: bool = True, partitions: Mapping[int, tuple[int, int]] | None = None,
                          summary_version: str = "") -> bytes:
    """The model-topic value: the global centroids (float64 LE bytes plus shape) and where they stand.

    ``version`` is the number of input records the model covers (it only
    grows); ``complete`` is False while some partition has no summary yet;
    ``partitions`` maps each partition to its ``[insert, delete]`` offsets.
    """
    C = np.ascontiguousarray(centroids, dtype="<f8")
    return msgpack.packb(
        {"centroids": C.tobytes(), "shape": list(C.shape), "n_points": int(n_points),
         "version": int(version), "ts": time.time(), "algorithm": algorithm, "complete": bool(complete),
         "partitions": {str(p): [int(a), int(b)] for p, (a, b) in (partitions or {}).items()},
         "summary_version": summary_version},
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


class PublishTimeout(PublishError):
    """Records are not acknowledged yet: the producer still holds them and retries (flush again later)."""


class UnknownTopic(RuntimeError):
    """A topic the worker writes to has no metadata: it does not exist (or Kafka stopped answering)."""


class Publisher:
    """A KafkaProducer whose send failures surface on :meth:`flush`; thread-safe (so is the producer)."""

    def __init__(self, config: WorkerConfig) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=config.bootstrap_list,
            acks="all",
            linger_ms=5,
            max_request_size=max(1 << 20, config.max_value_bytes + (64 << 10)),
            client_id="stream-unlearn-worker",
            delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
            max_block_ms=MAX_BLOCK_MS,
        )
        self._lock = threading.Lock()
        self._errors: list[tuple[str, BaseException]] = []  # (topic, error)

    def learn_topics(self, topics: Iterable[str]) -> None:
        """Fetch the partitions of ``topics`` now, while Kafka answers.

        A producer's first send to a topic waits for its metadata, up to 60 s,
        and then raises: in an outage the worker's first dead letter would
        stall its loop and then stop it. With the metadata known, a send only
        queues the record. Raises :class:`UnknownTopic` for a topic with no
        metadata after :data:`MAX_BLOCK_MS` (missing, and the broker does not
        create topics).
        """
        from kafka.errors import KafkaTimeoutError

        for topic in topics:
            try:
                self._producer.partitions_for(topic)
            except KafkaTimeoutError as exc:
                raise UnknownTopic(f"Kafka gave no partitions for topic {topic!r} within {MAX_BLOCK_MS / 1000:g}s: "
                                   f"it is missing and the broker does not create topics (create it, or let "
                                   f"the worker: --create-topics), or Kafka stopped answering") from exc

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        if key is None and value is None:
            value = b""  # Kafka needs one of them
        future = self._producer.send(topic, key=key, value=value, headers=headers)
        future.add_errback(functools.partial(self._on_error, topic))

    def _on_error(self, topic: str, exc: BaseException) -> None:
        with self._lock:
            self._errors.append((topic, exc))

    def send_acked(self, topic: str, records: Sequence[tuple[bytes, bytes]], timeout: float = 30.0,
                   pause: Pause = no_pause) -> None:
        """Send ``(key, value)`` records and wait until the broker acknowledged each one.

        Their failures are raised here (:class:`PublishError`) and not on
        :meth:`flush`, so a thread waiting for its own records (the snapshot
        writer's receipts) neither takes nor hides the errors of records
        other threads sent meanwhile. They are sent ``_SEND_STEP`` at a time
        with ``pause()`` before each step (sending holds the GIL).
        """
        futures = []
        for start in range(0, len(records), _SEND_STEP):
            pause()
            step = records[start : start + _SEND_STEP]
            futures += send_keyed(self._producer, topic, [key for key, _ in step], [value for _, value in step])
        self._flush_producer(timeout)
        failed = [f.exception for f in futures if not f.succeeded()]
        if failed:
            raise PublishError(f"{len(failed)} of {len(futures)} record(s) to {topic} not acknowledged, "
                               f"first: {failed[0]!r}")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record sent so far is acknowledged; raise :class:`PublishError` for those
        that failed, :class:`PublishTimeout` if some are still unacknowledged after ``timeout`` seconds."""
        self._flush_producer(timeout)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            per_topic = ", ".join(f"{topic}: {n}" for topic, n in collections.Counter(t for t, _ in errors).items())
            raise PublishError(f"{len(errors)} record(s) not acknowledged ({per_topic}), first: {errors[0][1]!r}")

    def _flush_producer(self, timeout: float) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as exc:
            raise PublishTimeout(f"Kafka acknowledged not every record within {timeout:g}s "
                                 f"(broker down or unreachable?): {exc}") from exc

    def close(self, timeout: float = 10.0) -> None:
        """Close the producer; records still unacknowledged after ``timeout`` seconds are dropped.

        Dropping them loses nothing: no snapshot's offsets passed a record
        Kafka had not acknowledged (:meth:`flush`), so a restart replays and
        sends them again.
        """
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.close(timeout=timeout)
        except KafkaTimeoutError:
            # kafka-python's close() flushes first and raises before its own force-close; its
            # __del__ would then close again at exit and print that error with a traceback.
            log.warning("closed the Kafka producer with records Kafka has not acknowledged (broker away?); "
                        "a restart sends them again")
            self._force_close()

    def _force_close(self) -> None:
        """What kafka-python's ``close()`` does after a flush that timed out (private parts, guarded)."""
        sender = getattr(self._producer, "_sender", None)
        if sender is not None and hasattr(sender, "force_close"):
            sender.force_close()
        if hasattr(self._producer, "_closed"):
            self._producer._closed = True
