"""Scale-out: workers in one consumer group split the partitions; the merged global model is exact.

Real embedded broker, real ``stream-unlearn worker`` processes. Group joins on
Tansu take about half the session timeout (6 s here), so the tests wait on
conditions (the global model read from the summaries topic covering every
record), never on fixed sleeps.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from worker_support import (
    Topics,
    assert_holds_exactly,
    assert_one_receipt_per_delete,
    chunks,
    create_topics,
    fresh_fit,
    ids,
    make_config,
    send_steps,
    snapshot_position,
    spawn_worker,
    wait_until,
)

from stream_unlearn import DCKMeans
from stream_unlearn.config import ConfigError
from stream_unlearn.hashing import murmur2_partition
from stream_unlearn.inspect_cmd import load_model_for_reading
from stream_unlearn.model_cmd import read_global_model
from stream_unlearn.ownership import OwnershipError, partitions_of
from stream_unlearn.partitioned import GlobalView, new_partition_model, partition_summary
from stream_unlearn.summaries import merge

N = 1200


def make_stream(n: int, seed: int) -> tuple[list[tuple], dict[str, np.ndarray], int]:
    """Steps (kind, ids, X|None, ts) with deletes before, after and between inserts; survivors; deletes."""
    rng = np.random.default_rng(seed)
    names = ids("scale", n)
    X = rng.normal(0, 4, size=(4, 3))[rng.integers(0, 4, n)] + rng.normal(size=(n, 3))
    survivors = {names[i]: X[i] for i in range(n)}
    early = list(range(0, n, 20))  # deleted before they are inserted
    later = list(range(5, n, 7))
    back = later[::3]  # re-inserted with a new vector
    steps: list[tuple] = [("delete", [names[i] for i in early], None, 50.0), ("insert", names, X, 10.0),
                          ("delete", [names[i] for i in later], None, 60.0),
                          ("insert", [names[i] for i in back], X[back] + 3.0, 70.0)]
    for i in early + later:
        survivors.pop(names[i], None)
    for i in back:
        survivors[names[i]] = X[i] + 3.0
    return steps, survivors, len(early) + len(later)


def group_config(broker, topics: Topics, snaps: Path, unique_topic, **overrides):
    """Workers of one fresh group, with their own summaries and model topics."""
    return make_config(broker, topics, snaps, group_id=unique_topic("group"),
                       summaries_topic=unique_topic("sum"), model_topic=unique_topic("model"),
                       snapshot_interval=0.3, model_publish_interval=0.1, log_level="INFO", **overrides)


class Fleet:
    """Worker processes of one group, their logs, and a way to stop them all."""

    def __init__(self, config, tmp_path: Path) -> None:
        self.config = config
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self) -> int:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        self.procs.append(spawn_worker(self.config, log))
        self.logs.append(log)
        return len(self.procs) - 1

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def owned(self, i: int) -> list[int] | None:
        """Partitions worker ``i`` owns after its last handled assignment."""
        found = re.findall(r"own partition\(s\) \[([0-9, ]*)\]", self.log(i))
        return None if not found else [int(x) for x in found[-1].split(",") if x.strip()]

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is None]

    def check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None and p.returncode != -signal.SIGKILL:
                raise AssertionError(f"worker {i} exited with {p.returncode}:\n{self.log(i)[-3000:]}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for i, p in enumerate(self.procs):
            try:
                code = p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError(f"worker {i} did not stop on SIGTERM:\n{self.log(i)[-3000:]}") from None
            assert code in (0, -signal.SIGKILL), f"worker {i} exited with {code}:\n{self.log(i)[-3000:]}"

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def rebalance_times(self) -> list[str]:
        out = []
        for i in range(len(self.procs)):
            out += [f"worker {i}: {m}" for m in re.findall(r"own partition.*", self.log(i))]
        return out


def wait_global(fleet: Fleet, total: int, timeout: float = 60.0):
    """The global model from the summaries topic, once it covers ``total`` records of every partition."""
    config = fleet.config

    def done():
        fleet.check_alive()
        model = read_global_model(config.bootstrap_servers, config.summaries_topic, timeout=10)
        if model is not None and model.complete and sum(a + b for a, b in model.partitions.values()) == total:
            return model
        return None

    return wait_until(done, timeout, f"the global model to cover {total} records")


def cli_model(config) -> dict:
    out = subprocess.run([sys.executable, "-m", "stream_unlearn.cli", "model", "--bootstrap-servers",
                          config.bootstrap_servers, "--summaries-topic", config.summaries_topic, "--json"],
                         capture_output=True, timeout=60, check=True)
    return json.loads(out.stdout)


def model_messages(config) -> list[dict]:
    """Every message on the model topic so far (read up to the high-water mark)."""
    import msgpack
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap_servers, enable_auto_commit=False)
    try:
        tp = TopicPartition(config.model_topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[dict] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out += [msgpack.unpackb(r.value) for r in records]
            high = consumer.highwater(tp)
            if high is not None and consumer.position(tp) >= high:
                break
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def stream(broker):
    """One stream (inserts, deletes, re-inserts) on fresh input topics, shared by the group sizes."""
    from conftest import new_topic_name

    topics = Topics.fresh(new_topic_name)
    config = make_config(broker, topics, Path("/nonexistent"))
    create_topics(config)
    steps, survivors, _ = make_stream(N, seed=5)
    total = send_steps(config, steps)
    return topics, survivors, total, fresh_fit(config, survivors)


# -- the subtree of one partition is what a one-partition model computes -----------------


def test_a_partition_model_is_the_partitions_subtree():
    rng = np.random.default_rng(1)
    names = ids("sub", 2000)
    X = rng.normal(size=(2000, 5))
    P = 4
    whole = DCKMeans(k=4, seed=3, n_partitions=P, n_leaves=16, fanout=4)
    whole.insert(names, X)
    whole.delete(names[::5])
    parts = np.array([murmur2_partition(i, P) for i in names])
    summaries, models = {}, {}
    for p in range(P):
        model = models[p] = new_partition_model(whole.get_params())
        mask = parts == p
        model.insert([i for i, m in zip(names, mask) if m], X[mask])
        model.delete(names[::5])
        summaries[p] = partition_summary(model, p, P, (0, 0))
        assert summaries[p].params == whole.get_params()
    C, W = whole.partition_summaries()
    for p, s in summaries.items():
        assert np.array_equal(s.centroids, C[p]) and np.array_equal(s.weights, W[p])
    assert np.array_equal(merge(summaries).centroids, whole.centroids_)
    view = GlobalView(models, P, whole.get_params())
    assert np.array_equal(view.centroids_, whole.centroids_)
    assert view.loss() == pytest.approx(whole.loss(), rel=1e-12) and view.loss() > 0
    # A partition that never saw a point: zero weights, once the dimension is known.
    empty = new_partition_model(whole.get_params())
    assert partition_summary(empty, 0, P, (0, 0)) is None
    assert not partition_summary(empty, 0, P, (0, 0), dim=5).weights.any()


def test_assignments_must_be_co_partitioned():
    from kafka import TopicPartition

    topics = ("ins", "del")
    assert partitions_of([TopicPartition("ins", 1), TopicPartition("del", 1)], topics) == {1}
    with pytest.raises(OwnershipError, match="not co-partitioned"):
        partitions_of([TopicPartition("ins", 1), TopicPartition("del", 2)], topics)


def test_q_kmeans_refuses_group_mode(tmp_path):
    config = make_config("x:1", Topics("a", "b", "c", "d", "e"), tmp_path, algorithm="q", group=False)
    with pytest.raises(ConfigError, match="--no-group"):
        replace(config, group=True)


# -- one, two, three workers ----------------------------------------------------------------


def test_one_two_and_three_workers_give_the_same_exact_model(broker, stream, unique_topic, tmp_path):
    topics, survivors, total, expected = stream
    results = {}
    for n_workers in (1, 2, 3):
        snaps = tmp_path / f"snaps-{n_workers}"
        config = group_config(broker, topics, snaps, unique_topic)
        fleet = Fleet(config, tmp_path / f"{n_workers}")
        (tmp_path / f"{n_workers}").mkdir()
        try:
            for _ in range(n_workers):
                fleet.start()
            model = wait_global(fleet, total)
            # The group split the partitions: every worker owns some, none twice.
            def assignments(fleet: Fleet = fleet, n_workers: int = n_workers) -> list | None:
                owned = [fleet.owned(i) for i in range(n_workers)]
                return owned if all(owned) else None

            owned = wait_until(assignments, 30, "assignments")
            fleet.stop()
        finally:
            fleet.kill_all()
        if n_workers > 1:
            final = [fleet.owned(i) for i in range(n_workers)]
            assert sorted(p for o in final for p in o) == [0, 1, 2], (owned, final)
        info = cli_model(config)
        assert info["complete"] and info["n_points"] == len(survivors) and info["position"] == total
        assert np.array_equal(np.array(info["centroids"]), model.centroids)
        results[n_workers] = model.centroids
        # The snapshots are per partition; together they hold exactly the survivors.
        view, _, _ = load_model_for_reading(snaps)
        held_ids, held_X, _ = view.held()
        assert {i: tuple(v) for i, v in zip(held_ids, held_X)} == {i: tuple(v) for i, v in survivors.items()}
        assert view.verify() and np.array_equal(view.centroids_, expected)
    for n_workers, centroids in results.items():
        assert np.array_equal(centroids, expected), n_workers


# -- kill -9 of a group member mid-stream ----------------------------------------------------------


def test_kill_9_of_one_of_three_workers_mid_stream(broker, unique_topic, tmp_path, consume):
    topics = Topics.fresh(unique_topic)
    snaps = tmp_path / "snaps"
    config = group_config(broker, topics, snaps, unique_topic, max_batch=20)
    create_topics(config)
    steps, survivors, n_deletes = make_stream(N, seed=8)
    rounds = chunks(steps, 3)
    fleet = Fleet(config, tmp_path)
    try:
        for _ in range(3):
            fleet.start()
        wait_until(lambda: all(fleet.owned(i) for i in range(3)), 30, "the three workers to own partitions")
        total = send_steps(config, rounds[0])
        wait_until(lambda: snapshot_position(snaps) > 0, 30, "a first snapshot")
        victim = next(i for i in range(3) if fleet.owned(i))
        lost = fleet.owned(victim)
        total += send_steps(config, rounds[1])
        fleet.procs[victim].kill()  # mid-stream: the others are still consuming
        assert fleet.procs[victim].wait(10) == -signal.SIGKILL
        total += send_steps(config, rounds[2])
        survivors_of_group = [i for i in range(3) if i != victim]
        # The group notices after the session timeout and hands the victim's partitions over.
        wait_until(lambda: sorted(p for i in survivors_of_group for p in (fleet.owned(i) or [])) == [0, 1, 2],
                   60, f"the victim's partitions {lost} to be taken over")
        model = wait_global(fleet, total, 90)
        fleet.stop()
    finally:
        fleet.kill_all()
    print("\n".join(fleet.rebalance_times()))
    assert np.array_equal(model.centroids, fresh_fit(config, survivors))
    assert model.n_points == len(survivors)
    view, _, _ = load_model_for_reading(snaps)
    assert_holds_exactly(view, survivors)
    assert_one_receipt_per_delete(broker, config, consume, n_deletes)


# -- a worker joining mid-stream -------------------------------------------------------------------


def test_a_worker_joining_mid_stream_takes_over_without_changing_the_model(broker, unique_topic, tmp_path):
    topics = Topics.fresh(unique_topic)
    snaps = tmp_path / "snaps"
    config = group_config(broker, topics, snaps, unique_topic)
    create_topics(config)
    steps, survivors, _ = make_stream(N, seed=9)
    first, second = chunks(steps, 2)
    fleet = Fleet(config, tmp_path)
    try:
        fleet.start()
        total = send_steps(config, first)
        before = wait_global(fleet, total)
        fleet.start()
        wait_until(lambda: fleet.owned(1) and len(fleet.owned(0) or []) < 3, 30, "the newcomer to own partitions")
        assert sorted(fleet.owned(0) + fleet.owned(1)) == [0, 1, 2]
        # The hand-over changed who computes, not what: the same model at the same position.
        after = wait_global(fleet, total)
        assert np.array_equal(after.centroids, before.centroids) and after.n_points == before.n_points
        # Each worker's merged model at this position (the newcomer's too) is the one from before.

        def both_at_total() -> list[dict] | None:
            messages = [m for m in model_messages(config) if m["version"] == total]
            return messages if len(messages) >= 2 else None

        at_total = wait_until(both_at_total, 30, "both workers' model messages")
        for message in at_total:
            C = np.frombuffer(message["centroids"], dtype="<f8").reshape(message["shape"])
            assert np.array_equal(C, before.centroids) and message["complete"]
        total += send_steps(config, second)
        final = wait_global(fleet, total)
        fleet.stop()
    finally:
        fleet.kill_all()
    print("\n".join(fleet.rebalance_times()))
    assert np.array_equal(final.centroids, fresh_fit(config, survivors))
    view, _, _ = load_model_for_reading(snaps)
    assert view.n_points_ == len(survivors) and view.verify()
