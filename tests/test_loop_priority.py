"""The snapshot writer gives way to the loop: waits while a batch is applied, within a budget per job."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest

from stream_unlearn import QKMeans, pieces, snapshot
from stream_unlearn.loop_priority import LoopPriority
from stream_unlearn.pieces import joined, pack_pieces
from stream_unlearn.snapshot import SnapshotStore
from stream_unlearn.snapshot_writer import SnapshotJob, SnapshotWriter


class Counter:
    """A pause that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def pause_in_thread(priority: LoopPriority, new_job: bool = True) -> tuple[threading.Thread, threading.Event]:
    returned = threading.Event()

    def run() -> None:
        if new_job:
            priority.job_started()
        priority.pause()
        returned.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, returned


def test_pause_returns_at_once_while_the_loop_is_idle():
    priority = LoopPriority(budget=30.0)
    priority.job_started()
    priority.pause()
    assert priority.waited == 0.0


def test_pause_waits_until_the_batch_is_applied():
    priority = LoopPriority(budget=30.0)
    with priority.applying():
        thread, returned = pause_in_thread(priority)
        assert not returned.wait(0.2)  # still inside the batch: the writer waits
    assert returned.wait(10)
    thread.join(10)
    assert priority.waited > 0.0


def test_a_job_waits_at_most_its_budget_in_all_and_the_next_job_gets_a_fresh_one():
    """A loop that never stops applying (a backlog) delays a snapshot, not stops it."""
    priority = LoopPriority(budget=0.05)
    with priority.applying():
        priority.job_started()
        for _ in range(5):
            priority.pause()  # only the first waits: the budget is spent after it
        assert 0.0 < priority.waited < 5.0
        thread, returned = pause_in_thread(priority)  # a new job waits again
        assert returned.wait(10)
        thread.join(10)
        assert priority.waited > 0.0


def test_an_error_in_the_batch_lets_the_writer_go_on():
    priority = LoopPriority(budget=30.0)
    with pytest.raises(RuntimeError), priority.applying():
        raise RuntimeError("apply failed")
    priority.job_started()
    priority.pause()
    assert priority.waited == 0.0


@pytest.mark.parametrize("budget", [-1.0, math.nan])
def test_a_budget_must_be_a_nonnegative_number_of_seconds(budget):
    with pytest.raises(ValueError, match="budget must be >= 0 seconds"):
        LoopPriority(budget=budget)


def test_encoding_pauses_before_each_slice_of_a_long_list(monkeypatch):
    monkeypatch.setattr(pieces, "_SLICE", 10)
    ids = np.array([f"id-{i}" for i in range(95)], dtype=object)
    pause = Counter()
    got = pack_pieces({"ids": ids, "more": list(range(100))}, pause)
    assert pause.calls == 10 + 10
    assert joined(got) == msgpack.packb({"ids": ids.tolist(), "more": list(range(100))}, use_bin_type=True)


def test_a_models_capture_encodes_the_same_bytes_with_pauses(monkeypatch):
    monkeypatch.setattr(pieces, "_SLICE", 16)
    rng = np.random.default_rng(0)
    model = QKMeans(k=3, eps=0.3)
    model.insert([f"p{i}" for i in range(200)], rng.normal(size=(200, 4)))
    pause = Counter()
    assert joined(model.capture_state()(pause)) == model.to_state()
    assert pause.calls >= 200 // 16


def test_a_part_is_hashed_and_written_a_step_at_a_time_with_pauses(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(snapshot, "_WRITE_STEP", 1000)
    payload = bytes(range(256)) * 40  # 10,240 bytes: 11 steps
    pause = Counter()
    store = SnapshotStore(tmp_path / "s")
    store.write({"model": [payload[:5000], memoryview(payload)[5000:]], "small": b"x"}, {"n": 1}, pause)
    assert pause.calls == 5 + 6 + 1
    assert store.load_latest().parts == {"model": payload, "small": b"x"}


class NothingToFlush:
    """The writer's publisher for a job with no receipts: it only flushes (dead letters, here none)."""

    def flush(self) -> None:
        pass


def test_the_writer_thread_gives_way_while_a_batch_is_applied(tmp_path: Path):
    """A whole job: nothing is encoded or written while the loop applies; all of it once the batch is done."""
    priority = LoopPriority(budget=30.0)
    writer = SnapshotWriter(publisher=NothingToFlush(), receipts_topic="unused", priority=priority)
    store = SnapshotStore(tmp_path / "s")
    encoded = threading.Event()

    def encode(pause) -> bytes:
        pause()
        encoded.set()
        return b"state"

    try:
        with priority.applying():
            writer.submit(SnapshotJob("unit", store, {"model": encode}, {}, (), (), durable=None))
            assert not encoded.wait(0.3)
        done = writer.wait(["unit"])
    finally:
        writer.close(timeout=10)
    assert encoded.is_set()
    assert [d.error for d in done] == [None]
    assert store.load_latest().parts == {"model": b"state"}
    assert done[0].seconds["yielded"] > 0.0
