"""Wire format of insert and delete events (DESIGN.md section 4).

An insert value is a msgpack map ``{"id": str, "vec": [float, ...] | bin,
"ts": float}``; a delete value is ``{"id": str, "ts": float}``. ``vec`` as
``bin`` holds little-endian float32s. ``ts`` (event time, unix seconds) is
optional: the Kafka record timestamp stands in for it. Integer ids are
accepted and mean their decimal string (``bool`` is not an integer id).
The Kafka key, when present, must be the id in UTF-8.

Unknown extra fields are ignored, so producers may add fields without
breaking older workers (forward compatibility).

Decoding runs once per record, so it is written for speed: the value size
is checked before parsing, msgpack parses with hard limits (a hostile value
cannot make it allocate much), and vectors are converted by numpy, never
element by element in Python; :func:`decode_inserts` converts a whole
batch's bin vectors at once. Every failure raises :class:`BadRecord` whose
``reason`` is one of :data:`BAD_RECORD_REASONS` (a low-cardinality label fit
for a metric or a dead-letter header).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import numpy as np

from .validation import MAX_ABS_VALUE, within_range

__all__ = [
    "BAD_RECORD_REASONS",
    "DEFAULT_MAX_ID_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "TOPIC_DEAD_LETTER",
    "TOPIC_DELETES",
    "TOPIC_INSERTS",
    "TOPIC_MODEL",
    "TOPIC_RECEIPTS",
    "BadRecord",
    "DeleteEvent",
    "InsertEvent",
    "decode_delete",
    "decode_insert",
    "decode_inserts",
    "encode_delete",
    "encode_insert",
    "encode_inserts",
    "key_bytes",
    "normalize_id",
]

# Default topic names (DESIGN.md section 4).
TOPIC_INSERTS = "unlearn.inserts"
TOPIC_DELETES = "unlearn.deletes"
TOPIC_DEAD_LETTER = "unlearn.dead-letter"
TOPIC_RECEIPTS = "unlearn.receipts"
TOPIC_MODEL = "unlearn.model"

DEFAULT_MAX_ID_BYTES = 256
#: Kafka's default maximum message size is about 1 MiB; a 784-d float64 list
#: vector takes ~7 KiB, so this leaves ample room.
DEFAULT_MAX_VALUE_BYTES = 1 << 20

# msgpack parse limits. The value-size check already bounds every container
# (each element takes at least one byte); these make the bound tighter for
# things that have no business being large.
_MAX_MAP_LEN = 64  # the event map, plus room for future fields
_MIN_STR_LIMIT = 4096  # map keys, ids, small unknown string fields

BAD_RECORD_REASONS: tuple[str, ...] = (
    "empty_value",  # null or zero-length Kafka value
    "oversized",  # value (or a string/array inside it) over its limit
    "not_msgpack",  # not one complete msgpack object (incl. invalid UTF-8)
    "not_a_map",  # valid msgpack, but the top level is not a map
    "missing_field",  # "id" (or "vec" for inserts) absent
    "wrong_type",  # a known field has the wrong msgpack type
    "bad_id",  # empty id
    "id_too_long",  # id over max_id_bytes in UTF-8
    "key_mismatch",  # Kafka key present and not the id's UTF-8
    "bad_vector",  # empty, nested, non-numeric, or bin length not 4k
    "wrong_dimension",  # vector length differs from the model's dimension
    "non_finite",  # NaN, infinity or a value beyond +-MAX_ABS_VALUE (1e100) in the vector
    "bad_ts",  # ts is NaN or infinite, or too far ahead of the Kafka record timestamp
    "no_timestamp",  # the Kafka record has no timestamp (message format v0): no event time to replay
    # Checked by the worker, not the decoder: with DC over several partitions, the record's
    # partition is not its id's (murmur2 of the UTF-8 id, Kafka's default partitioner).
    "wrong_partition",
)


class BadRecord(ValueError):
    """A record that does not follow the wire format.

    ``reason`` is a short label from :data:`BAD_RECORD_REASONS`; ``detail``
    is a human-readable explanation (may contain record data, so keep it out
    of metric labels).
    """

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in BAD_RECORD_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable across processes
        return (BadRecord, (self.reason, self.detail))


@dataclass(frozen=True, slots=True, eq=False)
class InsertEvent:
    """A decoded insert: point ``id`` with a 1-D float64 vector at event time ``ts``."""

    id: str
    vec: np.ndarray
    ts: float

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InsertEvent):
            return NotImplemented
        return (
            self.id == other.id
            and self.ts == other.ts
            and self.vec.shape == other.vec.shape
            and bool(np.array_equal(self.vec, other.vec))
        )

    __hash__ = None  # type: ignore[assignment]  # holds a mutable array


@dataclass(frozen=True, slots=True)
class DeleteEvent:
    """A decoded delete of point ``id`` at event time ``ts``."""

    id: str
    ts: float


# --------------------------------------------------------------------------
# ids and keys


def normalize_id(id: str | int) -> str:
    """Return the canonical string form of an id (ints become decimal strings).

    Raises ``TypeError`` for anything but ``str`` or a non-bool ``int``, and
    ``ValueError`` for an empty id. Used by encoders; decoders report the same
    problems as :class:`BadRecord`.
    """
    if type(id) is str:
        if not id:
            raise ValueError("id must not be empty")
        return id
    if isinstance(id, (int, np.integer)) and not isinstance(id, (bool, np.bool_)):
        return str(int(id))
    raise TypeError(f"id must be str or int, not {type(id).__name__}")


def key_bytes(id: str | int) -> bytes:
    """The Kafka key for an id: its canonical string in UTF-8."""
    return normalize_id(id).encode("utf-8")


# --------------------------------------------------------------------------
# encoding


def encode_insert(
    id: str | int, vec: Any, ts: float | None = None, binary: bool = True
) -> bytes:
    """Encode an insert value.

    ``binary=True`` sends the vector as little-endian float32 ``bin`` (compact,
    fast to decode, but rounds to float32 precision); ``binary=False`` sends a
    msgpack array of float64s (exact). Raises ``ValueError``/``TypeError`` for
    values that a decoder would reject, so a producer never emits bad records.
    """
    arr = np.asarray(vec, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"vec must be a non-empty 1-D array, got shape {arr.shape}")
    return encode_inserts([normalize_id(id)], arr[None], [ts], binary)[0]


def encode_inserts(
    ids: Sequence[str], X: np.ndarray, ts: Sequence[float | None], binary: bool = True
) -> list[bytes]:
    """:func:`encode_insert` of each row of ``X`` (n, d) with canonical ``ids``, the same bytes.

    The rows are checked all at once, before any is encoded: a bad row
    raises (naming it) and nothing is returned, so a caller sends all or
    none. Per row only the packing is left (a producer sends ~1.5x faster).
    """
    if X.ndim != 2 or X.shape[1] == 0:
        raise ValueError(f"vectors must be non-empty rows, got shape {X.shape}")
    if not within_range(X):
        bad = next(i for i, row in enumerate(X) if not within_range(row))
        raise ValueError(f"{_row(bad, len(X))}vec contains NaN, infinity or a value beyond +-{MAX_ABS_VALUE:g} "
                         "(a dead letter)")
    times = [None if t is None else _check_encode_ts(t) for t in ts]
    if binary:
        with np.errstate(over="ignore"):
            f32 = X.astype("<f4")
        finite = np.isfinite(f32).all(axis=1)
        if not finite.all():
            raise ValueError(f"{_row(int(np.flatnonzero(~finite)[0]), len(X))}vec overflows float32; use binary=False")
        rows: list[Any] = [row.tobytes() for row in f32]
    else:
        rows = X.tolist()
    return [msgpack.packb({"id": sid, "vec": row} if t is None else {"id": sid, "vec": row, "ts": t},
                          use_bin_type=True)
            for sid, row, t in zip(ids, rows, times)]


def _row(i: int, n: int) -> str:
    """Which row an error is about (nothing for a single row)."""
    return f"row {i}: " if n > 1 else ""


def encode_delete(id: str | int, ts: float | None = None) -> bytes:
    """Encode a delete value."""
    payload: dict[str, Any] = {"id": normalize_id(id)}
    if ts is not None:
        payload["ts"] = _check_encode_ts(ts)
    return msgpack.packb(payload, use_bin_type=True)


def _check_encode_ts(ts: float) -> float:
    if isinstance(ts, (bool, np.bool_)) or not isinstance(ts, (int, float, np.number)):
        raise TypeError(f"ts must be a number, not {type(ts).__name__}")
    f = float(ts)
    if not math.isfinite(f):
        raise ValueError("ts must be finite")
    return f


# --------------------------------------------------------------------------
# decoding


def decode_insert(
    value: bytes | None,
    *,
    dim: int | None,
    record_ts: float | None,
    key: bytes | None = None,
    max_id_bytes: int = DEFAULT_MAX_ID_BYTES,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    max_ts_ahead: float = math.inf,
) -> InsertEvent:
    """Decode and validate an insert value; raise :class:`BadRecord` if invalid.

    ``dim``: required vector length, or ``None`` to accept any. ``record_ts``:
    the Kafka record timestamp in seconds, used when ``ts`` is absent; None
    (a record without one) is a :class:`BadRecord` (``no_timestamp``).
    ``key``: the Kafka key, checked against the id when not ``None``.
    ``max_ts_ahead``: seconds ``ts`` may lie after ``record_ts``. One event
    from the far future would move the event-time watermark, and with it
    the tombstone horizon, past every honest event after it.
    """
    obj, sid, raw = _insert_fields(value, key, max_id_bytes, max_value_bytes)
    vec = _decode_vec(raw, dim)
    return InsertEvent(sid, vec, _decode_ts(obj, record_ts, max_ts_ahead))


def _insert_fields(value: bytes | None, key: bytes | None, max_id_bytes: int,
                   max_value_bytes: int) -> tuple[dict, str, Any]:
    """An insert's map, its checked id and its raw ``vec`` field."""
    obj = _unpack_map(value, max_id_bytes, max_value_bytes)
    sid = _decode_id(obj, key, max_id_bytes)
    try:
        return obj, sid, obj["vec"]
    except KeyError:
        raise BadRecord("missing_field", "insert has no 'vec'") from None


def decode_inserts(
    records: Sequence[tuple[bytes | None, bytes | None, float | None]],
    *,
    dim: int | None,
    max_id_bytes: int = DEFAULT_MAX_ID_BYTES,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    max_ts_ahead: float = math.inf,
) -> tuple[list[InsertEvent | BadRecord], int | None]:
    """Decode a batch of ``(value, key, record_ts)``: each record's event, or the :class:`BadRecord` it raises.

    The same outcome, record by record, as :func:`decode_insert` called on
    each in turn with ``dim`` fixed by the first valid one when ``None``
    (returned as the second item). Why: bin vectors, the usual case, are
    converted and checked together, one numpy pass for the batch instead
    of three small calls per record, about half the cost of decoding. Their
    vectors are rows of one array per batch.
    """
    results: list[InsertEvent | BadRecord | None] = []  # None: a bin vector's record, settled below
    deferred: list[tuple[int, str, float | BadRecord]] = []  # (result index, id, ts or its error)
    raws: list[bytes] = []
    for value, key, record_ts in records:
        try:
            if dim is None:  # until a first valid vector fixes the dimension, one by one
                event = decode_insert(value, dim=None, record_ts=record_ts, key=key, max_id_bytes=max_id_bytes,
                                      max_value_bytes=max_value_bytes, max_ts_ahead=max_ts_ahead)
                dim = len(event.vec)
                results.append(event)
                continue
            obj, sid, raw = _insert_fields(value, key, max_id_bytes, max_value_bytes)
            if type(raw) is not bytes or len(raw) != 4 * dim:  # lists and faults: the single-record checks
                results.append(InsertEvent(sid, _decode_vec(raw, dim), _decode_ts(obj, record_ts, max_ts_ahead)))
                continue
        except BadRecord as bad:
            results.append(bad)
            continue
        try:  # the vector's finiteness, checked later, comes first: a ts error waits for it
            ts_or_error: float | BadRecord = _decode_ts(obj, record_ts, max_ts_ahead)
        except BadRecord as bad:
            ts_or_error = bad
        deferred.append((len(results), sid, ts_or_error))
        raws.append(raw)
        results.append(None)
    if deferred:
        assert dim is not None
        vectors = np.frombuffer(b"".join(raws), dtype="<f4").reshape(len(raws), dim).astype(np.float64)
        # Finite sums of squares of float32s prove every element finite, as in _decode_vec.
        finite = np.isfinite(np.einsum("ij,ij->i", vectors, vectors)).tolist()
        for (index, sid, ts), vec, ok in zip(deferred, vectors, finite):
            results[index] = _non_finite() if not ok else ts if isinstance(ts, BadRecord) else InsertEvent(sid, vec, ts)
    return cast("list[InsertEvent | BadRecord]", results), dim


def decode_delete(
    value: bytes | None,
    *,
    record_ts: float | None,
    key: bytes | None = None,
    max_id_bytes: int = DEFAULT_MAX_ID_BYTES,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    max_ts_ahead: float = math.inf,
) -> DeleteEvent:
    """Decode and validate a delete value; raise :class:`BadRecord` if invalid.

    Parameters as for :func:`decode_insert`. A ``vec`` field, if any, is
    ignored like any other unknown field.
    """
    obj = _unpack_map(value, max_id_bytes, max_value_bytes)
    sid = _decode_id(obj, key, max_id_bytes)
    return DeleteEvent(sid, _decode_ts(obj, record_ts, max_ts_ahead))


def _unpack_map(value: bytes | None, max_id_bytes: int, max_value_bytes: int) -> dict:
    """Parse ``value`` as one msgpack map under strict size limits."""
    if not value:
        raise BadRecord("empty_value", "record value is null or empty")
    n = len(value)
    if n > max_value_bytes:
        raise BadRecord("oversized", f"value is {n} bytes, limit {max_value_bytes}")
    try:
        obj = msgpack.unpackb(
            value,
            raw=False,
            strict_map_key=True,
            max_str_len=max(4 * max_id_bytes, _MIN_STR_LIMIT),
            max_bin_len=n,
            max_array_len=n,
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise BadRecord("not_msgpack", "trailing bytes after the msgpack object") from None
    except UnicodeDecodeError:
        raise BadRecord("not_msgpack", "string is not valid UTF-8") from None
    except Exception as exc:  # noqa: BLE001 - limits, ext types, map keys, truncation, depth
        msg = f"{type(exc).__name__}: {str(exc)[:200]}"
        oversized = "exceeds max_" in msg and "max_ext_len" not in msg
        raise BadRecord("oversized" if oversized else "not_msgpack", msg) from None
    if type(obj) is not dict:
        raise BadRecord("not_a_map", f"top level is {type(obj).__name__}, not a map")
    return obj


def _decode_id(obj: dict, key: bytes | None, max_id_bytes: int) -> str:
    try:
        raw = obj["id"]
    except KeyError:
        raise BadRecord("missing_field", "no 'id'") from None
    t = type(raw)
    if t is str:
        sid = raw
        if not sid:
            raise BadRecord("bad_id", "id is empty")
        bid = sid.encode("utf-8")
        if len(bid) > max_id_bytes:
            raise BadRecord("id_too_long", f"id is {len(bid)} bytes, limit {max_id_bytes}")
    elif t is int:  # bool is a distinct type, so it lands below
        sid = str(raw)
        bid = sid.encode("ascii")
        if len(bid) > max_id_bytes:
            raise BadRecord("id_too_long", f"id is {len(bid)} bytes, limit {max_id_bytes}")
    else:
        raise BadRecord("wrong_type", f"id is {t.__name__}, expected str or int")
    if key is not None and key != bid:
        raise BadRecord("key_mismatch", f"key {key[:64]!r} != id {bid[:64]!r}")
    return sid


_NUMBER_TYPES = frozenset((int, float))


def _decode_vec(raw: Any, dim: int | None) -> np.ndarray:
    t = type(raw)
    if t is bytes:
        n = len(raw)
        if n == 0 or n % 4:
            raise BadRecord("bad_vector", f"bin vector of {n} bytes is not a non-empty multiple of 4")
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        # From float32, squares cannot overflow, so a finite dot product proves
        # every element finite (NaN and inf propagate); ~3x cheaper than
        # isfinite().all() at d=784.
        finite = math.isfinite(vec.dot(vec))
    elif t is list:
        if not raw:
            raise BadRecord("bad_vector", "vector is empty")
        # One C-level pass over element types: rejects bools, None, strings
        # and nested containers that numpy would otherwise coerce silently.
        types = set(map(type, raw))
        if not types <= _NUMBER_TYPES:
            bad = sorted(x.__name__ for x in types - _NUMBER_TYPES)
            raise BadRecord("bad_vector", f"vector elements must be numbers, found {bad}")
        try:
            vec = np.asarray(raw, dtype=np.float64)
            finite = within_range(vec)  # float32 bins cannot exceed the range: only lists need it
        except (OverflowError, ValueError, TypeError) as exc:  # e.g. int > 2**64
            raise BadRecord("bad_vector", str(exc)[:200]) from None
    else:
        raise BadRecord("wrong_type", f"vec is {t.__name__}, expected array or bin")
    if dim is not None and vec.shape[0] != dim:
        raise BadRecord("wrong_dimension", f"vector has {vec.shape[0]} values, expected {dim}")
    if not finite:
        raise _non_finite()
    return vec


def _non_finite() -> BadRecord:
    return BadRecord("non_finite", f"vector contains NaN, infinity or a value beyond +-{MAX_ABS_VALUE:g}")


def _decode_ts(obj: dict, record_ts: float | None, max_ts_ahead: float) -> float:
    if record_ts is None:
        # A stand-in such as the clock at decode time would differ at every replay, and with it the
        # event-time outcome (and the far-future check): a restart would not rebuild the same model.
        raise BadRecord("no_timestamp", "the Kafka record has no timestamp (message format v0); "
                                        "the record timestamp bounds the event's ts and is needed to replay it")
    raw = obj.get("ts")
    if raw is None:  # absent (or explicit nil): fall back to the record time
        return float(record_ts)
    t = type(raw)
    if t is float or t is int:
        ts = float(raw)
        if not math.isfinite(ts):
            raise BadRecord("bad_ts", f"ts is {ts}")
        if ts - record_ts > max_ts_ahead:
            raise BadRecord("bad_ts", f"ts {ts} is {ts - record_ts:.0f} s after the record's Kafka timestamp "
                                      f"{record_ts}, limit {max_ts_ahead:g} s")
        return ts
    raise BadRecord("wrong_type", f"ts is {t.__name__}, expected a number")
