"""``stream-unlearn inspect`` and ``stream-unlearn verify``: read-only views of snapshots.

``SNAPSHOT_DIR`` is either a snapshot root (the newest valid snapshot in it
is used; corrupt ones are reported and never loaded) or one ``snap-*``
directory. The root of dc workers holds one store per partition
(``partition-<p>/``): then each partition's newest valid snapshot is used,
and the global model is merged from their subtrees. Nothing is created, changed or removed, so both commands are
safe next to a running worker.

``verify`` is the offline proof of erasure: it refits the model from the
points the snapshot holds and compares the centroids bit for bit with the
stored ones (per partition: each subtree against a refit of its points, and
the merged global model against one fresh DCKMeans fit on every
partition's points). Exit status: 0 equal, 1 different, 2 no valid snapshot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import load_model
from .base import UnlearningModel
from .semantics import EventTimeState, SemanticsError
from .snapshot import MANIFEST_NAME, Snapshot, SnapshotError, SnapshotStore, load_snapshot
from .state import StateError
from .worker import MODEL_PART, SEMANTICS_PART

__all__ = ["add_inspect_arguments", "add_verify_arguments", "is_partitioned", "load_for_reading",
           "load_model_for_reading", "load_partitioned", "main_inspect", "main_verify"]


class NoSnapshot(Exception):
    """No valid snapshot where the user pointed."""


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``inspect``."""
    parser.add_argument("snapshot_dir", metavar="SNAPSHOT_DIR", help="snapshot root or one snap-* directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``verify``."""
    parser.add_argument("snapshot_dir", metavar="SNAPSHOT_DIR", help="snapshot root or one snap-* directory")


def load_for_reading(path: str | Path, retries: int = 3) -> tuple[Snapshot, list[str]]:
    """The snapshot at ``path`` (a root: its newest valid one) and warnings.

    A running worker may prune a snapshot while it is being read; reading
    the root is retried a few times before giving up.
    """
    p = Path(path)
    if (p / MANIFEST_NAME).exists() or p.name.startswith("snap-"):
        try:
            return load_snapshot(p), []
        except SnapshotError as exc:
            raise NoSnapshot(str(exc)) from None
    try:
        store = SnapshotStore(p, readonly=True)
    except SnapshotError as exc:
        raise NoSnapshot(str(exc)) from None
    for attempt in range(retries):
        snap = store.load_latest()
        warnings = [f"invalid snapshot skipped: {s.path}: {s.reason}" for s in store.skipped]
        if snap is not None:
            return snap, warnings
        if attempt + 1 < retries:
            time.sleep(0.2)
    raise NoSnapshot(f"no valid snapshot in {p}" + "".join(f"\n  {w}" for w in warnings))


def is_partitioned(path: str | Path) -> bool:
    """Whether ``path`` is the snapshot root of dc workers (``partition-<p>/`` stores)."""
    from .partitioned import partition_dirs

    p = Path(path)
    return bool(partition_dirs(p)) and not (p / MANIFEST_NAME).exists() and not any(p.glob("snap-*"))


def load_partitioned(path: str | Path, retries: int = 3) -> tuple[dict[int, Snapshot], list[str]]:
    """The newest valid snapshot of each partition store under ``path``, and warnings."""
    from .partitioned import partition_dirs

    snaps: dict[int, Snapshot] = {}
    warnings: list[str] = []
    for partition, directory in partition_dirs(path).items():
        try:
            snap, w = load_for_reading(directory, retries)
        except NoSnapshot as exc:
            warnings.append(f"partition {partition}: {exc}")
            continue
        snaps[partition] = snap
        warnings += [f"partition {partition}: {x}" for x in w]
    if not snaps:
        raise NoSnapshot(f"no valid snapshot in {path}" + "".join(f"\n  {w}" for w in warnings))
    return snaps, warnings


def _global_view(snaps: dict[int, Snapshot]) -> Any:
    from .partitioned import GlobalView

    models = {p: _model(s) for p, s in snaps.items()}
    counts = {s.meta.get("partitions") for s in snaps.values() if isinstance(s.meta, dict)}
    if len(counts) != 1 or None in counts:
        raise NoSnapshot(f"partition snapshots disagree on the partition count: {sorted(map(str, counts))}")
    first = next(iter(models.values()))
    if any(m.get_params() != first.get_params() for m in models.values()):
        raise NoSnapshot("partition snapshots disagree on the model parameters")
    return GlobalView(models, counts.pop(), first.get_params())


def load_model_for_reading(path: str | Path) -> tuple[Any, str, list[str]]:
    """The model at ``path`` (a GlobalView over partition stores, or one snapshot's model),
    a short description of where it came from, and warnings."""
    if is_partitioned(path):
        snaps, warnings = load_partitioned(path)
        names = ", ".join(f"{p}:{s.path.name}" for p, s in snaps.items())
        return _global_view(snaps), f"partitions {names}", warnings
    snap, warnings = load_for_reading(path)
    return _model(snap), snap.path.name, warnings


def _model(snap: Snapshot) -> UnlearningModel:
    try:
        return load_model(snap.parts[MODEL_PART])
    except (KeyError, StateError) as exc:
        raise NoSnapshot(f"{snap.path}: no readable model: {exc}") from None


def describe(snap: Snapshot) -> dict[str, Any]:
    """Everything ``inspect`` shows, JSON-ready (no ids of people)."""
    model = _model(snap)
    meta = snap.meta if isinstance(snap.meta, dict) else {}
    tombstones: int | None = None
    try:
        tombstones = EventTimeState.from_bytes(snap.parts[SEMANTICS_PART]).n_tombstones
    except (KeyError, SemanticsError):
        pass
    centroids = model.centroids_
    return {
        "path": str(snap.path),
        "seq": snap.seq,
        "created_at": snap.created_at,
        "algorithm": model.algorithm,
        "k": model.k,
        "seed": model.seed,
        "params": model.get_params(),
        "n_points": model.n_points_,
        "dim": model.n_features_in_,
        "partitions": meta.get("partitions"),
        "offsets": {str(t): {str(p): int(o) for p, o in parts.items()} for t, parts in meta.get("offsets", {}).items()},
        "model_version": meta.get("model_version"),
        "tombstones": tombstones,
        "pending_receipts": len(meta.get("pending_receipts") or []),
        "size_bytes": snap.size_bytes,
        "centroids": centroids.tolist(),
    }


def _text(info: dict[str, Any], warnings: list[str]) -> str:
    created = dt.datetime.fromtimestamp(info["created_at"], tz=dt.UTC).isoformat(timespec="seconds")
    lines = [
        f"snapshot     {info['path']} (seq {info['seq']}, {info['size_bytes']:,} bytes)",
        f"created_at   {created} ({info['created_at']:.3f})",
        f"model        {info['algorithm']} k={info['k']} seed={info['seed']} "
        + " ".join(f"{k}={v}" for k, v in info["params"].items() if k not in ("k", "seed")),
        f"n_points     {info['n_points']:,} (dim {info['dim']}, {info['partitions']} partition(s))",
        f"tombstones   {info['tombstones']}   pending receipts {info['pending_receipts']}",
        "offsets      " + ", ".join(f"{t}[{p}]={o}" for t, parts in info["offsets"].items() for p, o in parts.items()),
        "centroids",
    ]
    with np.printoptions(precision=4, suppress=True, linewidth=120, threshold=2000):
        for j, row in enumerate(info["centroids"]):
            lines.append(f"  {j:3d} {np.array(row)}")
    return "\n".join([*(f"warning: {w}" for w in warnings), *lines])


def describe_partitioned(snaps: dict[int, Snapshot]) -> dict[str, Any]:
    """``inspect`` of a dc root: the merged global model, totals, and each partition's snapshot."""
    view = _global_view(snaps)
    parts = {p: describe(s) for p, s in snaps.items()}
    first = next(iter(parts.values()))
    offsets: dict[str, dict[str, int]] = {}
    for info in parts.values():
        for topic, by_partition in info["offsets"].items():
            offsets.setdefault(topic, {}).update(by_partition)
    missing = sorted(set(range(view.n_partitions)) - set(snaps))
    return {
        "path": str(Path(next(iter(snaps.values())).path).parent.parent),
        "layout": "partitioned",
        "seq": {str(p): info["seq"] for p, info in parts.items()},
        "created_at": min(info["created_at"] for info in parts.values()),
        "algorithm": "dc",
        "k": first["k"],
        "seed": first["seed"],
        "params": view.get_params(),
        "n_points": view.n_points_,
        "dim": view.n_features_in_,
        "partitions": view.n_partitions,
        "missing_partitions": missing,
        "offsets": offsets,
        "model_version": sum(info["model_version"] or 0 for info in parts.values()),
        "tombstones": sum(info["tombstones"] or 0 for info in parts.values()),
        "pending_receipts": sum(info["pending_receipts"] for info in parts.values()),
        "size_bytes": sum(info["size_bytes"] for info in parts.values()),
        "centroids": view.centroids_.tolist(),
        "partition_snapshots": {str(p): {k: v for k, v in info.items() if k != "centroids"}
                                for p, info in parts.items()},
    }


def main_inspect(args: argparse.Namespace) -> int:
    """Print a snapshot; 0 on success, 2 if there is no valid snapshot."""
    try:
        if is_partitioned(args.snapshot_dir):
            snaps, warnings = load_partitioned(args.snapshot_dir)
            info = describe_partitioned(snaps)
            if not args.json:
                info = {**info, "seq": ",".join(f"{p}:{q}" for p, q in info["seq"].items())}
        else:
            snap, warnings = load_for_reading(args.snapshot_dir)
            info = describe(snap)
    except NoSnapshot as exc:
        print(f"stream-unlearn inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**info, "warnings": warnings}))
    else:
        print(_text(info, warnings))
    return 0


def main_verify(args: argparse.Namespace) -> int:
    """Refit from the snapshot's points and compare bit for bit (0 equal, 1 not, 2 none)."""
    partitioned = is_partitioned(args.snapshot_dir)
    try:
        if partitioned:
            snaps, warnings = load_partitioned(args.snapshot_dir)
            view = _global_view(snaps)
        else:
            snap, warnings = load_for_reading(args.snapshot_dir)
            model = _model(snap)
    except NoSnapshot as exc:
        print(f"stream-unlearn verify: {exc}", file=sys.stderr)
        return 2
    if partitioned:
        return _verify_partitioned(snaps, view, warnings)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    started = time.perf_counter()
    ok = model.verify()
    seconds = time.perf_counter() - started
    verdict = "OK: bit-identical to a fresh fit on the held points" if ok else "FAILED: centroids differ from a fresh fit"
    print(f"{snap.path}: {model.n_points_:,} points, {model.algorithm} k={model.k}: {verdict} ({seconds:.2f}s)")
    return 0 if ok else 1


def _verify_partitioned(snaps: dict[int, Snapshot], view: Any, warnings: list[str]) -> int:
    """Each partition's subtree against a refit of its points; the merged root against a fresh global fit."""
    import numpy as np

    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    ok = True
    for p, snap in snaps.items():
        model = view.models[p]
        started = time.perf_counter()
        good = model.verify()
        ok &= good
        print(f"{snap.path}: partition {p}, {model.n_points_:,} points: "
              f"{'OK' if good else 'FAILED: subtree differs from a refit'} ({time.perf_counter() - started:.2f}s)")
    missing = sorted(set(range(view.n_partitions)) - set(snaps))
    started = time.perf_counter()
    same = bool(np.array_equal(view.centroids_, view.refit().centroids_)) if view.n_points_ else len(view.centroids_) == 0
    ok &= same
    verdict = ("OK: bit-identical to a fresh fit on every partition's points" if same
               else "FAILED: merged centroids differ from a fresh fit")
    print(f"global model: {view.n_points_:,} points on {len(snaps)} of {view.n_partitions} partition(s)"
          f"{f' (no snapshot of {missing}: counted empty)' if missing else ''}, dc k={view.k}: {verdict} "
          f"({time.perf_counter() - started:.2f}s)")
    return 0 if ok else 1
