"""Erasure receipts: the durable, public proof that a delete took effect.

A receipt is a msgpack map on the receipts topic, keyed by the id (UTF-8)::

    {"id": str, "deleted_ts": float, "forgotten_ts": float, "snapshot": int}

``deleted_ts`` is the delete's event time, ``forgotten_ts`` the wall time at
which the model stopped holding any insert of the id with ``ts <=
deleted_ts``, and ``snapshot`` the sequence number of the durable snapshot
without it (every older snapshot was removed before the receipt was sent).

Receipts are at-least-once: after a crash the worker re-sends those of its
last snapshot, so a consumer should treat ``(id, deleted_ts)`` as the
identity of a receipt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["PendingReceipt", "Receipt", "decode_receipt", "encode_receipt", "pending_from_meta", "pending_to_meta"]


@dataclass(frozen=True, slots=True)
class PendingReceipt:
    """A delete applied to the model whose receipt is not yet published."""

    id: str
    deleted_ts: float
    forgotten_ts: float


@dataclass(frozen=True, slots=True)
class Receipt:
    """A published receipt: a pending one plus the snapshot that made it durable."""

    id: str
    deleted_ts: float
    forgotten_ts: float
    snapshot: int


def encode_receipt(pending: PendingReceipt, snapshot_seq: int) -> tuple[bytes, bytes]:
    """The ``(key, value)`` of the receipt record."""
    value = msgpack.packb(
        {"id": pending.id, "deleted_ts": pending.deleted_ts,
         "forgotten_ts": pending.forgotten_ts, "snapshot": int(snapshot_seq)},
        use_bin_type=True,
    )
    return pending.id.encode("utf-8"), value


def decode_receipt(value: bytes) -> Receipt:
    """Parse a receipt value; ``ValueError`` if it is not one."""
    try:
        obj = msgpack.unpackb(value, raw=False)
        receipt = Receipt(str(obj["id"]), float(obj["deleted_ts"]), float(obj["forgotten_ts"]), int(obj["snapshot"]))
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ValueError(f"not a receipt: {type(exc).__name__}: {exc}") from None
    if not (math.isfinite(receipt.deleted_ts) and math.isfinite(receipt.forgotten_ts)):
        raise ValueError("not a receipt: non-finite time")
    return receipt


def pending_to_meta(pending: Iterable[PendingReceipt]) -> list[list[Any]]:
    """Compact form for snapshot meta: ``[[id, deleted_ts, forgotten_ts], ...]``."""
    return [[p.id, p.deleted_ts, p.forgotten_ts] for p in pending]


def pending_from_meta(rows: Any) -> list[PendingReceipt]:
    """Inverse of :func:`pending_to_meta`; ``ValueError`` on malformed rows."""
    if rows is None:
        return []
    try:
        return [PendingReceipt(str(pid), float(d), float(f)) for pid, d, f in rows]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed pending receipts in snapshot meta: {exc}") from None
