"""Snapshots in the background writer thread: the loop goes on, order and durability are kept.

Real broker, real files; the writer thread is held or made to fail by
wrapping the real snapshot-store and publisher methods (no Kafka mocks).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from worker_support import (
    Topics,
    WorkerThread,
    assert_holds_exactly,
    assert_one_receipt_per_delete,
    chunks,
    create_topics,
    fresh_fit,
    make_config,
    make_stream,
    running_worker,
    send_steps,
    snapshot_position,
    unit_snapshots,
    wait_consumed,
    wait_until,
)

from stream_unlearn import publisher
from stream_unlearn.receipts import decode_receipt
from stream_unlearn.snapshot import SnapshotStore, load_snapshot
from stream_unlearn.snapshot_writer import THREAD_NAME, SnapshotWriter


def in_writer() -> bool:
    return threading.current_thread().name == THREAD_NAME


def assert_clean_and_exact(config, snaps: Path, survivors: dict, worker) -> None:
    """The last snapshots list no pending receipt; the model is exact."""
    for snap in unit_snapshots(snaps).values():
        assert snap.meta["pending_receipts"] == []
    assert np.array_equal(worker.model.centroids_, fresh_fit(config, survivors))
    assert_holds_exactly(worker.model, survivors)


def test_the_loop_applies_while_a_snapshot_is_in_flight(broker, unique_topic, tmp_path, consume, monkeypatch):
    snaps = tmp_path / "snaps"
    config = make_config(broker, Topics.fresh(unique_topic), snaps, group=False, max_batch=20)
    create_topics(config)
    steps, survivors, n_deletes = make_stream(600, seed=31)
    first, second = chunks(steps, 2)
    held, release = threading.Event(), threading.Event()
    write, submit = SnapshotStore.write, SnapshotWriter.submit
    submitted: list[str] = []

    def counting_submit(self, job):
        submitted.append(job.name)
        return submit(self, job)

    def holding_write(self, parts, meta, *args):
        if in_writer() and not held.is_set():
            held.set()
            release.wait()
        return write(self, parts, meta, *args)

    monkeypatch.setattr(SnapshotStore, "write", holding_write)
    monkeypatch.setattr(SnapshotWriter, "submit", counting_submit)
    sent = send_steps(config, first)
    thread = WorkerThread(config).start()
    try:
        wait_until(held.is_set, 30, "a snapshot job")
        sent += send_steps(config, second)
        wait_consumed(thread.worker, sent)  # the loop is not waiting for the writer
        assert snapshot_position(snaps) == 0  # nothing durable yet: the only writer is held
        assert consume(broker, config.receipts_topic, 0) == []
        # One unit's cut at a time: the other changed partitions wait for the writer, not in its queue.
        assert len(submitted) == 1 and config.partitions > 1
    finally:
        release.set()
        thread.stop()  # the final snapshot() waits for the one in flight, then writes its own
    assert snapshot_position(snaps) == sent
    assert_clean_and_exact(config, snaps, survivors, thread.worker)
    assert_one_receipt_per_delete(broker, config, consume, n_deletes)


@pytest.mark.parametrize("algorithm", ["dc", "q"])
def test_receipts_go_out_only_after_their_snapshot_is_durable_and_older_ones_pruned(
        broker, unique_topic, tmp_path, consume, monkeypatch, algorithm):
    """When the receipts are sent, the store holds exactly one snapshot: durable, listing them."""
    snaps = tmp_path / "snaps"
    config = make_config(broker, Topics.fresh(unique_topic), snaps, group=False, max_batch=30, algorithm=algorithm)
    create_topics(config)
    steps, survivors, n_deletes = make_stream(600, seed=32)
    last_write: dict[str, Path] = {}
    checked: list[int] = []
    problems: list[str] = []
    write, send_acked = SnapshotStore.write, publisher.Publisher.send_acked

    def recording_write(self, parts, meta, *args):
        info = write(self, parts, meta, *args)
        last_write["path"] = info.path
        return info

    def checking_send_acked(self, topic, records, *args, **kwargs):
        if topic == config.receipts_topic and in_writer():
            path = last_write["path"]
            on_disk = sorted(p.name for p in path.parent.glob("snap-*"))
            listed = sorted(row[0] for row in load_snapshot(path).meta["pending_receipts"])
            receipts = [decode_receipt(value) for _, value in records]
            if on_disk != [path.name]:
                problems.append(f"receipts sent while {on_disk} are on disk")
            if sorted(r.id for r in receipts) != listed or {r.snapshot for r in receipts} != {int(path.name[5:])}:
                problems.append(f"receipts {receipts[:3]}... do not match {path}")
            checked.append(len(receipts))
        return send_acked(self, topic, records, *args, **kwargs)

    monkeypatch.setattr(SnapshotStore, "write", recording_write)
    monkeypatch.setattr(publisher.Publisher, "send_acked", checking_send_acked)
    total = 0
    with running_worker(config) as worker:
        for chunk in chunks(steps, 4):
            total += send_steps(config, chunk)
            wait_consumed(worker, total)
            # a snapshot per chunk: several rounds of receipts (Q's one unit would otherwise send them all at once)
            wait_until(lambda: snapshot_position(snaps) == total, 30, "the chunk's snapshot")  # noqa: B023 - called here, before the loop goes on
    assert problems == []
    assert sum(checked) >= n_deletes and len(checked) > 1
    assert_clean_and_exact(config, snaps, survivors, worker)
    assert_one_receipt_per_delete(broker, config, consume, n_deletes)


@pytest.mark.parametrize("fail_replacement", [False, True])
def test_a_failed_background_write_is_counted_and_retried(broker, unique_topic, tmp_path, consume, monkeypatch,
                                                          fail_replacement):
    snaps = tmp_path / "snaps"
    config = make_config(broker, Topics.fresh(unique_topic), snaps, group=False)
    create_topics(config)
    steps, survivors, n_deletes = make_stream(300, seed=33)
    failed = threading.Event()
    method = "relabel" if fail_replacement else "write"  # the replacement after the receipts relabels
    original = getattr(SnapshotStore, method)

    def failing(self, *args):
        if in_writer() and not failed.is_set():
            failed.set()
            raise OSError(28, "No space left on device (test)")
        return original(self, *args)

    monkeypatch.setattr(SnapshotStore, method, failing)
    total = send_steps(config, steps)
    with running_worker(config) as worker:
        wait_consumed(worker, total)
        wait_until(failed.is_set, 30, "the failure")
        registry = worker.metrics.registry
        wait_until(lambda: registry.get_sample_value("stream_unlearn_snapshot_failures_total",
                                                     {"reason": "os_error"}) == 1, 30, "the failure counted")
        assert_one_receipt_per_delete(broker, config, consume, n_deletes)  # retried at the next interval
    assert registry.get_sample_value("stream_unlearn_snapshot_failures_total", {"reason": "os_error"}) == 1
    assert snapshot_position(snaps) == total
    assert_clean_and_exact(config, snaps, survivors, worker)
    assert not list(snaps.glob("*/.tmp-*"))


def test_a_writer_that_outlives_close_is_reported_stuck(tmp_path):
    """close() gives up on a writer still busy; the worker then keeps its owner locks (a late
    snapshot must not land in a store a new owner took). Here the job's encoder holds it."""
    from stream_unlearn.snapshot_writer import SnapshotJob, SnapshotWriter

    release = threading.Event()
    writer = SnapshotWriter(publisher=None, receipts_topic="unused")  # the job never gets to publish
    job = SnapshotJob("unit", SnapshotStore(tmp_path / "s"), {"model": lambda pause: release.wait(30) and b"x"}, {}, (), ())
    writer.submit(job)
    try:
        writer.close(timeout=0.2)
        assert writer.stuck
    finally:
        release.set()
    idle = SnapshotWriter(publisher=None, receipts_topic="unused")
    idle.close(timeout=0.2)
    assert not idle.stuck
