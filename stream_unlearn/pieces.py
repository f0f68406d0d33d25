"""msgpack encoding as a list of pieces: the bytes of ``packb``, in small steps, big binaries not copied.

The snapshot writer thread encodes a unit's state while the worker's loop
goes on. ``msgpack.packb`` holds the GIL from start to end: at 40k points a
state's vectors take it 5-17 ms to copy into the packer's buffer and its
ids ~5 ms, and the loop stalls that long behind it. :func:`pack_pieces`
gives the same bytes as ``msgpack.packb(obj, use_bin_type=True)`` cut into
pieces: a big binary is a piece of its own, by reference (no copy); a long
list is packed a slice at a time; the rest is packed a value at a time into
small pieces. No step holds the GIL for long, and the file writer hashes and
writes each piece (both release the GIL) without joining them. Between two
slices the encoder calls a :data:`Pause`, where the worker's loop may go
first (:mod:`.loop_priority`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import msgpack
import numpy as np

__all__ = ["Buffer", "Encoder", "Pause", "Pieces", "as_pieces", "joined", "n_bytes", "no_pause", "pack_pieces", "steps"]

Buffer = bytes | bytearray | memoryview
#: The bytes of one encoded value, in order.
Pieces = list[Buffer]
#: Called between two steps of an encoding or a write: where other work may go first.
Pause = Callable[[], None]


def no_pause() -> None:
    """The :data:`Pause` of work that gives way to nothing."""


class Encoder(Protocol):
    """A captured state's encoding, run later (on any thread): its pieces."""

    def __call__(self, pause: Pause = no_pause) -> Pieces: ...


#: Binaries at least this long are referenced, not copied.
_BIG = 64 * 1024
#: Long lists are packed this many items per ``packb`` call (~0.2 ms for short strings).
_SLICE = 2048
#: Lists up to this long are walked item by item (they may hold big binaries: a state's arrays).
_SHORT = 64
#: Small packed values are gathered into pieces of about this size.
_GATHER = 1 << 20

_HEADERS = msgpack.Packer(use_bin_type=True)


#: Items per step of :func:`steps`: gathering 8192 ids or rows, or joining 8192 digests, holds the
#: GIL ~0.5-1.5 ms here (130k of them in one call: 9-19 ms, a stall of the worker's loop).
STEP_ITEMS = 8192


def steps(n: int, pause: Pause, size: int | None = None) -> Iterator[slice]:
    """Slices covering ``range(n)``, ``size`` (default :data:`STEP_ITEMS`) items each, ``pause()`` before each.

    For a long C loop (a gather, a join) on a writer thread: in steps, no
    single call holds the GIL long, and the loop may go first in between.
    """
    size = size or STEP_ITEMS
    for start in range(0, n, size):
        pause()
        yield slice(start, min(start + size, n))


def pack_pieces(obj: Any, pause: Pause = no_pause) -> Pieces:
    """``msgpack.packb(obj, use_bin_type=True)`` as pieces (see the module docstring).

    A 1-D numpy array of objects (a store's ids) packs as its ``tolist()``,
    a slice at a time, with ``pause()`` before each slice. The pieces
    reference the big binaries of ``obj``: they must not change until the
    pieces are written.
    """
    out = _Gather()
    _pack(obj, out, pause)
    out.flush()
    return out.pieces


def joined(pieces: Buffer | Sequence[Buffer]) -> bytes:
    """The pieces as one bytes object."""
    return b"".join(as_pieces(pieces))


def as_pieces(data: Buffer | Sequence[Buffer]) -> Sequence[Buffer]:
    """``data`` as a sequence of buffers: a single bytes-like object is one piece.

    TypeError for anything else.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        return (data,)
    if not isinstance(data, (list, tuple)) or not all(isinstance(p, (bytes, bytearray, memoryview)) for p in data):
        raise TypeError(f"expected bytes or a list of bytes-like pieces, got {type(data).__name__}")
    return data


def n_bytes(pieces: Buffer | Sequence[Buffer]) -> int:
    """Total length of the pieces in bytes."""
    return sum(memoryview(p).nbytes for p in as_pieces(pieces))


class _Gather:
    """Pieces being built: small packed values gathered, big binaries appended as they are."""

    def __init__(self) -> None:
        self.pieces: Pieces = []
        self._small = bytearray()

    def add(self, packed: bytes) -> None:
        self._small += packed
        if len(self._small) >= _GATHER:
            self.flush()

    def reference(self, view: memoryview) -> None:
        self.flush()
        self.pieces.append(view)

    def flush(self) -> None:
        if self._small:
            self.pieces.append(bytes(self._small))
            self._small = bytearray()


def _pack(obj: Any, out: _Gather, pause: Pause) -> None:
    if isinstance(obj, dict):
        out.add(_HEADERS.pack_map_header(len(obj)))
        for key, value in obj.items():
            _pack(key, out, pause)
            _pack(value, out, pause)
    elif isinstance(obj, (list, tuple)) and len(obj) <= _SHORT:
        out.add(_HEADERS.pack_array_header(len(obj)))
        for item in obj:
            _pack(item, out, pause)
    elif isinstance(obj, (list, tuple)) or (isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 1):
        out.add(_HEADERS.pack_array_header(len(obj)))
        for start in range(0, len(obj), _SLICE):
            pause()
            part = obj[start : start + _SLICE]
            part = part.tolist() if isinstance(part, np.ndarray) else list(part)
            packed = msgpack.packb(part, use_bin_type=True)
            out.add(packed[len(_HEADERS.pack_array_header(len(part))) :])  # the items, without the slice's header
    elif isinstance(obj, (bytes, bytearray, memoryview)) and memoryview(obj).nbytes >= _BIG:
        view = memoryview(obj)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        out.add(_bin_header(view.nbytes))
        out.reference(view)
    else:
        out.add(msgpack.packb(obj, use_bin_type=True))


def _bin_header(size: int) -> bytes:
    """The msgpack bin header for ``size`` bytes (bin 8, 16 or 32: what ``packb`` chooses)."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 1 << 32:
        return b"\xc6" + size.to_bytes(4, "big")
    raise ValueError(f"a binary of {size} bytes is too long for msgpack")
