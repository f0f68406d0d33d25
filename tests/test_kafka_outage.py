"""Kafka away: a worker started before its broker waits for it, gives up with one clear line, and lives
through a broker outage with work pending, losing nothing.

Each test runs its own embedded broker (it stops, pauses or starts it), so
they do not run against an external Kafka.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import consume_all, new_topic_name
from kafka import KafkaProducer
from worker_support import (
    Topics,
    assert_holds_exactly,
    assert_one_receipt_per_delete,
    chunks,
    create_topics,
    fresh_fit,
    health,
    make_config,
    make_stream,
    records_handled,
    running_worker,
    send_steps,
    snapshot_position,
    stop_cleanly,
    wait_until,
    worker_metric,
    worker_process,
)

from stream_unlearn.broker import EmbeddedBroker, free_port
from stream_unlearn.config import WorkerConfig
from stream_unlearn.inspect_cmd import load_model_for_reading

#: Seconds the broker stays frozen. Before snapshots were deferred, such an outage stopped the worker
#: 77 s in: a snapshot's receipts waited 30 s for Kafka, then the next snapshot waited 30 s for them
#: to be acknowledged, and that timeout was fatal.
OUTAGE = 95.0
#: The liveness limit of the outage test's worker: far below the outage, so a loop that waited for Kafka
#: instead of stepping would show on /healthz.
STALL_TIMEOUT = 10.0


def _assert_exactly_forgotten(config, snaps: Path, survivors: dict, n_deletes: int) -> None:
    """The snapshots hold exactly the survivors, bit-identical to a fresh fit, and every delete has its
    receipt (read from ``config``'s broker, still running)."""
    model, _, _ = load_model_for_reading(snaps)
    assert np.array_equal(model.centroids_, fresh_fit(config, survivors))
    assert_holds_exactly(model, survivors)
    assert_one_receipt_per_delete(config.bootstrap_servers, config, consume_all, n_deletes)


@contextlib.contextmanager
def _broker_of_our_own(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, WorkerConfig]]:
    """A broker for this test alone (it gets frozen), its topics, and a one-worker config with metrics."""
    with EmbeddedBroker(port=0) as broker:
        config = make_config(broker.bootstrap, Topics.fresh(new_topic_name), tmp_path / "snaps", group=False,
                             snapshot_interval=1.0, metrics_port=free_port(), handover_timeout=1.0,
                             stall_timeout=STALL_TIMEOUT)
        create_topics(config)
        yield broker, config


@contextlib.contextmanager
def _frozen(broker: EmbeddedBroker) -> Iterator[None]:
    """The broker process stopped (SIGSTOP) for the block: alive, but answering nothing; then thawed."""
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)


def _log_has(log: Path, text: str) -> bool:
    return log.exists() and text.encode() in log.read_bytes()


def test_a_worker_started_before_its_broker_waits_for_it(tmp_path):
    port = free_port()
    config = make_config(f"127.0.0.1:{port}", Topics.fresh(new_topic_name), tmp_path / "snaps", group=False,
                         connect_timeout=60.0, log_level="INFO")
    log = tmp_path / "worker.log"
    with worker_process(config, log) as proc:
        wait_until(lambda: _log_has(log, "not reachable yet") or proc.poll() is not None, 30, "the worker to wait")
        assert proc.poll() is None, log.read_text()[-2000:]
        with EmbeddedBroker(port=port):
            steps, survivors, n_deletes = make_stream(300, seed=5)
            wait_until(lambda: _log_has(log, "reachable after"), 30, "the worker to connect")
            create_topics(config)  # the worker creates them too: whichever comes first
            total_sent = send_steps(config, steps)
            wait_until(lambda: snapshot_position(tmp_path / "snaps") == total_sent, 60, "the worker to catch up")
            stop_cleanly(proc, log)
            _assert_exactly_forgotten(config, tmp_path / "snaps", survivors, n_deletes)


def test_a_worker_gives_up_on_an_unreachable_broker_with_one_clear_line(tmp_path):
    port = free_port()  # nothing listens there
    config = make_config(f"127.0.0.1:{port}", Topics.fresh(new_topic_name), tmp_path / "snaps", group=False,
                         connect_timeout=1.0, log_level="INFO")
    log = tmp_path / "worker.log"
    with worker_process(config, log) as proc:
        assert proc.wait(60) == 1
    text = log.read_text()
    assert f"no Kafka broker at 127.0.0.1:{port} answered within 1s" in text
    assert "Traceback" not in text


def test_sigterm_while_waiting_for_kafka_stops_at_once(tmp_path):
    config = make_config(f"127.0.0.1:{free_port()}", Topics.fresh(new_topic_name), tmp_path / "snaps",
                         group=False, connect_timeout=300.0, log_level="INFO")
    log = tmp_path / "worker.log"
    with worker_process(config, log) as proc:
        wait_until(lambda: _log_has(log, "not reachable yet") or proc.poll() is not None, 30, "the worker to wait")
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
    assert time.monotonic() - asked < 10
    assert "stopped while waiting for Kafka" in log.read_text()


def test_a_broker_outage_with_work_pending_delays_snapshots_and_loses_nothing(tmp_path):
    """The broker freezes (SIGSTOP) right after the worker applied deletes, before their snapshot: the
    receipts wait, the next snapshots wait for Kafka and are retried, and the worker lives on."""
    with _broker_of_our_own(tmp_path) as (broker, config):
        metrics_port = config.metrics_port
        steps, survivors, n_deletes = make_stream(600, seed=9)
        first, before, after = chunks(steps, 3)
        log = tmp_path / "worker.log"
        with worker_process(config, log) as proc:
            # Receipts out once before the outage: the producer knows their topic, and waits for no metadata.
            sent = send_steps(config, first)
            wait_until(lambda: worker_metric(metrics_port, "stream_unlearn_receipts_total") > 0
                       or proc.poll() is not None, 60, "the first receipts")
            sent += send_steps(config, before)
            raw = KafkaProducer(bootstrap_servers=broker.bootstrap)
            for i in range(3):  # dead letters to acknowledge before a snapshot passes their offsets
                raw.send(config.insert_topic, key=b"bad%d" % i, value=b"\x00garbage", partition=0)
            raw.flush()
            raw.close()
            sent += 3
            wait_until(lambda: records_handled(metrics_port) >= sent or proc.poll() is not None, 60, "part two")
            with _frozen(broker):
                # The loop keeps stepping through the outage: its liveness probe never turns 503.
                probes = []
                frozen_until = time.monotonic() + OUTAGE
                while time.monotonic() < frozen_until:
                    probes.append(health(metrics_port))
                    time.sleep(1.0)
                assert proc.poll() is None, log.read_text()[-3000:]
            stalled = [reason for status, reason in probes if status != 200]
            assert not stalled and all(reason.startswith("ok") for _, reason in probes), stalled[:3]
            deferred = worker_metric(metrics_port, "stream_unlearn_snapshot_failures_total", reason="kafka_timeout")
            assert deferred >= 1  # a snapshot waited for Kafka in the outage: the case under test
            sent += send_steps(config, after)
            wait_until(lambda: snapshot_position(tmp_path / "snaps") == sent or proc.poll() is not None, 120,
                       "the worker to catch up")
            stop_cleanly(proc, log)
        _assert_exactly_forgotten(config, tmp_path / "snaps", survivors, n_deletes)
        dead = consume_all(broker.bootstrap, config.dead_letter_topic, 3)
        assert {dict(r.headers)["reason"] for r in dead} == {b"not_msgpack"} and len(dead) >= 3


def test_sigterm_in_an_outage_exits_1_and_a_restart_replays_exactly(tmp_path):
    """A stop while the broker is frozen cannot make its final snapshot durable (Kafka has not
    acknowledged what came before): it says so and exits 1, and a restart replays from the last one."""
    with _broker_of_our_own(tmp_path) as (broker, config):
        metrics_port = config.metrics_port
        steps, survivors, n_deletes = make_stream(400, seed=4)
        before, after = chunks(steps, 2)
        log = tmp_path / "worker.log"
        with worker_process(config, log) as proc:
            sent = send_steps(config, before)
            wait_until(lambda: snapshot_position(tmp_path / "snaps") == sent or proc.poll() is not None, 60,
                       "part one's snapshot")
            sent += send_steps(config, after)
            wait_until(lambda: records_handled(metrics_port) >= sent or proc.poll() is not None, 60, "part two")
            with _frozen(broker):
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(120) == 1, log.read_text()[-3000:]
        text = log.read_text()
        assert "a restart replays from the last snapshot" in text
        assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
        with worker_process(config, log) as proc:
            wait_until(lambda: snapshot_position(tmp_path / "snaps") == sent or proc.poll() is not None, 90,
                       "the restarted worker to catch up")
            stop_cleanly(proc, log)
        _assert_exactly_forgotten(config, tmp_path / "snaps", survivors, n_deletes)


def test_the_model_command_names_an_unreachable_broker_in_one_line(capsys):
    from stream_unlearn.cli import main

    port = free_port()
    assert main(["model", "--bootstrap-servers", f"127.0.0.1:{port}", "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stream-unlearn model: no Kafka broker at 127.0.0.1:{port} answered within 1s")
    assert err.count("\n") == 1


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_connect_timeout_must_be_finite_and_not_negative(tmp_path, seconds):
    from stream_unlearn.config import ConfigError

    with pytest.raises(ConfigError, match="--connect-timeout"):
        make_config("127.0.0.1:1", Topics.fresh(new_topic_name), tmp_path, connect_timeout=seconds)


def test_the_produce_command_names_an_unreachable_broker_in_one_line(tmp_path, capsys):
    from stream_unlearn.cli import main

    port = free_port()
    (tmp_path / "deletes.txt").write_text("a\n")
    args = ["produce", "--bootstrap-servers", f"127.0.0.1:{port}", "--deletes", str(tmp_path / "deletes.txt")]
    assert main([*args, "--connect-timeout", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"stream-unlearn produce: no Kafka broker at 127.0.0.1:{port} answered within 0s")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("seconds", ["-1", "inf", "nan"])
def test_the_produce_commands_connect_timeout_must_be_finite_and_not_negative(tmp_path, capsys, seconds):
    from stream_unlearn.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["produce", "--deletes", str(tmp_path / "deletes.txt"), "--connect-timeout", seconds])
    assert exit_.value.code == 2
    assert "--connect-timeout: must be a finite number of seconds >= 0" in capsys.readouterr().err


def test_a_first_dead_letter_in_an_outage_queues_instead_of_stalling_the_loop(tmp_path):
    """The worker learns its output topics' partitions at start. Before, its first send to a topic
    waited for that metadata (60 s, then raised): in an outage the first dead letter stalled the loop
    and then stopped the worker."""
    with _broker_of_our_own(tmp_path) as (broker, config):
        # Output topics that do not exist yet (the broker creates a topic when it is first asked for):
        # the producer's first metadata, at its bootstrap, does not know them.
        config = dataclasses.replace(config, create_topics=False, dead_letter_topic=new_topic_name("dead"),
                                     receipts_topic=new_topic_name("receipts"), model_topic=new_topic_name("model"))
        with running_worker(config) as worker:
            wait_until(lambda: bool(worker.owned), 60, "the worker to own its partitions")
            with _frozen(broker):
                sender = threading.Thread(target=worker._publisher.send, args=(config.dead_letter_topic, b"k", b"v"))
                sender.start()
                sender.join(20)  # the send only queues the record; it would wait 60 s for metadata
                assert not sender.is_alive(), "a send in an outage waited for the topic's metadata"
            worker._publisher.flush()
            assert [(r.key, r.value) for r in consume_all(broker.bootstrap, config.dead_letter_topic, 1)] == [(b"k", b"v")]


def test_learning_a_topic_kafka_gives_no_partitions_for_is_a_clear_error(tmp_path, monkeypatch):
    """The worker learns its output topics at start; one Kafka gives no partitions for (missing and
    not created, or Kafka gone meanwhile) is a clear error, not receipts that silently never go out."""
    from stream_unlearn import publisher

    monkeypatch.setattr(publisher, "MAX_BLOCK_MS", 2000)
    with _broker_of_our_own(tmp_path) as (broker, config):
        sender = publisher.Publisher(config)
        try:
            sender.learn_topics([config.receipts_topic])  # known: no error
            with _frozen(broker), pytest.raises(publisher.UnknownTopic,
                                                match="no partitions for topic 'never.made' within 2s"):
                sender.learn_topics(["never.made"])
        finally:
            sender.close()
