"""Shared fixtures: a real Kafka-protocol broker and fresh topic names.

The ``broker`` fixture is the bootstrap address (``"host:port"``) of an
embedded Tansu broker started once per test session, or of an external
Kafka named by ``STREAM_UNLEARN_TEST_BOOTSTRAP`` (e.g. the docker/ one).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from stream_unlearn.broker import EmbeddedBroker

BOOTSTRAP_ENV = "STREAM_UNLEARN_TEST_BOOTSTRAP"


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas with deprecated
    # importlib.resources calls: hundreds of warnings that are not ours.
    for msg in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{msg}:DeprecationWarning")


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap address of a running Kafka-protocol broker."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        yield external
        return
    with EmbeddedBroker(port=0) as b:
        yield b.bootstrap


def new_topic_name(prefix: str = "test") -> str:
    """A topic name no other test uses (safe on a shared external Kafka)."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_topic() -> Callable[..., str]:
    """Factory of fresh topic names: ``unique_topic("inserts")``."""
    return new_topic_name


def consume_all(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    """Read all records of ``topic`` from the start, expecting at least ``count``.

    Uses ``assign()`` (no consumer group, so no join delay) and stops at
    ``count`` records rather than trusting ``end_offsets()``, which Tansu
    reports wrongly. Fails the test if fewer arrive within ``timeout``.
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic!r} not found"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        assert len(records) >= count, f"got {len(records)} of {count} records from {topic!r}"
        for batch in consumer.poll(timeout_ms=300).values():  # catch extras
            records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.fixture
def consume() -> Callable[..., list]:
    """``consume(bootstrap, topic, count)``: see :func:`consume_all`."""
    return consume_all
