"""The benchmarks' load generator: the project's wire records, sent by librdkafka when it is installed.

Why: the worker and its load generator share this 2-core machine. At 5,000
events/s kafka-python's producer costs ~120 us of CPU per event here (0.6
of a core; measured with the paced producer of ``stream.py`` alone), which
the worker under test then does not have. librdkafka (``confluent-kafka``,
the ``bench`` extra) sends the same records for ~45 us, encoding included
(~18 us for records encoded beforehand). The records are the
same bytes either way: values from :mod:`stream_unlearn.wire`, keys the ids
in UTF-8, partitions by Kafka's default rule (murmur2 of the key, computed
here as :class:`~stream_unlearn.producer.EventProducer` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_unlearn.hashing import murmur2_key_partitions
from stream_unlearn.producer import EventProducer, ProduceError
from stream_unlearn.wire import encode_delete, encode_inserts

__all__ = ["CLIENTS", "LibrdkafkaEventProducer", "default_client", "event_producer"]

CLIENTS = ("librdkafka", "kafka-python")


def default_client() -> str:
    """librdkafka if ``confluent-kafka`` is importable, else kafka-python."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "librdkafka"


def event_producer(client: str, bootstrap: str, insert_topic: str, delete_topic: str, partitions: int,
                   linger_ms: int) -> Any:
    """An object with EventProducer's ``insert``, ``delete``, ``flush`` and ``close`` over ``client``."""
    if client == "kafka-python":
        return EventProducer(bootstrap, insert_topic=insert_topic, delete_topic=delete_topic, linger_ms=linger_ms)
    if client == "librdkafka":
        return LibrdkafkaEventProducer(bootstrap, insert_topic, delete_topic, partitions, linger_ms)
    raise ValueError(f"unknown load client {client!r}; one of {', '.join(CLIENTS)}")


class LibrdkafkaEventProducer:
    """EventProducer's records over confluent-kafka; topics of ``partitions`` partitions (0..n-1)."""

    def __init__(self, bootstrap: str, insert_topic: str, delete_topic: str, partitions: int,
                 linger_ms: int) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
                                   "client.id": "stream-unlearn-bench-load"})
        self.insert_topic, self.delete_topic, self.partitions = insert_topic, delete_topic, partitions
        self._failed = 0  # delivery reports are served by poll() and flush(), on the sending thread
        self._first_error: Any = None

    def insert(self, ids: Sequence[str], X: np.ndarray, ts: float) -> int:
        self._send(self.insert_topic, ids, encode_inserts(ids, np.asarray(X, dtype=np.float64), [ts] * len(ids)))
        return len(ids)

    def delete(self, ids: Sequence[str], ts: float) -> int:
        self._send(self.delete_topic, ids, [encode_delete(pid, ts) for pid in ids])
        return len(ids)

    def _send(self, topic: str, ids: Sequence[str], values: list[bytes]) -> None:
        keys = [pid.encode("utf-8") for pid in ids]
        produce = self._producer.produce
        for key, value, partition in zip(keys, values, murmur2_key_partitions(keys, self.partitions).tolist()):
            produce(topic, value=value, key=key, partition=partition, on_delivery=self._delivered)
        self._producer.poll(0)  # serve delivery reports

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failed += 1
            self._first_error = self._first_error or err

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        failed, first, self._failed, self._first_error = self._failed, self._first_error, 0, None
        if left or failed:
            raise ProduceError(f"{failed} record(s) failed and {left} unsent, first error: {first!r}")

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
