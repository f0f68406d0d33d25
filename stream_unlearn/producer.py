"""Producing insert and delete events, and the ``stream-unlearn produce`` command.

:class:`EventProducer` wraps kafka-python's ``KafkaProducer`` with the wire
format of :mod:`stream_unlearn.wire`: key = id in UTF-8 (so inserts and
deletes of one id land on the same partition number), ``acks='all'``, and
send errors surfaced on :meth:`EventProducer.flush` instead of being lost in
callbacks.

The command loads inserts from ``.npy`` (ids = row numbers, or ``--ids``)
or ``.csv`` (first column id, the rest floats, optional header), and
deletes from a file of ids, one per line.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from .hashing import murmur2_key_partitions
from .wire import DEFAULT_MAX_ID_BYTES, TOPIC_DELETES, TOPIC_INSERTS, encode_delete, encode_inserts, normalize_id

__all__ = [
    "EventProducer",
    "ProduceError",
    "add_produce_arguments",
    "default_partitions",
    "load_csv_inserts",
    "load_ids",
    "load_inserts",
    "load_npy_inserts",
    "main_produce",
    "send_keyed",
]

log = logging.getLogger(__name__)


class ProduceError(RuntimeError):
    """One or more records could not be delivered to Kafka."""


TsArg = float | Sequence[float] | np.ndarray | None


class EventProducer:
    """Send insert/delete events to Kafka (a context manager).

    ``kafka_config`` overrides any ``KafkaProducer`` setting. Sends are
    asynchronous; :meth:`flush` waits for them and raises
    :class:`ProduceError` if any failed. ``binary`` chooses float32 ``bin``
    vectors (compact, rounds to float32) or float64 arrays (exact).
    ``max_id_bytes``: longest id (UTF-8) sent; set it to the worker's
    ``--max-id-bytes``, which dead-letters longer ones.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        insert_topic: str = TOPIC_INSERTS,
        delete_topic: str = TOPIC_DELETES,
        binary: bool = True,
        linger_ms: int = 5,
        max_id_bytes: int = DEFAULT_MAX_ID_BYTES,
        **kafka_config: Any,
    ) -> None:
        from kafka import KafkaProducer

        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
            "linger_ms": linger_ms,
            "client_id": "stream-unlearn-producer",
        }
        config.update(kafka_config)
        self._producer = KafkaProducer(**config)
        self._default_partitioner = "partitioner" not in kafka_config
        self.insert_topic = insert_topic
        self.delete_topic = delete_topic
        self.binary = binary
        self.max_id_bytes = max_id_bytes
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._failed = 0

    def insert(self, ids: Iterable[str | int], X: Any, ts: TsArg = None) -> int:
        """Send one insert per row of ``X`` (2-D) with the matching id.

        ``ts``: ``None`` (the Kafka record timestamp is the event time), one
        time for all rows, or one per row. Every row is checked before any
        is sent: a bad one raises ValueError/TypeError and nothing is sent.
        Returns the number of records sent.
        """
        sids = [normalize_id(i) for i in ids]
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"X must be 2-D (n, d), got shape {arr.shape}")
        if arr.shape[0] != len(sids):
            raise ValueError(f"{len(sids)} ids for {arr.shape[0]} rows")
        if not sids:
            return 0
        keys = self._keys(sids)
        values = encode_inserts(sids, arr, _per_row_ts(ts, len(sids)), self.binary)
        self._send_all(self.insert_topic, keys, values)
        return len(sids)

    def delete(self, ids: Iterable[str | int], ts: TsArg = None) -> int:
        """Send one delete per id; ``ts`` as for :meth:`insert` (all checked first). Returns the count."""
        sids = [normalize_id(i) for i in ids]
        keys = self._keys(sids)
        times = _per_row_ts(ts, len(sids))
        values = [encode_delete(pid, t) for pid, t in zip(sids, times)]
        self._send_all(self.delete_topic, keys, values)
        return len(sids)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged (or failed).

        Raises :class:`ProduceError` if any send failed since the last flush.
        """
        self._producer.flush(timeout=timeout)
        with self._lock:
            errors, failed = self._errors, self._failed
            self._errors, self._failed = [], 0
        if failed:
            raise ProduceError(f"{failed} record(s) failed, first error: {errors[0]!r}") from errors[0]

    def close(self, timeout: float | None = None) -> None:
        """Flush pending records, then close the producer."""
        try:
            self.flush(timeout)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # don't mask the original error with a flush failure
            try:
                self.close()
            except Exception as close_error:  # noqa: BLE001 - the error being raised matters more
                log.warning("closing the producer after an error failed too: %r", close_error)

    def _keys(self, ids: list[str]) -> list[bytes]:
        """The Kafka keys of ``ids`` (UTF-8); ValueError naming the first id over ``max_id_bytes``."""
        keys = [pid.encode("utf-8") for pid in ids]
        if keys and max(map(len, keys)) > self.max_id_bytes:
            i = next(i for i, key in enumerate(keys) if len(key) > self.max_id_bytes)
            row = f"row {i}: " if len(keys) > 1 else ""
            raise ValueError(f"{row}id is {len(keys[i])} bytes, over "
                             f"max_id_bytes={self.max_id_bytes} (the worker would dead-letter it)")
        return keys

    def _send_all(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        on_error = self._on_error
        for future in send_keyed(self._producer, topic, keys, values, self._default_partitioner):
            future.add_errback(on_error)

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            if len(self._errors) < 10:
                self._errors.append(exc)


def send_keyed(producer: Any, topic: str, keys: Sequence[bytes], values: Sequence[bytes],
               default_partitioner: bool = True) -> list[Any]:
    """``producer.send`` of each (key, value); returns the futures.

    ``default_partitioner``: the producer uses kafka-python's default
    partitioner, so each record goes straight to :func:`default_partitions`.
    """
    partitions = default_partitions(producer, topic, keys) if default_partitioner and keys else None
    send = producer.send
    if partitions is None:
        return [send(topic, key=key, value=value) for key, value in zip(keys, values)]
    return [send(topic, key=key, value=value, partition=p) for key, value, p in zip(keys, values, partitions)]


def default_partitions(producer: Any, topic: str, keys: Sequence[bytes]) -> list[int] | None:
    """The partitions kafka-python's default partitioner gives ``keys`` on ``topic``, all at once.

    It runs murmur2 in Python for every record (~10 us each); this is the
    same rule compiled, for a ``send(..., partition=p)`` per record. None
    when the topic's partitions are not 0..n-1 (what the rule indexes into).
    """
    known = sorted(producer.partitions_for(topic))
    if known != list(range(len(known))):
        return None
    return murmur2_key_partitions(keys, len(known)).tolist()


def _per_row_ts(ts: TsArg, n: int) -> Sequence[float | None]:
    """Expand ``ts`` to one value (or ``None``) per record."""
    if ts is None:
        return [None] * n
    if np.ndim(ts) == 0:
        return [ts] * n  # type: ignore[list-item]
    times = list(ts)  # type: ignore[arg-type]  # each checked by the encoder (a clear TypeError for "now")
    if len(times) != n:
        raise ValueError(f"{len(times)} timestamps for {n} records")
    return times


# --------------------------------------------------------------------------
# loaders


def load_ids(path: str | Path) -> list[str]:
    """Read ids, one per line; surrounding whitespace and blank lines are dropped."""
    with open(path, encoding="utf-8-sig") as f:
        return [s for s in (line.strip() for line in f) if s]


def load_npy_inserts(path: str | Path, ids_path: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Load an (n, d) ``.npy`` array; ids are row numbers or read from ``ids_path``."""
    X = np.load(path, allow_pickle=False)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{path}: expected a non-empty 2-D array, got shape {X.shape}")
    if ids_path is not None:
        ids = load_ids(ids_path)
        if len(ids) != X.shape[0]:
            raise ValueError(f"{ids_path}: {len(ids)} ids for {X.shape[0]} rows of {path}")
    else:
        ids = [str(i) for i in range(X.shape[0])]
    return ids, np.asarray(X, dtype=np.float64)


def _is_float(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def load_csv_inserts(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Load a ``.csv`` of ``id, x1, ..., xd`` rows.

    The first row is a header (skipped) if any of its value columns is not a
    number. Blank lines are skipped; rows of differing width are an error.
    """
    ids: list[str] = []
    rows: list[list[str]] = []
    width: int | None = None
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, rec in enumerate(csv.reader(f), start=1):
            if not rec or all(not c.strip() for c in rec):
                continue
            if width is None:
                if len(rec) < 2:
                    raise ValueError(f"{path}:{lineno}: need an id column and at least one value")
                width = len(rec)
                if not all(_is_float(c) for c in rec[1:]):
                    continue  # header
            if len(rec) != width:
                raise ValueError(f"{path}:{lineno}: {len(rec)} columns, expected {width}")
            pid = rec[0].strip()
            if not pid:
                raise ValueError(f"{path}:{lineno}: empty id")
            ids.append(pid)
            rows.append(rec[1:])
    if not rows:
        raise ValueError(f"{path}: no data rows")
    try:
        X = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric value: {exc}") from None
    return ids, X


def load_inserts(path: str | Path, ids_path: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Load inserts from ``.npy`` or ``.csv`` (by extension)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return load_npy_inserts(path, ids_path)
    if suffix == ".csv":
        if ids_path is not None:
            raise ValueError("--ids applies to .npy inserts only (a .csv carries its ids)")
        return load_csv_inserts(path)
    raise ValueError(f"{path}: unsupported inserts file (use .npy or .csv)")


# --------------------------------------------------------------------------
# the `produce` command


def add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``produce`` command's options to ``parser``."""
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help="Kafka bootstrap address(es), comma-separated")
    parser.add_argument("--insert-topic", default=TOPIC_INSERTS, help="topic for inserts (default %(default)s)")
    parser.add_argument("--delete-topic", default=TOPIC_DELETES, help="topic for deletes (default %(default)s)")
    parser.add_argument("--inserts", metavar="FILE", help=".npy (n x d) or .csv (id, x1..xd; header optional) of points to insert")
    parser.add_argument("--ids", metavar="FILE", help="ids for the rows of a .npy, one per line (default: row numbers)")
    parser.add_argument("--deletes", metavar="FILE", help="ids to delete, one per line (sent after the inserts)")
    parser.add_argument("--max-id-bytes", type=int, default=DEFAULT_MAX_ID_BYTES,
                        help="refuse ids longer than this in UTF-8: the worker's --max-id-bytes (default %(default)s)")
    parser.add_argument("--connect-timeout", type=_seconds, default=30.0,
                        help="seconds to wait for Kafka to answer before giving up (0: one attempt; "
                             "default %(default)s)")
    parser.add_argument(
        "--binary",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send vectors as float32 bin (default) or as float64 arrays (--no-binary)",
    )


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def main_produce(args: argparse.Namespace) -> int:
    """Run the ``produce`` command; returns an exit code.

    Inserts are sent and flushed before deletes, so each delete's record
    timestamp is not earlier than the inserts'.
    """
    if args.ids and not args.inserts:
        print("stream-unlearn produce: --ids needs --inserts", file=sys.stderr)
        return 2
    if not args.inserts and not args.deletes:
        print("stream-unlearn produce: give --inserts and/or --deletes", file=sys.stderr)
        return 2
    try:
        inserts = load_inserts(args.inserts, args.ids) if args.inserts else None
        deletes = load_ids(args.deletes) if args.deletes else None
    except (OSError, ValueError) as exc:
        print(f"stream-unlearn produce: {exc}", file=sys.stderr)
        return 2
    from .broker import KafkaUnreachable, wait_for_kafka

    servers = [s.strip() for s in args.bootstrap_servers.split(",") if s.strip()]
    try:
        wait_for_kafka(args.bootstrap_servers, args.connect_timeout)
        _produce(args, servers, inserts, deletes)
    except KafkaUnreachable as exc:
        print(f"stream-unlearn produce: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:  # e.g. NaN in the data, empty id
        print(f"stream-unlearn produce: bad input: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - Kafka unreachable, send failures
        text = str(exc)  # kafka-python's errors already start with their class name
        named = text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"
        print(f"stream-unlearn produce: {named}", file=sys.stderr)
        return 1
    return 0


def _produce(
    args: argparse.Namespace,
    servers: list[str],
    inserts: tuple[list[str], np.ndarray] | None,
    deletes: list[str] | None,
) -> None:
    with EventProducer(
        servers,
        insert_topic=args.insert_topic,
        delete_topic=args.delete_topic,
        binary=args.binary,
        max_id_bytes=args.max_id_bytes,
    ) as producer:
        if inserts is not None:
            n = producer.insert(*inserts)
            producer.flush()
            print(f"produced {n} inserts to {args.insert_topic}", flush=True)
        if deletes is not None:
            n = producer.delete(deletes)
            producer.flush()
            print(f"produced {n} deletes to {args.delete_topic}", flush=True)
