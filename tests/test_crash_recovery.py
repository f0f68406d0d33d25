"""Crashes and damaged snapshots: nothing lost, nothing applied twice, nothing corrupt loaded."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from worker_support import (
    WRITER_PHASES,
    Topics,
    assert_holds_exactly,
    assert_one_receipt_per_delete,
    chunks,
    create_topics,
    fresh_fit,
    make_config,
    make_stream,
    records_handled,
    running_worker,
    send_steps,
    snapshot_position,
    spawn_worker,
    stop_cleanly,
    unit_snapshots,
    wait_consumed,
    wait_until,
    worker_process,
)

from stream_unlearn.inspect_cmd import load_for_reading, load_model_for_reading
from stream_unlearn.snapshot import MANIFEST_NAME, SnapshotStore
from stream_unlearn.worker import MODEL_PART


def _restart_until_caught_up_then_stop(config, log: Path, snaps: Path, total: int) -> None:
    """Start the worker again, wait until its snapshots cover ``total`` records, stop it with SIGTERM."""
    with worker_process(config, log) as proc:
        wait_until(lambda: snapshot_position(snaps) == total, 90, "the restarted worker to catch up")
        stop_cleanly(proc, log)


@pytest.mark.parametrize("algorithm", ["dc", "q"])
def test_kill_9_at_random_moments_changes_nothing(broker, unique_topic, tmp_path, consume, algorithm):
    """DC snapshots each partition's subtree; Q, one global model, snapshots it whole."""
    topics = Topics.fresh(unique_topic)
    snaps = tmp_path / "crashing"
    # One worker reading every partition (no group): a restarted group member would wait for the
    # killed one's session to expire each round (tests/test_scale_out.py kills group members).
    config = make_config(broker, topics, snaps, snapshot_interval=0.1, max_batch=10, group=False,
                         algorithm=algorithm)
    create_topics(config)
    steps, survivors, n_deletes = make_stream(1500, seed=11)
    rounds = chunks(steps, 6)
    rng = random.Random(1234)
    log = tmp_path / "worker.log"
    total = 0
    for chunk in rounds[:-1]:
        before = snapshot_position(snaps)
        total += send_steps(config, chunk)
        proc = spawn_worker(config, log)
        try:
            wait_until(lambda: snapshot_position(snaps) > before or proc.poll() is not None, 60, "progress")  # noqa: B023 - called here, before the loop goes on
            assert proc.poll() is None, log.read_text()[-2000:]
            # Kill somewhere in the middle of consuming, snapshotting or sending receipts.
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
        finally:
            if proc.poll() is None:  # also when the wait above failed: never leak a worker
                proc.kill()
            proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
    total += send_steps(config, rounds[-1])
    _restart_until_caught_up_then_stop(config, log, snaps, total)
    crashed, _, _ = load_model_for_reading(snaps)

    # The same topics consumed once, without crashes.
    clean_config = make_config(broker, topics, tmp_path / "clean", algorithm=algorithm)
    with running_worker(clean_config) as worker:
        wait_consumed(worker, total)
    uncrashed = worker.model.centroids_

    assert np.array_equal(crashed.centroids_, uncrashed)
    assert np.array_equal(crashed.centroids_, fresh_fit(config, survivors))
    assert_holds_exactly(crashed, survivors)
    assert_one_receipt_per_delete(broker, config, consume, n_deletes)


@pytest.mark.parametrize("algorithm", ["dc", "q"])
def test_sigterm_finishes_the_batch_and_snapshots(broker, unique_topic, tmp_path, algorithm):
    from stream_unlearn.broker import free_port

    topics = Topics.fresh(unique_topic)
    snaps = tmp_path / "snaps"
    port = free_port()
    config = make_config(broker, topics, snaps, snapshot_interval=30.0, max_batch=50, log_level="INFO",
                         algorithm=algorithm, metrics_port=port)
    create_topics(config)
    steps, survivors, _ = make_stream(600, seed=3)
    total = send_steps(config, steps)
    log = tmp_path / "worker.log"
    with worker_process(config, log) as proc:
        # The only snapshot the worker writes with a 30 s interval is the one on SIGTERM. Sent once it
        # owns its partitions (a consumer group join takes a few seconds) and has applied a batch: a
        # SIGTERM during start-up stops a worker that has nothing to snapshot.
        wait_until(lambda: b"own partition(s) [0, 1, 2]" in log.read_bytes() and records_handled(port) > 0, 30,
                   "start")
        stop_cleanly(proc, log)
    assert b"stopped cleanly" in log.read_bytes()
    snaps_by_unit = unit_snapshots(snaps)
    assert snaps_by_unit  # partitions with nothing applied yet have no snapshot
    for snap in snaps_by_unit.values():
        assert snap.meta["pending_receipts"] == []  # receipts went out, then their ids left the disk
    # A restart continues from there to exactly the right model.
    with running_worker(config) as worker:
        wait_until(lambda: worker.assigned.is_set(), 30, "the assignment")
        units = range(3) if algorithm == "dc" else [None]
        assert worker.restored_seqs == {u: snaps_by_unit[u].seq if u in snaps_by_unit else None for u in units}
        wait_consumed(worker, total)
    assert np.array_equal(worker.model.centroids_, fresh_fit(config, survivors))


def _flip_part(snap: Path) -> None:
    path = snap / MODEL_PART
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate_part(snap: Path) -> None:
    path = snap / MODEL_PART
    path.write_bytes(path.read_bytes()[:-100])


def _truncate_manifest(snap: Path) -> None:
    path = snap / MANIFEST_NAME
    path.write_bytes(path.read_bytes()[:20])


def _remove_manifest(snap: Path) -> None:
    (snap / MANIFEST_NAME).unlink()


@pytest.mark.parametrize("algorithm", ["dc", "q"])
@pytest.mark.parametrize("damage", [_flip_part, _truncate_part, _truncate_manifest, _remove_manifest])
def test_corrupt_or_truncated_snapshot_is_never_loaded(broker, unique_topic, tmp_path, damage, algorithm):
    topics = Topics.fresh(unique_topic)
    snaps = tmp_path / "snaps"
    config = make_config(broker, topics, snaps, algorithm=algorithm)
    create_topics(config)
    steps, survivors, _ = make_stream(400, seed=7)
    first, second = chunks(steps, 2)
    total = send_steps(config, first)
    with running_worker(config) as worker:
        wait_consumed(worker, total)
    # dc: one partition's store is damaged, the others are intact; q: the one store of the whole model
    store_dir, unit = (snaps / "partition-0", 0) if algorithm == "dc" else (snaps, None)
    older, _ = load_for_reading(store_dir)
    backup = tmp_path / older.path.name
    shutil.copytree(older.path, backup)
    total += send_steps(config, second)
    with running_worker(config) as worker:
        wait_consumed(worker, total)
    newest, _ = load_for_reading(store_dir)
    assert newest.seq > older.seq and not older.path.exists()  # pruned once a newer one was durable
    shutil.copytree(backup, older.path)
    damage(newest.path)

    store = SnapshotStore(store_dir, readonly=True)
    assert store.load_latest().seq == older.seq and [s.path for s in store.skipped] == [newest.path]
    with running_worker(config) as worker:
        wait_until(lambda: worker.assigned.is_set(), 30, "the assignment")
        assert worker.restored_seqs[unit] == older.seq  # the damaged newer one was skipped
        wait_consumed(worker, total)
    assert np.array_equal(worker.model.centroids_, fresh_fit(config, survivors))
    assert not newest.path.exists() and not older.path.exists()  # both gone once a new one is durable
    assert sorted(p.name for p in store_dir.iterdir() if not p.name.startswith(".")) == [
        f"snap-{load_for_reading(store_dir)[0].seq:012d}"]
    assert os.stat(snaps).st_mode & 0o077 == 0 and os.stat(store_dir).st_mode & 0o077 == 0


@pytest.mark.parametrize("algorithm", ["dc", "q"])
def test_receipts_pending_in_a_snapshot_are_sent_after_a_restart(broker, unique_topic, tmp_path, consume, algorithm):
    """A crash between a durable snapshot and its receipts: the restart sends them, then forgets their ids."""
    from stream_unlearn.receipts import PendingReceipt, decode_receipt, pending_to_meta

    topics = Topics.fresh(unique_topic)
    snaps = tmp_path / "snaps"
    config = make_config(broker, topics, snaps, group=False, algorithm=algorithm)
    create_topics(config)
    steps, survivors, n_deletes = make_stream(300, seed=5)
    total = send_steps(config, steps)
    with running_worker(config) as worker:
        wait_consumed(worker, total)
    assert_one_receipt_per_delete(broker, config, consume, n_deletes)
    # Rewrite one unit's newest snapshot as a crash would have left it: receipts still pending.
    unit, snap = next(iter(unit_snapshots(snaps).items()))
    lost = PendingReceipt("crashed-before-receipt", 123.0, 124.0)
    SnapshotStore(snap.path.parent).write(snap.parts, {**snap.meta, "pending_receipts": pending_to_meta([lost])})
    with running_worker(config) as worker:
        wait_until(lambda: worker.assigned.is_set(), 30, "the assignment")
        receipts = consume(broker, config.receipts_topic, n_deletes + 1)
        assert decode_receipt(receipts[-1].value).id == lost.id
    assert unit_snapshots(snaps)[unit].meta["pending_receipts"] == []
    assert np.array_equal(worker.model.centroids_, fresh_fit(config, survivors))


def _pending_ids(snap) -> list[str]:
    return [row[0] for row in snap.meta["pending_receipts"]]


def _durable(snaps: Path) -> dict:
    """The newest valid snapshot of each unit (dc: partition store; q: the one store), {} if none yet."""
    from stream_unlearn.inspect_cmd import NoSnapshot

    try:
        return unit_snapshots(snaps)
    except NoSnapshot:
        return {}


@pytest.mark.parametrize("algorithm", ["dc", "q"])
@pytest.mark.parametrize("phase", WRITER_PHASES)
def test_kill_9_while_a_snapshot_is_in_flight_changes_nothing(broker, unique_topic, tmp_path, consume, phase,
                                                               algorithm):
    """The writer thread is held inside a snapshot job while the loop applies more; kill -9 there.

    While held: receipts are out only once the snapshot listing them is durable and every older
    one of its unit is gone. After a restart: the exact model, one receipt per delete, no leftovers.
    """
    from stream_unlearn.broker import free_port
    from stream_unlearn.receipts import decode_receipt

    topics = Topics.fresh(unique_topic)
    snaps = tmp_path / "snaps"
    port = free_port()
    config = make_config(broker, topics, snaps, snapshot_interval=0.1, max_batch=20, group=False,
                         metrics_port=port, algorithm=algorithm)
    create_topics(config)
    steps, survivors, n_deletes = make_stream(900, seed=21)
    first, second, third = chunks(steps, 3)
    sent = send_steps(config, first)
    marker, log = tmp_path / "held", tmp_path / "worker.log"
    proc = spawn_worker(config, log, hold_writer_at=phase, marker=marker)
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, 60, f"the writer to reach {phase!r}")
        assert proc.poll() is None, log.read_text()[-2000:]
        durable = _durable(snaps)
        sent += send_steps(config, second)
        # The poll loop applies everything while the writer is held...
        wait_until(lambda: records_handled(port) >= sent or proc.poll() is not None, 60, "the loop to apply")
        assert proc.poll() is None, log.read_text()[-2000:]
        # ...and no snapshot became durable meanwhile (one writer thread, held).
        assert {p: s.seq for p, s in _durable(snaps).items()} == {p: s.seq for p, s in durable.items()}
        if phase == "write":  # nothing durable yet, so no receipt
            assert durable == {} and consume(broker, config.receipts_topic, 0) == []
        else:  # the held job's snapshot is durable, alone in its store, and lists its receipts
            held = [s for s in durable.values() if s.meta["pending_receipts"]]
            assert len(held) == 1
            assert [p.name for p in held[0].path.parent.glob("snap-*")] == [held[0].path.name]
            out = [decode_receipt(r.value) for r in consume(broker, config.receipts_topic, 0)]
            if phase == "receipts":
                assert out == []
            else:
                out = [decode_receipt(r.value) for r in consume(broker, config.receipts_topic,
                                                                len(_pending_ids(held[0])))]
                assert sorted(r.id for r in out) == sorted(_pending_ids(held[0]))
                assert {r.snapshot for r in out} == {held[0].seq}
        proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    _restart_until_caught_up_then_stop(config, log, snaps, sent + send_steps(config, third))
    recovered, _, _ = load_model_for_reading(snaps)
    assert np.array_equal(recovered.centroids_, fresh_fit(config, survivors))
    assert_holds_exactly(recovered, survivors)
    assert_one_receipt_per_delete(broker, config, consume, n_deletes)
    assert all(_pending_ids(s) == [] for s in unit_snapshots(snaps).values())
    assert not list(snaps.glob("*/.tmp-*")) and not list(snaps.glob(".tmp-*"))  # the half-written one was cleaned up
