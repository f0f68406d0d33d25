"""The embedded broker, topic creation, and a produce -> consume -> decode loop."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable

import numpy as np
import pytest
from kafka import KafkaAdminClient

from stream_unlearn.broker import BrokerError, EmbeddedBroker, ensure_topics, free_port
from stream_unlearn.producer import EventProducer, ProduceError
from stream_unlearn.wire import DeleteEvent, InsertEvent, decode_delete, decode_insert

embedded_only = pytest.mark.skipif(
    bool(os.environ.get("STREAM_UNLEARN_TEST_BOOTSTRAP")),
    reason="tests the embedded broker itself",
)


def _partitions(bootstrap: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (desc,) = admin.describe_topics([topic])
        return len(desc["partitions"])
    finally:
        admin.close()


def test_broker_answers_metadata(broker: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def test_ensure_topics_creates_and_is_idempotent(broker: str, unique_topic: Callable[..., str]) -> None:
    a, b = unique_topic("inserts"), unique_topic("deletes")
    ensure_topics(broker, {a: 3, b: 1})
    assert _partitions(broker, a) == 3 and _partitions(broker, b) == 1
    ensure_topics(broker, {a: 3, b: 1})  # again: no error
    ensure_topics(broker, {a: 5})  # an existing topic is left as it is
    assert _partitions(broker, a) == 3


def test_produced_events_consume_back_identical(
    broker: str, unique_topic: Callable[..., str], consume: Callable[..., list]
) -> None:
    ins, dels = unique_topic("inserts"), unique_topic("deletes")
    ensure_topics(broker, {ins: 3, dels: 3})
    X = np.random.default_rng(1).standard_normal((20, 4))
    ids = [f"user-{i}" for i in range(20)]
    with EventProducer(broker, insert_topic=ins, delete_topic=dels, binary=False) as p:
        assert p.insert(ids, X, ts=np.arange(20.0) + 1000) == 20
        assert p.delete(["user-3", 7], ts=2000.0) == 2

    got = {}
    for r in consume(broker, ins, 20):
        ev = decode_insert(r.value, dim=4, record_ts=r.timestamp / 1000, key=r.key)
        got[ev.id] = ev
    assert len(got) == 20
    for i, pid in enumerate(ids):
        assert got[pid] == InsertEvent(pid, X[i], 1000.0 + i)

    deletes = [
        decode_delete(r.value, record_ts=r.timestamp / 1000, key=r.key) for r in consume(broker, dels, 2)
    ]
    assert sorted(deletes, key=lambda e: e.id) == [DeleteEvent("7", 2000.0), DeleteEvent("user-3", 2000.0)]


def test_keys_co_partition_inserts_and_deletes(
    broker: str, unique_topic: Callable[..., str], consume: Callable[..., list]
) -> None:
    ins, dels = unique_topic("inserts"), unique_topic("deletes")
    ensure_topics(broker, {ins: 4, dels: 4})
    ids = [str(i) for i in range(30)]
    with EventProducer(broker, insert_topic=ins, delete_topic=dels) as p:
        p.insert(ids, np.ones((30, 2)))
        p.delete(ids)
    ins_part = {r.key: r.partition for r in consume(broker, ins, 30)}
    del_part = {r.key: r.partition for r in consume(broker, dels, 30)}
    assert ins_part == del_part
    assert len(set(ins_part.values())) > 1


def test_record_timestamp_is_used_when_ts_is_absent(
    broker: str, unique_topic: Callable[..., str], consume: Callable[..., list]
) -> None:
    ins, dels = unique_topic("inserts"), unique_topic("deletes")
    ensure_topics(broker, {ins: 1, dels: 1})
    before = time.time()
    with EventProducer(broker, insert_topic=ins, delete_topic=dels) as p:
        p.delete(["a"])
    (r,) = consume(broker, dels, 1)
    ev = decode_delete(r.value, record_ts=r.timestamp / 1000, key=r.key)
    assert before - 1 <= ev.ts <= time.time() + 1


def test_producer_validates_shapes(broker: str) -> None:
    with EventProducer(broker) as p:
        with pytest.raises(ValueError):
            p.insert(["a", "b"], np.ones((3, 2)))
        with pytest.raises(ValueError):
            p.insert(["a"], np.ones(2))
        with pytest.raises(ValueError):
            p.delete(["a", "b"], ts=[1.0])


def test_illegal_topic_is_refused_at_send(broker: str) -> None:
    with EventProducer(broker, delete_topic="bad topic name!") as p, pytest.raises(ValueError):
        p.delete(["a"])


@embedded_only
def test_delivery_failures_surface_on_flush() -> None:
    # Kafka reports a lost record only in a callback; flush() must raise it.
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, {"t": 1})
        p = EventProducer(b.bootstrap, delete_topic="t", delivery_timeout_ms=2000, request_timeout_ms=1000)
        p.delete(["a"])
        p.flush()  # delivered: metadata is cached now
    try:
        p.delete(["b"])  # the broker is gone
        with pytest.raises(ProduceError, match="1 record"):
            p.flush(timeout=10)
        p.flush()  # errors are reported once
    finally:
        p.close(timeout=1)


# -- the broker process itself ---------------------------------------------------


@embedded_only
def test_start_stop_releases_port_and_restart_loses_data() -> None:
    b = EmbeddedBroker(port=0)
    with b:
        port = b.port
        assert b.bootstrap == f"127.0.0.1:{port}" and b.is_running()
        ensure_topics(b.bootstrap, {"kept": 1})
    assert not b.is_running() and b.pid is None
    with EmbeddedBroker(port=port) as again:  # the port is free again
        admin = KafkaAdminClient(bootstrap_servers=again.bootstrap)
        try:
            assert "kept" not in admin.list_topics()  # memory storage
        finally:
            admin.close()


@embedded_only
def test_port_in_use_fails_fast_and_clearly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        b = EmbeddedBroker(port=port, startup_timeout=10)
        with pytest.raises(BrokerError, match="already in use"):
            b.start()
        assert not b.is_running()


@embedded_only
def test_broker_death_during_start_reports_exit_code_and_log_tail() -> None:
    # A real process that dies at once, the way Tansu does on a bad argument.
    sh = shutil.which("sh")
    assert sh
    b = EmbeddedBroker(binary=sh, startup_timeout=10)
    with pytest.raises(BrokerError) as info:
        b.start()
    msg = str(info.value)  # "exited with code", not a start-up timeout: the death was noticed
    assert "exited with code" in msg and "log tail" in msg and "broker" in msg.split("log tail")[1]
    assert not b.is_running()


@embedded_only
def test_unusable_binary_is_an_error() -> None:
    with pytest.raises(OSError):
        EmbeddedBroker(binary="/nonexistent/tansu").start()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
