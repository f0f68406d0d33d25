"""Durable, checksummed, owner-only snapshot directory for the worker.

Layout of the store root (mode 0o700)::

    root/
      .lock                  flock(2) target, serialises writers/pruners
      .tmp-<uuid>/           a snapshot being written (removed at open if left by a crash)
      snap-000000000001/     one complete snapshot (mode 0o700)
        manifest.msgpack     checksummed manifest (mode 0o600)
        <part name>          one file per part (mode 0o600)

A snapshot is written into a temporary directory, every file and the
directory are fsync'ed, the directory is renamed to ``snap-<seq:012d>`` and
the root is fsync'ed: after :meth:`SnapshotStore.write` returns, the snapshot
is durable, and a crash at any earlier point leaves at most a ``.tmp-*``
directory, never a half-written ``snap-*``.

The manifest file is a msgpack map::

    {"format": "stream-unlearn-snapshot", "version": 1,
     "body": <bin: msgpack of the body>, "sha256": <bin: sha256(body)>}

and the body::

    {"seq": int, "created_at": float (unix seconds), "meta": <caller's map>,
     "parts": {name: {"size": int, "sha256": <bin, 32 bytes>}}}

so that a flipped byte anywhere (manifest or part) is detected.

Snapshots hold personal data (raw vectors). Everything is created
owner-only, and :meth:`SnapshotStore.prune` removes every older snapshot once
a newer one is durable. Pruning unlinks files; it does not overwrite their
blocks (no shredding: that is the job of the file system / disk encryption).

Stdlib, msgpack and :mod:`.pieces`; POSIX only (fsync of directories, flock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from .pieces import Buffer, Pause, as_pieces, no_pause

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SkippedSnapshot",
    "Snapshot",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotStore",
    "load_snapshot",
    "snapshot_seq",
    "validate_part_name",
]

log = logging.getLogger(__name__)

FORMAT = "stream-unlearn-snapshot"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.msgpack"
LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"
SNAP_PREFIX = "snap-"

DIR_MODE = 0o700
FILE_MODE = 0o600

#: Upper bound on the manifest file size; a larger file is corrupt.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: A part is hashed and written this many bytes at a time, with a pause between (see ``write``).
_WRITE_STEP = 4 * 1024 * 1024

_SNAP_RE = re.compile(r"^snap-(\d{12,})$")
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class SnapshotError(Exception):
    """A snapshot directory is missing, corrupt, truncated or unsupported."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What :meth:`SnapshotStore.write` made."""

    path: Path
    seq: int
    created_at: float
    #: Bytes of all files of the snapshot: parts plus manifest.
    size_bytes: int


@dataclass(frozen=True)
class Snapshot:
    """A fully verified snapshot."""

    path: Path
    seq: int
    created_at: float
    meta: Any
    parts: dict[str, bytes]
    #: Bytes of all files of the snapshot: parts plus manifest.
    size_bytes: int
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class SkippedSnapshot:
    """A ``snap-*`` directory that :meth:`SnapshotStore.load_latest` refused."""

    path: Path
    seq: int
    reason: str


def validate_part_name(name: object) -> str:
    """Return ``name`` if it is a safe part file name, else raise ValueError.

    Allowed: 1-128 characters from ``[A-Za-z0-9_.-]``, not starting with a
    dot or dash, and not the reserved manifest name. So no path separators,
    no ``.``/``..``, no hidden files, no NUL.
    """
    if not isinstance(name, str):
        raise ValueError(f"part name must be str, got {type(name).__name__}")  # noqa: TRY004 - ValueError: the API's bad-input error
    if not _PART_RE.match(name) or name.endswith("\n"):
        raise ValueError(
            f"invalid part name {name!r}: use 1-128 chars of [A-Za-z0-9_.-], "
            "not starting with '.' or '-', no path separators"
        )
    if name == MANIFEST_NAME:
        raise ValueError(f"part name {name!r} is reserved")
    return name


def snapshot_seq(path: os.PathLike[str] | str) -> int | None:
    """Sequence number encoded in a ``snap-<seq>`` directory name, or None."""
    m = _SNAP_RE.match(os.path.basename(os.fspath(path)))
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------
# low-level helpers


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: Buffer | Sequence[Buffer], pause: Pause = no_pause) -> tuple[int, bytes]:
    """Create ``path`` (must not exist) with mode 0o600, write the pieces, fsync.

    Returns the size and sha256 of what was written, hashed piece by piece as
    it is written (both release the GIL for big pieces), ``_WRITE_STEP``
    bytes at a time with ``pause()`` before each step.
    """
    digest = hashlib.sha256()
    size = 0
    fd = os.open(
        path,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        FILE_MODE,
    )
    try:
        os.fchmod(fd, FILE_MODE)  # independent of the umask
        for piece in as_pieces(data):
            whole = memoryview(piece).cast("B")
            for start in range(0, len(whole), _WRITE_STEP):
                pause()
                view = whole[start : start + _WRITE_STEP]
                digest.update(view)
                size += len(view)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return size, digest.digest()


def _read_regular(path: Path, max_bytes: int | None = None) -> tuple[bytes, int]:
    """Read a regular file (no symlinks). Returns (data, size from fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(f"{path}: not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise SnapshotError(f"{path}: too large ({st.st_size} bytes)")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), st.st_size
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove a directory tree without following symlinks."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(Path(entry.path))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


# --------------------------------------------------------------------------
# reading / verifying one snapshot


def load_snapshot(path: os.PathLike[str] | str) -> Snapshot:
    """Load and fully verify the snapshot directory ``path``.

    Raises :class:`SnapshotError` (with the reason) if the directory is not a
    complete, intact snapshot: missing/garbage manifest, manifest checksum
    mismatch, unsupported version, sequence not matching the directory name,
    missing/extra/truncated/altered part files, symlinks, ...
    """
    path = Path(path)
    try:
        return _load_snapshot(path)
    except SnapshotError:
        raise
    except FileNotFoundError as e:
        raise SnapshotError(f"{path}: missing {e.filename or 'file'}") from e
    except OSError as e:
        raise SnapshotError(f"{path}: {e}") from e


def _load_snapshot(path: Path) -> Snapshot:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such snapshot directory") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SnapshotError(f"{path}: not a directory")

    manifest_path = path / MANIFEST_NAME
    try:
        raw, _ = _read_regular(manifest_path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: missing {MANIFEST_NAME}") from None
    body, version = _parse_manifest(path, raw)

    seq = body["seq"]
    dir_seq = snapshot_seq(path)
    if dir_seq is not None and dir_seq != seq:
        raise SnapshotError(
            f"{path}: manifest seq {seq} does not match directory name"
        )

    expected = set(body["parts"]) | {MANIFEST_NAME}
    present = set(os.listdir(path))
    if present != expected:
        missing = sorted(expected - present)
        extra = sorted(present - expected)
        raise SnapshotError(
            f"{path}: files do not match manifest"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )

    parts: dict[str, bytes] = {}
    total = len(raw)
    for name, entry in body["parts"].items():
        data, size = _read_regular(path / name, entry["size"])
        if size != entry["size"] or len(data) != entry["size"]:
            raise SnapshotError(
                f"{path}: part {name!r} has {len(data)} bytes, "
                f"manifest says {entry['size']} (truncated?)"
            )
        if not hmac.compare_digest(hashlib.sha256(data).digest(), entry["sha256"]):
            raise SnapshotError(f"{path}: part {name!r} checksum mismatch")
        parts[name] = data
        total += size

    return Snapshot(
        path=path,
        seq=seq,
        created_at=body["created_at"],
        meta=body["meta"],
        parts=parts,
        size_bytes=total,
        format_version=version,
    )


def _parse_manifest(path: Path, raw: bytes) -> tuple[dict[str, Any], int]:
    """Parse and structurally validate a manifest; raise SnapshotError."""

    def bad(why: str) -> SnapshotError:
        return SnapshotError(f"{path}: invalid manifest: {why}")

    try:
        outer = _unpack(raw)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types on garbage
        raise bad(f"not msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise bad("not a stream-unlearn snapshot manifest")
    version = outer.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("missing format version")
    if version != FORMAT_VERSION:
        raise bad(f"unsupported format version {version} (supported: {FORMAT_VERSION})")
    body_raw, digest = outer.get("body"), outer.get("sha256")
    if not isinstance(body_raw, bytes) or not isinstance(digest, bytes):
        raise bad("missing body or checksum")
    if not hmac.compare_digest(hashlib.sha256(body_raw).digest(), digest):
        raise bad("manifest checksum mismatch")
    try:
        body = _unpack(body_raw)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types on garbage
        raise bad(f"body not msgpack ({type(e).__name__})") from None
    if not isinstance(body, dict):
        raise bad("body is not a map")

    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise bad("bad seq")
    created_at = body.get("created_at")
    if not isinstance(created_at, float):
        raise bad("bad created_at")
    if "meta" not in body:
        raise bad("missing meta")
    parts = body.get("parts")
    if not isinstance(parts, dict):
        raise bad("bad parts table")
    for name, entry in parts.items():
        try:
            validate_part_name(name)
        except ValueError as e:
            raise bad(str(e)) from None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or isinstance(entry.get("size"), bool)
            or entry["size"] < 0
            or not isinstance(entry.get("sha256"), bytes)
            or len(entry["sha256"]) != 32
        ):
            raise bad(f"bad entry for part {name!r}")
    return body, version


# --------------------------------------------------------------------------
# the store


class SnapshotStore:
    """A directory of snapshots, newest wins.

    ``SnapshotStore(root)`` creates ``root`` (mode 0o700) if missing; if it
    exists with group/other permission bits it is chmod'ed to 0o700 and a
    warning is logged; if it is owned by another user, SnapshotError.
    Leftover ``.tmp-*`` directories (a crash during :meth:`write`) are
    removed, unless another process currently holds the store lock (it may
    be writing one right now).

    ``readonly=True`` (for inspect/verify tools next to a running worker):
    nothing is created, chmod'ed or removed; :meth:`write` and
    :meth:`prune` raise.

    Writers and pruners serialise on ``flock(root/.lock)``, so two stores on
    one root (processes or threads) never interleave. Not reentrant.
    """

    def __init__(self, root: os.PathLike[str] | str, *, readonly: bool = False) -> None:
        self.root = Path(root)
        self.readonly = readonly
        #: Snapshots refused by the last :meth:`load_latest` call.
        self.skipped: list[SkippedSnapshot] = []
        #: ``.tmp-*`` directories removed when the store was opened.
        self.removed_tmp: list[Path] = []
        self._last_seq = 0
        if readonly:
            if not self.root.is_dir():
                raise SnapshotError(f"snapshot root {self.root} does not exist")
            self._check_root_mode(fix=False)
            return
        self._ensure_root()
        with self._lock(blocking=False) as got:
            if got:
                self.removed_tmp = self._remove_tmp_dirs()
            else:
                log.info("snapshot store %s is locked by another writer; "
                         "not cleaning temporary directories", self.root)

    # ---- root, lock, housekeeping

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True)
        except FileExistsError:
            if not self.root.is_dir():
                raise SnapshotError(f"snapshot root {self.root} is not a directory") from None
            self._check_root_mode(fix=True)
        else:
            os.chmod(self.root, DIR_MODE)  # mkdir's mode is filtered by umask
            parent = self.root.resolve().parent
            with contextlib.suppress(OSError):
                _fsync_dir(parent)

    def _check_root_mode(self, *, fix: bool) -> None:
        st = os.stat(self.root)
        if fix and hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise SnapshotError(
                f"snapshot root {self.root} is owned by uid {st.st_uid}, not by "
                f"this process (uid {os.geteuid()}); refusing to store personal data there"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            if fix:
                log.warning(
                    "snapshot root %s had mode %o (group/world accessible); "
                    "snapshots hold personal data, changing it to %o",
                    self.root, mode, DIR_MODE,
                )
                os.chmod(self.root, DIR_MODE)
            else:
                log.warning(
                    "snapshot root %s has mode %o (group/world accessible); "
                    "snapshots hold personal data, it should be %o",
                    self.root, mode, DIR_MODE,
                )

    @contextlib.contextmanager
    def _lock(self, *, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(
            self.root / LOCK_NAME,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
        )
        try:
            flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except OSError as e:
                if not blocking and e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    yield False
                    return
                raise
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _tmp_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.name.startswith(TMP_PREFIX))

    def _remove_tmp_dirs(self) -> list[Path]:
        removed = []
        for p in self._tmp_dirs():
            log.warning("removing leftover temporary snapshot directory %s", p)
            _remove_tree(p)
            removed.append(p)
        if removed:
            _fsync_dir(self.root)
        return removed

    def _require_writable(self) -> None:
        if self.readonly:
            raise SnapshotError(f"snapshot store {self.root} is opened read-only")

    # ---- listing

    def list(self) -> list[Path]:
        """``snap-<seq>`` directories (not verified), oldest first."""
        found = []
        for p in self.root.iterdir():
            seq = snapshot_seq(p)
            if seq is not None and p.is_dir() and not p.is_symlink():
                found.append((seq, p))
        found.sort()
        return [p for _, p in found]

    def _max_seq(self) -> int:
        seqs = [snapshot_seq(p) for p in self.root.iterdir()]
        return max([s for s in seqs if s is not None], default=0)

    # ---- write

    def write(self, parts: dict[str, Buffer | Sequence[Buffer]], meta: Any, pause: Pause = no_pause) -> SnapshotInfo:
        """Write a new snapshot durably and atomically; return its info.

        ``parts`` maps part names (see :func:`validate_part_name`) to bytes,
        or to a list of bytes-like pieces (:mod:`.pieces`) written one after
        the other, which must not change until this returns; ``meta`` is any
        msgpack-serialisable value (a dict in practice; tuples come back as
        lists, int map keys are kept). The new sequence number is one more
        than the largest ``snap-*`` present (valid or not) and than any this
        store wrote before. ``pause`` is called between steps of the writing
        (the snapshot writer's :meth:`LoopPriority.pause <.loop_priority.LoopPriority.pause>`).
        """
        self._require_writable()
        if not isinstance(parts, dict):
            raise TypeError("parts must be a dict[str, bytes]")
        for name, data in parts.items():
            validate_part_name(name)
            try:
                as_pieces(data)
            except TypeError as exc:
                raise TypeError(f"part {name!r}: {exc}") from None

        def fill(tmp: Path) -> dict[str, dict[str, Any]]:
            table = {}
            for name, data in parts.items():
                size, digest = _write_file(tmp / name, data, pause)
                table[name] = {"size": size, "sha256": digest}
            return table

        return self._commit(fill, meta)

    def relabel(self, source: os.PathLike[str] | str, meta: Any) -> SnapshotInfo:
        """A new snapshot with the parts of ``source`` (one of this store's) under a new ``meta``.

        The parts are hard-linked, not written, fsynced or hashed again: they
        are durable already and the manifest of ``source`` vouches for them.
        So a snapshot that only changes ``meta`` costs a manifest.
        """
        self._require_writable()
        path = Path(source)
        if path.parent.resolve() != self.root.resolve() or snapshot_seq(path) is None:
            raise ValueError(f"can only relabel this store's snapshots, not {path}")
        raw, _ = _read_regular(path / MANIFEST_NAME)
        table = _parse_manifest(path, raw)[0]["parts"]

        def fill(tmp: Path) -> dict[str, dict[str, Any]]:
            for name in table:
                os.link(path / name, tmp / name, follow_symlinks=False)
            return table

        return self._commit(fill, meta)

    def _commit(self, fill: Callable[[Path], dict[str, dict[str, Any]]], meta: Any) -> SnapshotInfo:
        """Make a temporary directory, let ``fill`` put the parts in it (returning the manifest's
        part table), add the manifest, fsync, rename to the next ``snap-*``."""
        _pack(meta)  # fail early (TypeError) on an unserialisable meta, before any file is made
        with self._lock():
            seq = max(self._max_seq(), self._last_seq) + 1
            created_at = time.time()
            tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
            final = self.root / f"{SNAP_PREFIX}{seq:012d}"
            try:
                os.mkdir(tmp, DIR_MODE)
                os.chmod(tmp, DIR_MODE)
                table = fill(tmp)
                body = _pack(
                    {"seq": seq, "created_at": created_at, "meta": meta, "parts": table}
                )
                manifest = _pack(
                    {
                        "format": FORMAT,
                        "version": FORMAT_VERSION,
                        "body": body,
                        "sha256": hashlib.sha256(body).digest(),
                    }
                )
                _write_file(tmp / MANIFEST_NAME, manifest)
                _fsync_dir(tmp)
                if os.path.lexists(final):  # cannot happen under the lock
                    raise SnapshotError(f"{final} already exists")
                os.rename(tmp, final)
                _fsync_dir(self.root)
            except BaseException:
                with contextlib.suppress(OSError):
                    _remove_tree(tmp)
                raise
            self._last_seq = seq

        size = sum(entry["size"] for entry in table.values()) + len(manifest)
        log.debug("wrote snapshot %s (%d bytes)", final, size)
        return SnapshotInfo(path=final, seq=seq, created_at=created_at, size_bytes=size)

    # ---- read

    def load(self, path: os.PathLike[str] | str) -> Snapshot:
        """Load and verify one snapshot directory; SnapshotError if invalid.

        A relative ``path`` is taken relative to the store root.
        """
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = self.root / p
        return load_snapshot(p)

    def load_latest(self) -> Snapshot | None:
        """The valid snapshot with the highest seq, or None.

        Invalid ones (corrupt, truncated, missing manifest, ...) newer than
        it are never loaded: each is logged and recorded in :attr:`skipped`
        (reset at each call).
        """
        self.skipped = []
        for p in reversed(self.list()):
            try:
                snap = load_snapshot(p)
            except SnapshotError as e:
                log.warning("skipping invalid snapshot %s: %s", p, e)
                self.skipped.append(SkippedSnapshot(path=p, seq=snapshot_seq(p) or 0, reason=str(e)))
                continue
            self._last_seq = max(self._last_seq, snap.seq)
            return snap
        return None

    # ---- prune

    def prune(self, keep_seq: int, *, verify: bool = True) -> list[Path]:
        """Remove every snapshot with seq < ``keep_seq`` and all ``.tmp-*`` dirs.

        Call it as soon as snapshot ``keep_seq`` is durable: older snapshots
        may hold data of people deleted since. Invalid older snapshots are
        removed too. Files are unlinked (not overwritten), directories
        rmdir'ed, then the root is fsync'ed. Returns the removed paths.

        Refuses (SnapshotError, nothing removed) if snapshot ``keep_seq``
        does not exist or, with ``verify`` (default), does not verify: that
        would leave no valid snapshot to restore from.
        """
        self._require_writable()
        keep = self.root / f"{SNAP_PREFIX}{keep_seq:012d}"
        with self._lock():
            if verify:
                load_snapshot(keep)
            elif not keep.is_dir():
                raise SnapshotError(f"{keep}: no such snapshot directory")
            victims = [p for p in self.list() if (snapshot_seq(p) or 0) < keep_seq]
            victims += self._tmp_dirs()
            removed = []
            for p in victims:
                _remove_tree(p)
                removed.append(p)
            _fsync_dir(self.root)
        if removed:
            log.info("pruned %d old snapshot director%s from %s",
                     len(removed), "y" if len(removed) == 1 else "ies", self.root)
        return removed

    def __repr__(self) -> str:
        return f"SnapshotStore({str(self.root)!r}{', readonly=True' if self.readonly else ''})"
