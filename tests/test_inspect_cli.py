"""``stream-unlearn inspect`` and ``verify`` on snapshots a real worker wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from worker_support import Topics, create_topics, ids, make_config, running_worker, wait_consumed

from stream_unlearn import load_model
from stream_unlearn.cli import main
from stream_unlearn.config import WorkerConfig
from stream_unlearn.producer import EventProducer
from stream_unlearn.snapshot import SnapshotStore
from stream_unlearn.state import dumps, loads, pack_array, unpack_array
from stream_unlearn.worker import MODEL_PART


def _run_worker(config: WorkerConfig, prefix: str, seed: int) -> np.ndarray:
    """120 inserts then 20 deletes through a worker that snapshots them; its centroids."""
    create_topics(config)
    with EventProducer(config.bootstrap_servers, insert_topic=config.insert_topic,
                       delete_topic=config.delete_topic) as p:
        p.insert(ids(prefix, 120), np.random.default_rng(seed).normal(size=(120, 3)), ts=1.0)
        p.delete(ids(prefix, 20), ts=2.0)
    with running_worker(config) as worker:
        wait_consumed(worker, 140)
    return worker.model.centroids_


def _tampered(model_part: bytes) -> bytes:
    """A model state whose stored centroids are off by 1e-12: a well-formed state that verify must refuse."""
    body = loads(model_part)
    body["centroids"] = pack_array(unpack_array(body["centroids"]) + 1e-12)
    return dumps({k: v for k, v in body.items() if k not in ("format", "version")})


@pytest.fixture(scope="module")
def worker_snapshots(broker, tmp_path_factory) -> tuple[Path, np.ndarray, dict]:
    """A snapshot root written by a worker: 120 inserts, 20 deletes."""
    from conftest import new_topic_name

    root = tmp_path_factory.mktemp("inspect") / "snaps"
    config = make_config(broker, Topics.fresh(new_topic_name), root)
    centroids = _run_worker(config, "i", 0)
    before = sorted(p.name for p in root.iterdir())
    return root, centroids, {"before": before, "config": config}


def test_inspect_json_shows_the_snapshot(worker_snapshots, capsys):
    root, centroids, info = worker_snapshots
    assert main(["inspect", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array_equal(np.array(out["centroids"]), centroids)
    assert out["n_points"] == 100 and out["algorithm"] == "dc" and out["k"] == 3 and out["seed"] == 0
    config = info["config"]
    offsets = out["offsets"]
    assert sum(offsets[config.insert_topic].values()) == 120 and sum(offsets[config.delete_topic].values()) == 20
    assert out["created_at"] > 1e9 and out["tombstones"] == 20 and out["pending_receipts"] == 0
    # Reading is read-only: nothing appears or disappears under the root.
    assert sorted(p.name for p in root.iterdir()) == info["before"]


def test_inspect_text_and_one_snapshot_directory(worker_snapshots, capsys):
    root, _, _ = worker_snapshots
    # dc workers keep one snapshot store per partition under the root
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "partition-0", "partition-1", "partition-2"]
    snap_dir = next(p for p in (root / "partition-0").iterdir() if p.name.startswith("snap-"))
    assert main(["inspect", str(snap_dir)]) == 0
    out = capsys.readouterr().out
    for word in ("n_points", "offsets", "centroids", "created_at", "dc k=3 seed=0", "3 partition(s)"):
        assert word in out
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    for word in ("n_points", "100", "offsets", "centroids", "created_at", "dc k=3 seed=0"):
        assert word in out


def test_verify_passes_on_a_worker_snapshot(worker_snapshots, capsys):
    root, _, _ = worker_snapshots
    assert main(["verify", str(root)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_fails_when_centroids_do_not_match_the_points(worker_snapshots, tmp_path, capsys):
    root, _, _ = worker_snapshots
    tampered = tmp_path / "tampered"
    n_points = 0
    for p in range(3):
        snap = SnapshotStore(root / f"partition-{p}", readonly=True).load_latest()
        parts = dict(snap.parts)
        if p == 0:
            parts[MODEL_PART] = _tampered(snap.parts[MODEL_PART])
        n_points += load_model(parts[MODEL_PART]).n_points_
        SnapshotStore(tampered / f"partition-{p}").write(parts, snap.meta)
    assert n_points == 100
    assert main(["verify", str(tampered / "partition-1")]) == 0
    assert main(["verify", str(tampered / "partition-0")]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main(["verify", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert "partition 0" in out and "FAILED: subtree differs" in out


def test_inspect_and_verify_a_q_workers_one_store(broker, unique_topic, tmp_path, capsys):
    """A q worker keeps one store of the whole model at the root: inspect reads it, verify refits it, and a
    tampered copy fails."""
    root = tmp_path / "snaps"
    config = make_config(broker, Topics.fresh(unique_topic), root, algorithm="q")
    centroids = _run_worker(config, "q", 1)
    assert main(["inspect", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array_equal(np.array(out["centroids"]), centroids)
    assert out["n_points"] == 100 and out["algorithm"] == "q" and out["k"] == 3 and out["seed"] == 0
    assert sum(out["offsets"][config.insert_topic].values()) == 120
    assert sum(out["offsets"][config.delete_topic].values()) == 20
    assert out["created_at"] > 1e9 and out["tombstones"] == 20 and out["pending_receipts"] == 0
    assert main(["verify", str(root)]) == 0
    assert "OK" in capsys.readouterr().out
    snap = SnapshotStore(root, readonly=True).load_latest()
    SnapshotStore(tmp_path / "tampered").write({**snap.parts, MODEL_PART: _tampered(snap.parts[MODEL_PART])},
                                               snap.meta)
    assert main(["verify", str(tmp_path / "tampered")]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_no_valid_snapshot_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    assert main(["verify", str(empty)]) == 2
    assert main(["inspect", str(empty), "--json"]) == 2
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    broken = empty / "snap-000000000001"
    broken.mkdir()
    (broken / "manifest.msgpack").write_bytes(b"\x00garbage")
    assert main(["verify", str(empty)]) == 2
    assert main(["verify", str(broken)]) == 2
    assert "no valid snapshot" in capsys.readouterr().err
