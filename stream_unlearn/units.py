"""Snapshot units: what the worker snapshots, restores and hands over together.

A unit is one Kafka partition's subtree (DC-k-means, scaled out over a
consumer group) or the one global model over every partition (Q-k-means):
its model, event-time state, offsets and pending receipts always move as
one consistent cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import load_model
from .base import UnlearningModel
from .config import WorkerConfig
from .ownership import OwnerLock
from .receipts import PendingReceipt, pending_from_meta
from .semantics import EventTimeState, SemanticsError
from .snapshot import Snapshot, SnapshotStore, snapshot_seq
from .state import StateError

MODEL_PART = "model.msgpack"
SEMANTICS_PART = "semantics.msgpack"
META_FORMAT = 1


class WorkerError(RuntimeError):
    """A condition the worker cannot run under (exit status 2 from the CLI)."""



@dataclass(eq=False)
class Unit:
    """One snapshot unit: a partition's subtree (dc), or the global model over every partition (q)."""

    key: int | None  # the partition (dc), or None for the global unit (q)
    partitions: tuple[int, ...]
    store: SnapshotStore
    lock: OwnerLock
    model: UnlearningModel
    semantics: EventTimeState
    #: next offset to read, per (topic, partition) of this unit
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    unsent: list[PendingReceipt] = field(default_factory=list)
    new_pending: list[PendingReceipt] = field(default_factory=list)
    changed: bool = False
    version: int = 0
    last_seq: int | None = None
    restored_seq: int | None = None
    summary_dirty: bool = True

    @property
    def name(self) -> str:
        return "global" if self.key is None else f"partition {self.key}"

    def latest_seq_on_disk(self) -> int | None:
        seqs = [snapshot_seq(p) for p in self.store.list()]
        return max((s for s in seqs if s is not None), default=None)


@dataclass
class Restored:
    """What a snapshot gives back."""

    snapshot: Snapshot
    model: UnlearningModel
    semantics: EventTimeState
    offsets: dict[tuple[str, int], int]
    pending: list[PendingReceipt]
    dim: int | None
    version: int


def _differences(written: dict[str, Any], configured: dict[str, Any]) -> str:
    """The model parameters that differ, as the error names them: a default that moved between versions
    (the DC fanout) shows up here."""
    keys = [key for key in {**written, **configured} if written.get(key) != configured.get(key)]
    if not keys:
        return ""
    return " (differs in " + ", ".join(f"{key}: snapshot {written.get(key)!r}, configured {configured.get(key)!r}"
                                      for key in keys) + ")"


def restore_unit(snap: Snapshot, config: WorkerConfig, expected: UnlearningModel, n_partitions: int,
             partition: int | None) -> Restored:
    """Load a snapshot and check it belongs to this configuration and unit."""
    meta = snap.meta
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise WorkerError(f"{snap.path}: not a worker snapshot (meta format {meta!r:.80})")
    try:
        model = load_model(snap.parts[MODEL_PART])
        semantics = EventTimeState.from_bytes(snap.parts[SEMANTICS_PART], horizon=config.tombstone_horizon)
        pending = pending_from_meta(meta.get("pending_receipts"))
    except (KeyError, StateError, SemanticsError, ValueError) as exc:
        raise WorkerError(f"{snap.path}: unreadable snapshot content: {exc}") from exc
    if model.get_params() != expected.get_params() or meta.get("partitions") != n_partitions:
        raise WorkerError(
            f"{snap.path} was written with model {model!r} on {meta.get('partitions')} partition(s), but this "
            f"worker is configured for {expected!r} on {n_partitions} partition(s)"
            f"{_differences(model.get_params(), expected.get_params())}; use the same flags "
            "(and partition count) or a fresh --snapshot-dir"
        )
    if meta.get("partition") != partition:
        raise WorkerError(f"{snap.path} holds partition {meta.get('partition')}, not {partition}; "
                          "use a fresh --snapshot-dir")
    topics = meta.get("topics", {})
    if [topics.get("inserts"), topics.get("deletes")] != list(config.input_topics):
        raise WorkerError(
            f"{snap.path} holds offsets of topics {topics}, not of {list(config.input_topics)}; "
            "use a fresh --snapshot-dir"
        )
    offsets = {(t, int(p)): int(o) for t, parts in meta.get("offsets", {}).items() for p, o in parts.items()}
    dim = meta.get("dim") or model.n_features_in_
    return Restored(snap, model, semantics, offsets, pending, dim, int(meta.get("model_version", 0)))
