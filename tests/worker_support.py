"""Helpers for the worker tests: configs, a worker thread or process, waiting, scanning files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_unlearn import MODELS
from stream_unlearn.broker import ensure_topics
from stream_unlearn.config import WorkerConfig
from stream_unlearn.inspect_cmd import NoSnapshot, is_partitioned, load_for_reading, load_partitioned
from stream_unlearn.worker import Worker

# Small trees, so that tests with a few hundred points exercise every level.
SMALL = {"k": 3, "n_leaves": 4, "fanout": 2, "partitions": 3}


def ids(prefix: str, n: int) -> list[str]:
    """Ids of varying length (an id's hash must not depend on its batch-mates)."""
    return [f"{prefix}-{i}" for i in range(n)]


@dataclass(frozen=True)
class Topics:
    inserts: str
    deletes: str
    dead_letter: str
    receipts: str
    model: str
    summaries: str = ""

    @classmethod
    def fresh(cls, unique_topic: Callable[[str], str]) -> Topics:
        return cls(*(unique_topic(n) for n in ("ins", "del", "dlq", "rec", "model", "sum")))


def make_config(bootstrap: str, topics: Topics, snapshot_dir: Path, **overrides: Any) -> WorkerConfig:
    values: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, insert_topic=topics.inserts, delete_topic=topics.deletes,
        dead_letter_topic=topics.dead_letter, receipts_topic=topics.receipts, model_topic=topics.model,
        summaries_topic=topics.summaries or topics.model + ".summaries",
        # Group joins on Tansu take about half the session timeout.
        session_timeout_ms=6000, heartbeat_interval_ms=1000,
        snapshot_dir=str(snapshot_dir), snapshot_interval=0.3, model_publish_interval=0.0,
        metrics_port=0, tombstone_horizon=float("inf"), log_level="WARNING", **SMALL,
        # A q worker is one global model: it reads every partition, outside any consumer group.
        group=overrides.get("algorithm", "dc") != "q",
    )
    values.update(overrides)
    return WorkerConfig(**values)


def create_topics(config: WorkerConfig) -> None:
    ensure_topics(config.bootstrap_servers, {
        config.insert_topic: config.partitions, config.delete_topic: config.partitions,
        config.dead_letter_topic: 1, config.receipts_topic: 1, config.model_topic: 1})


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class WorkerThread:
    """A :class:`Worker` running in a thread; errors re-raised on :meth:`stop`."""

    def __init__(self, config: WorkerConfig) -> None:
        self.worker = Worker(config)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(self._stop)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc

    def start(self) -> WorkerThread:
        self._thread.start()
        wait_until(lambda: self.worker.ready.is_set() or self.error, 30, "the worker to start")
        if self.error:
            raise self.error
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "worker did not stop"
        if self.error:
            raise self.error


@contextlib.contextmanager
def running_worker(config: WorkerConfig) -> Iterator[Worker]:
    thread = WorkerThread(config).start()
    try:
        yield thread.worker
    finally:
        thread.stop()


def wait_consumed(worker: Worker, n_records: int, timeout: float = 60.0) -> None:
    wait_until(lambda: sum(worker.offsets.values()) >= n_records, timeout, f"{n_records} records consumed")


def snapshot_position(snapshot_dir: Path) -> int:
    """Records covered by the newest valid snapshots (sum of their offsets; of every partition store
    for dc), 0 if none."""
    if is_partitioned(snapshot_dir):
        try:
            snaps, _ = load_partitioned(snapshot_dir, retries=1)
        except NoSnapshot:
            return 0
        return sum(o for snap in snaps.values() for parts in snap.meta["offsets"].values() for o in parts.values())
    try:
        snap, _ = load_for_reading(snapshot_dir, retries=1)
    except NoSnapshot:
        return 0
    return sum(o for parts in snap.meta["offsets"].values() for o in parts.values())


def partition_snapshots(snapshot_dir: Path) -> dict[int, Any]:
    """The newest valid snapshot of each partition store of a dc snapshot root."""
    return load_partitioned(snapshot_dir, retries=1)[0]


def unit_snapshots(snapshot_dir: Path) -> dict[int | None, Any]:
    """The newest valid snapshot of each unit, by the worker's unit key: a dc root's partition stores,
    or a q worker's one store (key None). Raises NoSnapshot if there is none."""
    if is_partitioned(snapshot_dir):
        return partition_snapshots(snapshot_dir)  # type: ignore[return-value]
    return {None: load_for_reading(snapshot_dir, retries=1)[0]}


def spawn_worker(config: WorkerConfig, log_path: Path, hold_writer_at: str | None = None,
                 marker: Path | None = None) -> subprocess.Popen[bytes]:
    """``stream-unlearn worker`` as a real process (for kill -9 and SIGTERM).

    ``hold_writer_at`` (one of :data:`WRITER_PHASES`): the worker's snapshot
    writer thread stops for good the first time it gets there, after
    touching ``marker``; see :func:`run_worker_holding_writer`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_UNLEARN_")}
    if hold_writer_at is None:
        cmd = [sys.executable, "-m", "stream_unlearn.cli", "worker", *config.to_argv()]
    else:
        assert hold_writer_at in WRITER_PHASES and marker is not None
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import worker_support; "
                f"sys.exit(worker_support.run_worker_holding_writer({hold_writer_at!r}, {str(marker)!r}, "
                f"{config.to_argv()!r}))")
        cmd = [sys.executable, "-c", code]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)


@contextlib.contextmanager
def worker_process(config: WorkerConfig, log_path: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`spawn_worker`, killed on the way out if still alive (also when the test fails): never leaked."""
    proc = spawn_worker(config, log_path, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop_cleanly(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM: the worker must finish its batch, snapshot and exit 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log_path.read_text()[-2000:]


#: Where :func:`run_worker_holding_writer` can stop the snapshot writer thread: in the middle of
#: writing a snapshot (parts written, no manifest, not renamed), with a snapshot durable but its
#: receipts not sent, or with the receipts acknowledged but the snapshot listing them not replaced.
WRITER_PHASES = ("write", "receipts", "replace")


def run_worker_holding_writer(phase: str, marker: str, argv: list[str]) -> int:
    """Run the worker CLI whose snapshot writer thread blocks forever the first time it reaches
    ``phase`` (touching ``marker`` then), while the poll loop runs on: for kill -9 tests."""
    from stream_unlearn import cli, publisher, snapshot, snapshot_writer

    held = threading.Event()

    def hold() -> None:
        if threading.current_thread().name == snapshot_writer.THREAD_NAME and not held.is_set():
            held.set()
            Path(marker).touch()
            threading.Event().wait()

    if phase == "write":
        write_file = snapshot._write_file

        def holding_write_file(path: Path, data: Any, *args: Any) -> tuple[int, bytes]:
            if path.name == snapshot.MANIFEST_NAME:
                hold()
            return write_file(path, data, *args)

        snapshot._write_file = holding_write_file
    elif phase == "receipts":
        send_acked = publisher.Publisher.send_acked

        def holding_send_acked(self: Any, *args: Any, **kwargs: Any) -> None:
            hold()
            send_acked(self, *args, **kwargs)

        publisher.Publisher.send_acked = holding_send_acked  # type: ignore[method-assign]
    else:
        relabel = snapshot.SnapshotStore.relabel

        def holding_relabel(self: Any, source: Any, meta: Any) -> Any:
            hold()
            return relabel(self, source, meta)

        snapshot.SnapshotStore.relabel = holding_relabel  # type: ignore[method-assign]
    return cli.main(["worker", *argv])


def worker_metric(metrics_port: int, name: str, **labels: str) -> float:
    """A worker process's metric from its /metrics, summed over the series with ``labels`` (0 while it starts)."""
    from stream_unlearn.demo import scrape, total

    try:
        return total(scrape(metrics_port), name, **labels)
    except OSError:
        return 0.0


def health(metrics_port: int) -> tuple[int, str]:
    """A worker process's ``/healthz``: (HTTP status, its one-line reason)."""
    import urllib.error
    import urllib.request

    from stream_unlearn.liveness import HEALTH_PATH

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{HEALTH_PATH}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def records_handled(metrics_port: int) -> float:
    """Records a worker process has handled so far (0 while it starts)."""
    return worker_metric(metrics_port, "stream_unlearn_events_total")


def fresh_fit(config: WorkerConfig, survivors: dict[str, np.ndarray]) -> np.ndarray:
    """Centroids of a fresh model of the worker's algorithm on the survivors (a DC one partitioned as
    Kafka's default partitioner does)."""
    params = config.model_params()
    if config.algorithm == "dc":
        params["n_partitions"] = config.partitions
    model = MODELS[config.algorithm](**params)
    names = sorted(survivors)
    model.insert(names, np.array([survivors[i] for i in names]))
    return model.centroids_


def files_containing(root: Path, needles: list[bytes]) -> list[tuple[str, bytes]]:
    """Every (file, needle) such that the raw bytes of the file contain the needle."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [(str(path), n) for n in needles if n in data]
    return hits


def assert_holds_exactly(view, survivors: dict) -> None:
    """The model holds exactly the surviving (id, vector) pairs, and a refit agrees bit for bit."""
    held_ids, held_X, _ = view.held()
    assert {i: tuple(v) for i, v in zip(held_ids, held_X)} == {i: tuple(v) for i, v in survivors.items()}
    assert view.verify()


def assert_one_receipt_per_delete(broker: str, config, consume, n_deletes: int) -> None:
    """Receipts are at-least-once: every delete has one, whatever crashes and rebalances did."""
    from stream_unlearn.receipts import decode_receipt

    receipts = {(r.id, r.deleted_ts) for r in (decode_receipt(rec.value)
                                               for rec in consume(broker, config.receipts_topic, n_deletes))}
    assert len(receipts) == n_deletes


def make_stream(n: int, seed: int) -> tuple[list[tuple], dict[str, np.ndarray], int]:
    """Steps (kind, ids, X|None, ts), the survivors, and the number of deletes."""
    rng = np.random.default_rng(seed)
    names = ids("crash", n)
    X = rng.normal(size=(n, 4))
    steps: list[tuple] = []
    survivors = {names[i]: X[i] for i in range(n)}
    early = list(range(0, n, 25))  # deleted before they are inserted
    steps.append(("delete", [names[i] for i in early], None, 50.0))
    steps.append(("insert", names, X, 10.0))
    later = [i for i in range(3, n, 9)]
    steps.append(("delete", [names[i] for i in later], None, 60.0))
    back = later[::4]
    steps.append(("insert", [names[i] for i in back], X[back] + 5.0, 70.0))
    for i in early + later:
        survivors.pop(names[i], None)
    for i in back:
        survivors[names[i]] = X[i] + 5.0
    return steps, survivors, len(early) + len(later)


def send_steps(config: WorkerConfig, steps: list[tuple]) -> int:
    """Produce ``(kind, names, X, ts)`` steps in order; returns the records sent."""
    from stream_unlearn.producer import EventProducer

    sent = 0
    with EventProducer(config.bootstrap_servers, insert_topic=config.insert_topic,
                       delete_topic=config.delete_topic, binary=False) as p:
        for kind, names, X, ts in steps:
            sent += p.insert(names, X, ts=ts) if kind == "insert" else p.delete(names, ts=ts)
    return sent


def chunks(steps: list[tuple], parts: int) -> list[list[tuple]]:
    """Split every step into ``parts`` pieces, keeping their order within each piece."""
    out: list[list[tuple]] = [[] for _ in range(parts)]
    for kind, names, X, ts in steps:
        bounds = np.linspace(0, len(names), parts + 1).astype(int)
        for j in range(parts):
            lo, hi = bounds[j], bounds[j + 1]
            if hi > lo:
                out[j].append((kind, names[lo:hi], None if X is None else X[lo:hi], ts))
    return out
