"""Versioned, pickle-free model state: msgpack maps with raw little-endian arrays."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from .pieces import Pause, Pieces, joined, no_pause, pack_pieces

FORMAT = "stream-unlearn-model"
VERSION = 1


class StateError(ValueError):
    """A state blob that is not a model state this version can load."""


def pack_array(arr: np.ndarray, view: bool = False) -> dict[str, Any]:
    """An array as ``{dtype, shape, data}`` with little-endian bytes.

    ``view``: ``data`` is a memoryview of the array's buffer instead of a
    copy (msgpack packs it the same), for big arrays that nothing changes
    until they are packed.
    """
    arr = np.ascontiguousarray(arr)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder not in "|" else arr.dtype
    arr = arr.astype(dtype, copy=False)
    data = memoryview(arr.reshape(-1)).cast("B") if view else arr.tobytes()
    return {"dtype": dtype.str, "shape": list(arr.shape), "data": data}


def unpack_array(obj: Any) -> np.ndarray:
    """The inverse of :func:`pack_array`, validating sizes."""
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError) as exc:
        raise StateError(f"malformed array in state: {exc}") from exc
    if dtype.kind not in "fiub" or not isinstance(data, bytes):
        raise StateError(f"unsupported array dtype in state: {dtype}")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        raise StateError("array data size does not match its shape")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def dumps(body: dict[str, Any]) -> bytes:
    """Serialise a state body with the format header."""
    return joined(dump_pieces(body))


def dump_pieces(body: dict[str, Any], pause: Pause = no_pause) -> Pieces:
    """:func:`dumps` as pieces (:mod:`.pieces`): for a writer thread that must not hold the GIL for long."""
    return pack_pieces({"format": FORMAT, "version": VERSION, **body}, pause)


def loads(blob: bytes) -> dict[str, Any]:
    """Parse and check the header of a state blob."""
    try:
        body = msgpack.unpackb(blob, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise StateError(f"not a model state: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise StateError("not a stream-unlearn model state")
    if body.get("version") != VERSION:
        raise StateError(f"model state version {body.get('version')} is not supported (expected {VERSION})")
    return body
