"""The worker end to end through a real broker: semantics, dead letters, receipts, model topic, config."""

from __future__ import annotations

import logging
import math
import struct
import threading
import time

import msgpack
import numpy as np
import pytest
from kafka import KafkaProducer
from worker_support import (
    Topics,
    create_topics,
    files_containing,
    fresh_fit,
    ids,
    make_config,
    running_worker,
    wait_consumed,
    wait_until,
)

from stream_unlearn import DCKMeans
from stream_unlearn.cli import build_parser, main
from stream_unlearn.config import ConfigError, WorkerConfig, config_from_args
from stream_unlearn.hashing import murmur2_partition
from stream_unlearn.producer import EventProducer
from stream_unlearn.receipts import decode_receipt
from stream_unlearn.wire import BAD_RECORD_REASONS, encode_delete, encode_insert
from stream_unlearn.worker import Worker, WorkerError


def producer(config: WorkerConfig) -> EventProducer:
    """Exact float64 vectors; topics created first (auto-creation would pick its own partition count)."""
    create_topics(config)
    return EventProducer(config.bootstrap_servers, insert_topic=config.insert_topic,
                         delete_topic=config.delete_topic, binary=False)


@pytest.mark.parametrize("algorithm", ["dc", "q"])
def test_out_of_order_deletes_reinserts_and_redelivery(broker, unique_topic, tmp_path, consume, algorithm):
    """DC keeps the per-id semantics per partition; Q, one global unit, for all partitions at once."""
    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps", algorithm=algorithm)
    rng = np.random.default_rng(3)
    names = ids("p", 300)
    X = rng.normal(size=(300, 4))
    t = 1_000.0
    survivors = {names[i]: X[i] for i in range(300)}
    with producer(config) as p:
        # 1. deletes that overtake their inserts: the late inserts are older, so dropped
        p.delete(names[:30], ts=t + 10)
        p.insert(names, X, ts=t)
        for i in range(30):
            del survivors[names[i]]
        # 2. plain deletes, then re-inserts with a new vector and a newer time
        p.delete(names[30:60], ts=t + 20)
        p.insert(names[50:60], X[50:60] + 1.0, ts=t + 30)
        for i in range(30, 60):
            del survivors[names[i]]
        for i in range(50, 60):
            survivors[names[i]] = X[i] + 1.0
        # 3. at-least-once redelivery and replacement of held points
        p.insert(names[100:120], X[100:120], ts=t)
        p.insert(names[120:130], X[120:130] * 2, ts=t + 5)
        for i in range(120, 130):
            survivors[names[i]] = X[i] * 2
        # 4. a stale delete (older than the held insert) changes nothing
        p.delete(names[120:125], ts=t + 1)
        p.flush()
    n_records = 30 + 300 + 30 + 10 + 20 + 10 + 5

    with running_worker(config) as worker:
        wait_consumed(worker, n_records)
    # The model is read once the worker thread has stopped (models are not thread-safe).
    held_ids, held_X, _ = worker.model.held()
    assert {i: tuple(v) for i, v in zip(held_ids, held_X)} == {i: tuple(v) for i, v in survivors.items()}
    assert np.array_equal(worker.model.centroids_, fresh_fit(config, survivors))
    assert worker.model.verify()
    receipts = [decode_receipt(r.value) for r in consume(broker, config.receipts_topic, 35 + 30)]
    assert {(r.id, r.deleted_ts) for r in receipts} == {(names[i], t + 10) for i in range(30)} | {
        (names[i], t + 20) for i in range(30, 60)} | {(names[i], t + 1) for i in range(120, 125)}


#: A record timestamp of -1: what a message-format-v0 record reads as (no event time to replay it by).
NO_TIMESTAMP = -1


def malformed_corpus(dim: int) -> list[tuple[bytes | None, bytes | None, str, int | None]]:
    """(key, value, expected reason, record timestamp in ms or None for the producer's) for the insert topic."""
    pack = lambda obj: msgpack.packb(obj, use_bin_type=True)
    good = [0.0] * dim
    return [
        (b"g1", b"\x00\x01garbage\xff", "not_msgpack", None),
        (b"g2", b"", "empty_value", None),
        (b"g3", None, "empty_value", None),
        (b"g4", pack("just a string"), "not_a_map", None),
        (b"g5", pack({"vec": good}), "missing_field", None),
        (b"g6", pack({"id": "g6"}), "missing_field", None),
        (b"g7", pack({"id": ["g7"], "vec": good}), "wrong_type", None),
        (b"g8", pack({"id": "g8", "vec": "1,2,3,4"}), "wrong_type", None),
        (b"g9", pack({"id": "g9", "vec": [math.nan] * dim}), "non_finite", None),
        (b"g10", pack({"id": "g10", "vec": struct.pack("<4f", math.inf, 0, 0, 0)}), "non_finite", None),
        (b"g11", pack({"id": "g11", "vec": good[:-1]}), "wrong_dimension", None),
        (None, pack({"id": "h" * 1000, "vec": good}), "id_too_long", None),
        (b"g13", pack({"id": "", "vec": good}), "bad_id", None),
        (b"g14", pack({"id": "g14", "vec": [True] * dim}), "bad_vector", None),
        (b"g15", pack({"id": "g15", "vec": good, "ts": math.inf}), "bad_ts", None),
        (b"g16", pack({"id": "g16", "vec": good, "ts": "now"}), "wrong_type", None),
        (b"g19", pack({"id": "g19", "vec": good, "ts": time.time() * 1000}), "bad_ts", None),  # ms, not s: far future
        (b"wrong", pack({"id": "g17", "vec": good}), "key_mismatch", None),
        (b"g18", b"\x01" * 5000, "oversized", None),
        (b"g20", pack({"id": "g20", "vec": good}), "no_timestamp", NO_TIMESTAMP),
        (b"g21", pack({"id": "g21", "vec": good, "ts": 5.0}), "no_timestamp", NO_TIMESTAMP),
    ]


def test_malformed_records_go_to_dead_letter_and_the_worker_goes_on(broker, unique_topic, tmp_path, consume):
    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps", dim=4, max_value_bytes=4096)
    corpus = malformed_corpus(4)
    assert {reason for _, _, reason, _ in corpus} <= set(BAD_RECORD_REASONS)
    create_topics(config)
    raw = KafkaProducer(bootstrap_servers=broker)
    sent = [raw.send(config.insert_topic, key=k, value=v if v is not None or k else b"", partition=0,
                     timestamp_ms=ts) for k, v, _, ts in corpus]
    raw.send(config.delete_topic, key=b"d1", value=b"\xc1", partition=1)
    raw.flush()
    offsets = [f.get(timeout=10).offset for f in sent]
    with producer(config) as p:
        p.insert(ids("ok", 5), np.ones((5, 4)))
    with running_worker(config) as worker:
        wait_consumed(worker, len(corpus) + 1 + 5)
    assert worker.model.n_points_ == 5
    dead = consume(broker, config.dead_letter_topic, len(corpus) + 1)
    assert len(dead) == len(corpus) + 1
    by_offset, truncations = {}, 0
    for record in dead:
        headers = dict(record.headers)
        truncated = headers.pop("truncated_from", None)
        truncations += truncated is not None
        assert set(headers) == {"reason", "detail", "source_topic", "source_partition", "source_offset"}
        assert headers["detail"]
        if truncated is not None:  # the oversized record: its first max_value_bytes, and its size
            assert headers["reason"] == b"oversized" and int(truncated) == 5000 and len(record.value) == 4096
            record = record._replace(value=record.value + b"\x01" * 904)
        if headers["source_topic"] == config.delete_topic.encode():
            assert headers["reason"] == b"not_msgpack" and headers["source_partition"] == b"1"
            continue
        assert headers["source_topic"] == config.insert_topic.encode() and headers["source_partition"] == b"0"
        by_offset[int(headers["source_offset"])] = (record.key, record.value, headers["reason"].decode())
    assert truncations == 1
    for (key, value, reason, _), offset in zip(corpus, offsets):
        got_key, got_value, got_reason = by_offset[offset]
        assert got_reason == reason, (key, got_reason)
        assert got_key == key and (got_value or b"") == (value or b"")


def test_records_off_their_ids_partition_go_to_dead_letter_and_get_no_receipt(broker, unique_topic, tmp_path,
                                                                                 consume):
    """DC over 3 partitions: each is a subtree with its own semantics, so an id's insert and delete must
    meet on murmur2(id)'s partition. A delete sent elsewhere must not be receipted while the point stays."""
    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps", dim=2)
    names = ids("placed", 6)
    with producer(config) as p:
        p.insert(names, np.arange(12.0).reshape(6, 2), ts=1.0)
    home = murmur2_partition(names[0], config.partitions)
    away = (home + 1) % config.partitions
    raw = KafkaProducer(bootstrap_servers=broker)
    raw.send(config.delete_topic, key=names[0].encode(), partition=away,
             value=msgpack.packb({"id": names[0], "ts": 2.0}))
    stray = "stray-point"
    raw.send(config.insert_topic, key=stray.encode(), value=msgpack.packb({"id": stray, "vec": [1.0, 2.0]}),
             partition=(murmur2_partition(stray, config.partitions) + 1) % config.partitions)
    raw.send(config.delete_topic, key=names[1].encode(), partition=murmur2_partition(names[1], config.partitions),
             value=msgpack.packb({"id": names[1], "ts": 2.0}))  # on its partition: applied and receipted
    raw.flush()
    with running_worker(config) as worker:
        wait_consumed(worker, 9)
        receipts = consume(broker, config.receipts_topic, 1)
    assert [decode_receipt(r.value).id for r in receipts] == [names[1]]
    model = worker.model
    assert names[0] in model.held()[0] and stray not in model.held()[0] and model.n_points_ == 5
    dead = consume(broker, config.dead_letter_topic, 2)
    assert sorted((dict(r.headers)["reason"], r.key) for r in dead) == [
        (b"wrong_partition", names[0].encode()), (b"wrong_partition", stray.encode())]


@pytest.mark.parametrize("algorithm", ["dc", "q"])
def test_after_a_receipt_no_file_holds_the_id_or_its_vector(broker, unique_topic, tmp_path, consume, algorithm):
    """DC: partition stores of subtrees; Q: one store of the whole model (its refits included)."""
    snaps = tmp_path / "snaps"
    config = make_config(broker, Topics.fresh(unique_topic), snaps, algorithm=algorithm)
    names = [f"{i}.secret" for i in ids("person", 60)]  # no id is a prefix of another
    X = np.random.default_rng(5).normal(size=(60, 4))
    with producer(config) as p:
        p.insert(names, X, ts=1.0)
        p.flush()
        p.delete(names[:10], ts=2.0)
        p.delete(["never-inserted-person"], ts=2.0)
    with running_worker(config) as worker:
        wait_consumed(worker, 71)
        receipts = consume(broker, config.receipts_topic, 11)
        gone = {decode_receipt(r.value).id for r in receipts}
        assert gone == set(names[:10]) | {"never-inserted-person"}
        snapshot = decode_receipt(receipts[0].value).snapshot
        assert snapshot >= 1
        # Checked while the worker still runs: the receipt is out, so the disk must be clean now.
        needles = [n.encode() for n in gone] + [X[i].astype("<f8").tobytes() for i in range(10)]
        needles += [X[i].astype("<f4").tobytes() for i in range(10)]
        assert files_containing(snaps, needles) == []
        # The scan does find what is still held.
        assert files_containing(snaps, [names[20].encode(), X[20].astype("<f8").tobytes()])


def test_model_topic_carries_the_latest_centroids(broker, unique_topic, tmp_path, consume):
    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps")
    with producer(config) as p:
        p.insert(ids("m", 100), np.random.default_rng(1).normal(size=(100, 3)))
    with running_worker(config) as worker:
        wait_consumed(worker, 100)
    final = worker.model.centroids_
    messages = [msgpack.unpackb(r.value) for r in consume(broker, config.model_topic, 1)]
    last = max(messages, key=lambda m: m["version"])
    C = np.frombuffer(last["centroids"], dtype="<f8").reshape(last["shape"])
    assert np.array_equal(C, final) and last["n_points"] == 100 and last["algorithm"] == "dc"


def test_the_group_offsets_follow_the_worker_for_lag_tools(broker, unique_topic, tmp_path, monkeypatch):
    """Committed while running (asynchronously, off the poll loop) and at a clean stop."""
    from kafka import KafkaConsumer, TopicPartition

    from stream_unlearn import worker as worker_module

    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps", partitions=1)
    inserts = TopicPartition(config.insert_topic, 0)
    reader = KafkaConsumer(bootstrap_servers=broker, group_id=config.group_id, enable_auto_commit=False)
    try:
        with producer(config) as p:
            p.insert(ids("c", 30), np.random.default_rng(4).normal(size=(30, 3)))
        with running_worker(config) as worker:
            wait_consumed(worker, 30)
            wait_until(lambda: reader.committed(inserts) == 30, 20, "the running worker's commit")
            monkeypatch.setattr(worker_module, "HOUSEKEEPING_INTERVAL", 3600.0)  # from now on only the stop commits
            with producer(config) as p:
                p.insert(ids("d", 12), np.random.default_rng(5).normal(size=(12, 3)))
            wait_consumed(worker, 42)
        assert reader.committed(inserts) == 42  # the stop's own commit, done before run() returned
    finally:
        reader.close()


def test_q_kmeans_worker_is_exact_and_counts_certificates(broker, unique_topic, tmp_path):
    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps", algorithm="q", eps=0.5,
                         group=False)
    X = np.random.default_rng(2).normal(size=(200, 3)) * 3
    names = ids("q", 200)
    with producer(config) as p:
        p.insert(names, X, ts=1.0)
    with running_worker(config) as worker:
        wait_consumed(worker, 200)
        with producer(config) as p:
            p.delete(names[:20], ts=2.0)
        wait_consumed(worker, 220)
    model = worker.model
    assert model.n_points_ == 180 and model.verify()
    assert model.certificates_passed_ + model.certificates_failed_ >= 1


@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_transaction_markers_are_passed_without_alarm_or_loss(broker, unique_topic, tmp_path, caplog, isolation):
    """A transactional producer's commit markers take offsets that carry no record: the worker must
    neither lose events around them nor take them for data gone from the log. read_committed (the
    default) fetches a transaction with its marker; read_uncommitted gets the marker at the start of
    a later fetch, or alone."""
    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps", isolation_level=isolation)
    create_topics(config)
    rng = np.random.default_rng(4)
    names = ids("tx", 240)
    X = rng.normal(size=(240, 3))
    survivors = dict(zip(names, X))
    txn = KafkaProducer(bootstrap_servers=broker, transactional_id=unique_topic("txn"), enable_idempotence=True)
    txn.init_transactions()
    loggers = ("stream_unlearn.worker", "stream_unlearn.continuity")
    for name in loggers:
        caplog.set_level(logging.DEBUG, logger=name)
    try:
        with running_worker(config) as worker:
            for lo in range(0, 240, 20):  # a transaction of 20 inserts, then one of the deletes among them
                txn.begin_transaction()
                for name, x in zip(names[lo : lo + 20], X[lo : lo + 20]):
                    txn.send(config.insert_topic, key=name.encode(), value=encode_insert(name, x, 1.0, binary=False))
                txn.commit_transaction()
                txn.begin_transaction()
                for name in names[lo : lo + 20 : 7]:
                    txn.send(config.delete_topic, key=name.encode(), value=encode_delete(name, 2.0))
                    survivors.pop(name)
                txn.commit_transaction()
                # Applied before the next one: the next poll then starts just past a marker.
                held = sum(1 for n in names[: lo + 20] if n in survivors)
                wait_until(lambda: worker.model.n_points_ == held, 30, "the transactions applied")  # noqa: B023 - called here, before the loop goes on
    finally:
        txn.close()
    assert np.array_equal(worker.model.centroids_, fresh_fit(config, survivors))
    alarms = [r.getMessage() for r in caplog.records if r.name in loggers and r.levelno >= logging.WARNING]
    assert alarms == []
    if isolation == "read_uncommitted":
        assert any("hold no records (transaction markers" in r.getMessage() for r in caplog.records), "no marker met"


def test_topics_must_be_co_partitioned(broker, unique_topic, tmp_path):
    from stream_unlearn.broker import ensure_topics

    config = make_config(broker, Topics.fresh(unique_topic), tmp_path / "snaps", create_topics=False)
    ensure_topics(broker, {config.insert_topic: 3, config.delete_topic: 2})
    with pytest.raises(WorkerError, match="co-partitioned"):
        Worker(config).run()


def test_snapshot_of_another_configuration_is_refused(broker, unique_topic, tmp_path):
    topics = Topics.fresh(unique_topic)
    config = make_config(broker, topics, tmp_path / "snaps")
    with producer(config) as p:
        p.insert(ids("c", 10), np.ones((10, 2)))
    with running_worker(config) as worker:
        wait_consumed(worker, 10)
    other = make_config(broker, topics, tmp_path / "snaps", k=4)
    with pytest.raises(WorkerError, match="fresh --snapshot-dir") as refused:
        Worker(other).run()
    assert "(differs in k: snapshot 3, configured 4, node_k: snapshot 3, configured 4)" in str(refused.value)
    # Another dimension: a clear error at the restore, not a failed insert at every restart.
    # (In a thread with a deadline: without the check the worker would just run.)
    errors: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        try:
            Worker(make_config(broker, topics, tmp_path / "snaps", dim=3)).run(stop)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    stop.set()
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], WorkerError), errors
    assert "share one dimension" in str(errors[0])


# -- configuration -----------------------------------------------------------


def parse(argv: list[str], env: dict[str, str]) -> WorkerConfig:
    return config_from_args(build_parser().parse_args(["worker", *argv]), env)


def test_flags_win_over_environment_which_wins_over_defaults():
    env = {"STREAM_UNLEARN_K": "7", "STREAM_UNLEARN_SEED": "3", "STREAM_UNLEARN_CREATE_TOPICS": "false",
           "STREAM_UNLEARN_TOMBSTONE_HORIZON": "inf"}
    config = parse(["--k", "9"], env)
    assert (config.k, config.seed, config.create_topics, config.tombstone_horizon) == (9, 3, False, math.inf)
    assert parse([], {}).metrics_port == 9464 and parse(["--create-topics"], env).create_topics
    assert parse([], {}).isolation_level == "read_committed"
    assert parse([], {"STREAM_UNLEARN_K": "4"}).model_params()["node_k"] == 4
    assert parse(["--node-k", "14"], env).model_params()["node_k"] == 14
    assert parse([], {"STREAM_UNLEARN_ISOLATION_LEVEL": "read_uncommitted"}).isolation_level == "read_uncommitted"


@pytest.mark.parametrize("argv, env, message", [
    (["--k", "0"], {}, "--k must be >= 1"),
    (["--delete-topic", "unlearn.inserts"], {}, "distinct"),
    (["--insert-topic", "bad topic"], {}, "not a valid Kafka topic"),
    ([], {"STREAM_UNLEARN_SNAPSHOT_INTERVAL": "soon"}, "STREAM_UNLEARN_SNAPSHOT_INTERVAL"),
    ([], {"STREAM_UNLEARN_ALGORITHM": "lloyd"}, "STREAM_UNLEARN_ALGORITHM"),
    (["--metrics-port", "70000"], {}, "--metrics-port"),
    ([], {"STREAM_UNLEARN_ISOLATION_LEVEL": "dirty"}, "--isolation-level must be one of"),
    (["--k", "5", "--node-k", "4"], {}, "--node-k must be 0"),
])
def test_invalid_configuration_is_a_clear_error(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        parse(argv, env)


def test_invalid_configuration_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("STREAM_UNLEARN_FANOUT", "1")
    assert main(["worker"]) == 2
    assert "--fanout must be 0 (by k) or >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--k", "many"])
    assert exc.value.code == 2


def test_fresh_fit_helper_matches_kafka_partitioning():
    """The survivors' fresh fit partitions by murmur2, as Kafka's default partitioner."""
    config = make_config("x:1", Topics("a", "b", "c", "d", "e"), "/tmp/unused")
    X = np.random.default_rng(0).normal(size=(50, 2))
    survivors = dict(zip(ids("f", 50), X))
    model = DCKMeans(**config.model_params(), n_partitions=3)
    model.insert(sorted(survivors), np.array([survivors[i] for i in sorted(survivors)]))
    assert np.array_equal(model.centroids_, fresh_fit(config, survivors))
