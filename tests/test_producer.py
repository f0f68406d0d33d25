"""The producer library against the real broker: where records land, and all-or-nothing sends."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
from kafka.errors import KafkaTimeoutError
from kafka.partitioner import Partitioner
from kafka.partitioner.default import murmur2

from stream_unlearn import publisher as publisher_module
from stream_unlearn.broker import ensure_topics
from stream_unlearn.config import WorkerConfig
from stream_unlearn.producer import EventProducer, ProduceError
from stream_unlearn.publisher import Publisher, PublishError
from stream_unlearn.wire import decode_delete, decode_insert, encode_insert


@pytest.fixture
def topics(broker: str, unique_topic: Callable[..., str]) -> tuple[str, str]:
    ins, dels = unique_topic("inserts"), unique_topic("deletes")
    ensure_topics(broker, {ins: 5, dels: 5})
    return ins, dels


IDS = ["alice", "bob", "élodie", "用户-42", "x" * 200, 7, 123456789, "0", "-", "a b c"] + [f"user-{i}" for i in range(60)]


def test_records_land_where_kafka_pythons_default_partitioner_puts_them(broker, topics, consume) -> None:
    """The producer picks partitions for a whole call at once; they must be the ones kafka-python's
    own default partitioner picks per record (the worker's DC tree hangs off them)."""
    X = np.random.default_rng(0).normal(size=(len(IDS), 3))
    with EventProducer(broker, insert_topic=topics[0], delete_topic=topics[1], binary=False) as producer:
        assert producer.insert(IDS, X, ts=5.0) == len(IDS)
        assert producer.delete(IDS[::2], ts=6.0) == len(IDS[::2])
    inserts = consume(broker, topics[0], len(IDS))
    deletes = consume(broker, topics[1], len(IDS[::2]))
    for record in inserts + deletes:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 5, record.key  # DefaultPartitioner's rule
    got = {decode_insert(r.value, dim=3, record_ts=r.timestamp / 1000, key=r.key).id: r.value for r in inserts}
    assert got == {str(pid): encode_insert(pid, x, 5.0, binary=False) for pid, x in zip(IDS, X)}
    assert sorted(decode_delete(r.value, record_ts=r.timestamp / 1000, key=r.key).id for r in deletes) == sorted(map(str, IDS[::2]))
    assert len({r.partition for r in inserts}) == 5


@pytest.mark.parametrize("bad_row, bad_ts, message", [
    (np.nan, 1.0, "row 3: vec contains NaN"),
    (1e50, 1.0, "row 3: vec overflows float32"),
    (1e300, 1.0, "row 3: vec contains NaN, infinity or a value beyond"),
    (0.0, "now", "ts must be a number"),
])
def test_a_bad_row_or_time_sends_nothing_of_the_call(broker, topics, consume, bad_row, bad_ts, message) -> None:
    X = np.ones((6, 2))
    X[3, 1] = bad_row
    ts = [1.0, 2.0, 3.0, bad_ts, 5.0, 6.0]
    with EventProducer(broker, insert_topic=topics[0], delete_topic=topics[1]) as producer:
        with pytest.raises((ValueError, TypeError), match=message):
            producer.insert([f"p{i}" for i in range(6)], X, ts)
        with pytest.raises((ValueError, TypeError), match="ts must"):
            producer.delete(["p0", "p1"], [1.0, float("inf")])
        producer.insert(["after"], np.ones((1, 2)), 9.0)  # the producer still works
    assert [r.key for r in consume(broker, topics[0], 1)] == [b"after"]
    assert consume(broker, topics[1], 0) == []


def test_a_partitioner_given_in_the_kafka_config_is_used(broker, topics, consume) -> None:
    class Last(Partitioner):
        def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
            return max(cluster.partitions_for_topic(topic))

    with EventProducer(broker, insert_topic=topics[0], delete_topic=topics[1], partitioner=Last()) as producer:
        producer.insert(IDS[:10], np.zeros((10, 2)), 1.0)
    assert {r.partition for r in consume(broker, topics[0], 10)} == {4}


def test_the_workers_acked_sends_land_where_the_default_partitioner_puts_them(broker, unique_topic, consume,
                                                                             monkeypatch) -> None:
    """Receipts go out through Publisher.send_acked with partitions computed for each step of 16 (here),
    and a pause before each step (where the worker's loop may go first)."""
    monkeypatch.setattr(publisher_module, "_SEND_STEP", 16)
    topic = unique_topic("receipts")
    ensure_topics(broker, {topic: 3})
    publisher = Publisher(WorkerConfig(bootstrap_servers=broker))
    pauses = []
    try:
        publisher.send_acked(topic, [(str(pid).encode(), b"v%d" % i) for i, pid in enumerate(IDS)],
                             pause=lambda: pauses.append(1))
    finally:
        publisher.close()
    assert len(pauses) == -(-len(IDS) // 16)
    records = consume(broker, topic, len(IDS))
    assert sorted(r.key for r in records) == sorted(str(pid).encode() for pid in IDS)
    for record in records:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 3, record.key


def test_an_error_in_the_block_is_raised_and_a_failed_close_after_it_is_logged(
        broker, topics, consume, monkeypatch, caplog) -> None:
    """Leaving the block with an error still flushes and closes; a flush that fails then must not
    replace the caller's error, nor vanish: it is logged."""
    producer = EventProducer(broker, insert_topic=topics[0], delete_topic=topics[1])
    real_flush = producer.flush

    def flush_then_fail(timeout: float | None = None) -> None:
        real_flush(timeout)
        raise ProduceError("2 record(s) failed, first error: refused")

    monkeypatch.setattr(producer, "flush", flush_then_fail)
    with caplog.at_level(logging.WARNING, logger="stream_unlearn.producer"), \
            pytest.raises(KeyError, match="the caller's error"), producer:
        producer.delete(["gone"], 1.0)
        raise KeyError("the caller's error")
    assert "closing the producer after an error failed too" in caplog.text
    assert "2 record(s) failed, first error: refused" in caplog.text
    assert [r.key for r in consume(broker, topics[1], 1)] == [b"gone"]  # flushed and closed all the same


def test_an_id_longer_than_the_workers_limit_is_refused_before_anything_is_sent(broker, topics, consume) -> None:
    """The worker dead-letters ids over --max-id-bytes (256 by default): the producer refuses them first."""
    long_id = "é" * 129  # 129 characters, 258 bytes
    with EventProducer(broker, insert_topic=topics[0], delete_topic=topics[1]) as producer:
        with pytest.raises(ValueError, match="row 1: id is 258 bytes, over max_id_bytes=256"):
            producer.insert(["ok", long_id], np.ones((2, 2)), 1.0)
        with pytest.raises(ValueError, match="id is 258 bytes"):
            producer.delete([long_id], 2.0)
        producer.delete(["x" * 256], 3.0)  # the limit itself is fine
    assert consume(broker, topics[0], 0) == []
    assert [r.key for r in consume(broker, topics[1], 1)] == [b"x" * 256]
    with EventProducer(broker, insert_topic=topics[0], delete_topic=topics[1], max_id_bytes=300) as producer:
        producer.insert([long_id], np.ones((1, 2)), 1.0)  # for a worker started with --max-id-bytes 300
    assert [r.key for r in consume(broker, topics[0], 1)] == [long_id.encode()]


def test_unacknowledged_records_are_counted_per_topic_on_flush(broker) -> None:
    """The broker here acknowledges everything, so failures are fed in as the producer's errback
    delivers them: an operator reading the error learns which topics lost records."""
    publisher = Publisher(WorkerConfig(bootstrap_servers=broker))
    try:
        publisher.flush()  # nothing failed
        for topic in ("unlearn.dead-letter", "unlearn.model", "unlearn.dead-letter"):
            publisher._on_error(topic, KafkaTimeoutError("no ack"))
        with pytest.raises(PublishError, match=r"3 record\(s\) not acknowledged \(unlearn.dead-letter: 2, "
                                               r"unlearn.model: 1\), first: KafkaTimeoutError"):
            publisher.flush()
        publisher.flush()  # reported once
    finally:
        publisher.close()
