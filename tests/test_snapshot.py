"""Snapshot store: real files, real fsync, real permissions."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_unlearn.snapshot import (
    MANIFEST_NAME,
    Snapshot,
    SnapshotError,
    SnapshotStore,
    load_snapshot,
    snapshot_seq,
    validate_part_name,
)

REPO = Path(__file__).resolve().parents[1]


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def all_bytes_under(root: Path) -> list[tuple[Path, bytes]]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out.append((p, p.read_bytes()))
    return out


PARTS = {"model": b"\x00model-state" * 10, "offsets": b"offsets", "tombstones": b""}
META = {"kind": "dc", "offsets": {"unlearn.inserts": {0: 17, 1: 4}}, "n": 3}


# ---------------------------------------------------------------- round trip


def test_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    assert store.load_latest() is None
    info = store.write(PARTS, META)
    assert info.seq == 1
    assert info.path == tmp_path / "snaps" / "snap-000000000001"
    assert info.size_bytes == sum(map(len, PARTS.values())) + (info.path / MANIFEST_NAME).stat().st_size
    assert sum(p.stat().st_size for p in info.path.iterdir()) == info.size_bytes

    snap = store.load_latest()
    assert isinstance(snap, Snapshot)
    assert snap.parts == PARTS
    assert snap.meta == META  # int map keys survive
    assert snap.seq == 1
    assert snap.created_at == info.created_at
    assert isinstance(snap.created_at, float)
    assert snap.path == info.path
    assert snap.size_bytes == info.size_bytes
    assert store.skipped == []

    assert store.load(info.path).parts == PARTS
    assert store.load(info.path.name).parts == PARTS  # relative to root
    assert load_snapshot(info.path).meta == META


def test_newest_wins_and_list_sorted(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for i in range(3):
        store.write({"p": bytes([i])}, {"i": i})
    assert [snapshot_seq(p) for p in store.list()] == [1, 2, 3]
    snap = store.load_latest()
    assert snap is not None and snap.seq == 3 and snap.parts == {"p": b"\x02"}


safe_names = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.\-]{0,30}\Z").filter(
    lambda n: n != MANIFEST_NAME
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.dictionaries(safe_names, st.binary(max_size=2000), max_size=6),
    meta=st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(), st.binary(), st.none()),
        max_size=5,
    ),
)
def test_round_trip_property(parts: dict[str, bytes], meta: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = SnapshotStore(Path(d) / "s")
        store.write(parts, meta)
        info2 = store.write(parts, meta)
        snap = SnapshotStore(Path(d) / "s").load_latest()
        assert snap is not None
        assert snap.seq == info2.seq == 2
        assert snap.parts == parts
        assert snap.meta == meta


# ---------------------------------------------------------------- part names


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", ".tmp-x", "a/b", "/abs", "../up", "a\\b", "-x", "a\x00b",
     "sp ace", "x\n", MANIFEST_NAME, "a" * 129, 3, None, b"bytes"],
)
def test_invalid_part_names_rejected(tmp_path: Path, name: object) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(ValueError):
        validate_part_name(name)
    with pytest.raises(ValueError):
        store.write({name: b"x"}, {})  # type: ignore[dict-item]
    assert store.list() == []
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # no tmp dir left


@given(
    prefix=st.text(max_size=10),
    bad=st.sampled_from(["/", "\\", "\x00", "/..", "\n"]),
    suffix=st.text(max_size=10),
)
def test_invalid_part_names_property(prefix: str, bad: str, suffix: str) -> None:
    with pytest.raises(ValueError):
        validate_part_name(prefix + bad + suffix)
    with pytest.raises(ValueError):
        validate_part_name("." + prefix + suffix)  # hidden / dot names


@given(safe_names)
def test_safe_part_names_accepted(name: str) -> None:
    assert validate_part_name(name) == name


def test_bad_inputs_leave_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(TypeError):
        store.write({"a": "text, not bytes"}, {})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        store.write({"a": b"x"}, {"bad": object()})
    assert store.list() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# ---------------------------------------------------------------- permissions


def test_permissions_owner_only_regardless_of_umask(tmp_path: Path) -> None:
    root = tmp_path / "a" / "snaps"
    with umask(0):
        store = SnapshotStore(root)
        info = store.write(PARTS, META)
    assert mode(root) == 0o700
    assert mode(info.path) == 0o700
    files = list(info.path.iterdir())
    assert len(files) == len(PARTS) + 1
    for f in files:
        assert mode(f) == 0o600, f
    assert mode(root / ".lock") == 0o600


def test_existing_open_root_is_fixed_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "snaps"
    root.mkdir()
    os.chmod(root, 0o755)
    with caplog.at_level(logging.WARNING, logger="stream_unlearn.snapshot"):
        SnapshotStore(root)
    assert mode(root) == 0o700
    assert any("755" in r.getMessage() and "personal data" in r.getMessage() for r in caplog.records)


def test_readonly_does_not_touch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SnapshotError):
        SnapshotStore(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()

    store = SnapshotStore(tmp_path / "s")
    store.write(PARTS, META)
    tmp = tmp_path / "s" / ".tmp-inprogress"
    tmp.mkdir()
    os.chmod(tmp_path / "s", 0o750)
    with caplog.at_level(logging.WARNING, logger="stream_unlearn.snapshot"):
        ro = SnapshotStore(tmp_path / "s", readonly=True)
    assert tmp.exists()  # a running worker may be writing it
    assert mode(tmp_path / "s") == 0o750  # warned, not changed
    assert any("750" in r.getMessage() for r in caplog.records)
    assert ro.load_latest().parts == PARTS  # type: ignore[union-attr]
    with pytest.raises(SnapshotError):
        ro.write(PARTS, META)
    with pytest.raises(SnapshotError):
        ro.prune(1)


def test_root_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(SnapshotError):
        SnapshotStore(f)


# ---------------------------------------------------------------- corruption


def _corrupt_truncate(snap: Path) -> None:
    p = snap / "model"
    p.write_bytes(p.read_bytes()[:-1])


def _corrupt_flip(snap: Path) -> None:
    p = snap / "model"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


def _corrupt_flip_manifest(snap: Path) -> None:
    p = snap / MANIFEST_NAME
    b = bytearray(p.read_bytes())
    b[-40] ^= 0x01  # inside the body
    p.write_bytes(bytes(b))


def _corrupt_missing_manifest(snap: Path) -> None:
    (snap / MANIFEST_NAME).unlink()


def _corrupt_garbage_manifest(snap: Path) -> None:
    (snap / MANIFEST_NAME).write_bytes(b"\xc1\xff garbage \x00" * 7)


def _corrupt_empty_manifest(snap: Path) -> None:
    (snap / MANIFEST_NAME).write_bytes(b"")


def _corrupt_wrong_msgpack(snap: Path) -> None:
    (snap / MANIFEST_NAME).write_bytes(msgpack.packb({"format": "other"}))


def _corrupt_missing_part(snap: Path) -> None:
    (snap / "offsets").unlink()


def _corrupt_extra_file(snap: Path) -> None:
    (snap / "stray").write_bytes(b"?")


def _corrupt_symlinked_part(snap: Path) -> None:
    p = snap / "model"
    target = snap.parent / "elsewhere"
    target.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(target)


def _corrupt_renamed_dir(snap: Path) -> None:
    # a manifest whose seq does not match its directory name
    snap.rename(snap.parent / "tmpname")
    prev = snap.parent / f"snap-{snapshot_seq(snap) - 1:012d}"
    (snap.parent / "tmpname" / MANIFEST_NAME).write_bytes((prev / MANIFEST_NAME).read_bytes())
    (snap.parent / "tmpname").rename(snap)


CORRUPTIONS = [
    _corrupt_truncate,
    _corrupt_flip,
    _corrupt_flip_manifest,
    _corrupt_missing_manifest,
    _corrupt_garbage_manifest,
    _corrupt_empty_manifest,
    _corrupt_wrong_msgpack,
    _corrupt_missing_part,
    _corrupt_extra_file,
    _corrupt_symlinked_part,
    _corrupt_renamed_dir,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.removeprefix("_corrupt_"))
def test_corruption_detected_previous_loaded(tmp_path: Path, corrupt, caplog: pytest.LogCaptureFixture) -> None:
    store = SnapshotStore(tmp_path)
    good = store.write({"model": b"good" * 50, "offsets": b"o1"}, {"v": 1})
    bad = store.write({"model": b"newer" * 50, "offsets": b"o2"}, {"v": 2})
    corrupt(bad.path)

    with pytest.raises(SnapshotError):
        store.load(bad.path)
    with caplog.at_level(logging.WARNING, logger="stream_unlearn.snapshot"):
        snap = store.load_latest()
    assert snap is not None
    assert snap.seq == good.seq
    assert snap.meta == {"v": 1}
    assert snap.parts["model"] == b"good" * 50
    assert [s.path for s in store.skipped] == [bad.path]
    assert store.skipped[0].seq == bad.seq and store.skipped[0].reason
    assert any("skipping invalid snapshot" in r.getMessage() for r in caplog.records)

    # the next write still gets a fresh sequence number, above the bad one
    nxt = store.write({"model": b"x"}, {"v": 3})
    assert nxt.seq == bad.seq + 1
    assert store.load_latest().seq == nxt.seq  # type: ignore[union-attr]
    assert store.skipped == []


def test_all_corrupt_returns_none(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    a = store.write({"model": b"a"}, {})
    b = store.write({"model": b"b"}, {})
    _corrupt_garbage_manifest(a.path)
    _corrupt_missing_manifest(b.path)
    assert store.load_latest() is None
    assert len(store.skipped) == 2


def test_load_errors_are_clear(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    info = store.write({"model": b"abc"}, {})
    with pytest.raises(SnapshotError, match="no such snapshot"):
        load_snapshot(tmp_path / "snap-000000000099")
    _corrupt_missing_manifest(info.path)
    with pytest.raises(SnapshotError, match="missing manifest"):
        store.load(info.path)


def test_manifest_with_path_traversal_rejected(tmp_path: Path) -> None:
    """A hand-made manifest naming ../ parts must not read outside the snapshot."""
    import hashlib

    store = SnapshotStore(tmp_path)
    info = store.write({"model": b"abc"}, {})
    secret = tmp_path / "secret"
    secret.write_bytes(b"abc")
    body = msgpack.packb(
        {"seq": 1, "created_at": 1.0, "meta": {},
         "parts": {"../secret": {"size": 3, "sha256": hashlib.sha256(b"abc").digest()}}},
        use_bin_type=True,
    )
    (info.path / MANIFEST_NAME).write_bytes(
        msgpack.packb({"format": "stream-unlearn-snapshot", "version": 1, "body": body,
                       "sha256": hashlib.sha256(body).digest()}, use_bin_type=True)
    )
    with pytest.raises(SnapshotError, match="part name"):
        store.load(info.path)


def test_future_version_rejected(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    info = store.write({"model": b"abc"}, {})
    outer = msgpack.unpackb((info.path / MANIFEST_NAME).read_bytes())
    outer["version"] = 2
    (info.path / MANIFEST_NAME).write_bytes(msgpack.packb(outer, use_bin_type=True))
    with pytest.raises(SnapshotError, match="unsupported format version 2"):
        store.load(info.path)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_single_byte_flip_or_truncation_detected(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = SnapshotStore(d)
        good = store.write({"a": b"first", "b": b"1" * 30}, {"m": 1})
        bad = store.write(
            {"a": data.draw(st.binary(min_size=1, max_size=100)), "b": b"2" * 30},
            {"m": 2, "x": [1.5, "y"]},
        )
        name = data.draw(st.sampled_from(["a", "b", MANIFEST_NAME]))
        p = bad.path / name
        content = bytearray(p.read_bytes())
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(content) - 1))
            content[i] ^= data.draw(st.integers(1, 255))
        else:
            content = content[: data.draw(st.integers(0, len(content) - 1))]
        p.write_bytes(bytes(content))
        snap = store.load_latest()
        assert snap is not None and snap.seq == good.seq and snap.meta == {"m": 1}
        assert [s.seq for s in store.skipped] == [bad.seq]


# ---------------------------------------------------------------- tmp dirs / crash


def test_leftover_tmp_dirs_cleaned_at_open(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.write({"model": b"ok"}, {})
    t1 = tmp_path / ".tmp-deadbeef"
    t1.mkdir()
    (t1 / "model").write_bytes(b"half written personal data")
    (t1 / "sub").mkdir()
    (t1 / "sub" / "x").write_bytes(b"x")
    t2 = tmp_path / ".tmp-empty"
    t2.mkdir()
    store2 = SnapshotStore(tmp_path)
    assert not t1.exists() and not t2.exists()
    assert sorted(store2.removed_tmp) == sorted([t1, t2])
    assert store2.load_latest().parts == {"model": b"ok"}  # type: ignore[union-attr]


def test_tmp_cleanup_skipped_while_another_writer_holds_lock(tmp_path: Path) -> None:
    SnapshotStore(tmp_path)
    tmp = tmp_path / ".tmp-inflight"
    tmp.mkdir()
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        store = SnapshotStore(tmp_path)  # must not block, must not delete
        assert tmp.exists()
        assert store.removed_tmp == []
    finally:
        os.close(fd)
    SnapshotStore(tmp_path)
    assert not tmp.exists()


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    from stream_unlearn.snapshot import SnapshotStore
    store = SnapshotStore({root!r})
    def crash(*a, **k):
        os._exit(137)   # like kill -9: no cleanup, no finally blocks
    os.rename = crash
    store.write({{"model": b"crash-data-never-visible"}}, {{"v": "crashed"}})
    """
)


def test_crash_between_files_and_rename(tmp_path: Path) -> None:
    root = tmp_path / "snaps"
    store = SnapshotStore(root)
    good = store.write({"model": b"before-crash"}, {"v": "good"})

    r = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT.format(repo=str(REPO), root=str(root))],
        capture_output=True,
        check=False,
    )
    assert r.returncode == 137, r.stderr.decode()
    tmps = [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert len(tmps) == 1
    # the crashed write got as far as a complete temp dir
    assert (tmps[0] / MANIFEST_NAME).exists()
    assert (tmps[0] / "model").read_bytes() == b"crash-data-never-visible"

    # the already-open store ignores it
    snap = store.load_latest()
    assert snap is not None and snap.seq == good.seq and snap.meta == {"v": "good"}
    assert [p.name for p in store.list()] == [good.path.name]

    # a restarted worker removes it and continues the sequence
    store2 = SnapshotStore(root)
    assert store2.removed_tmp == tmps
    assert not tmps[0].exists()
    assert store2.load_latest().seq == good.seq  # type: ignore[union-attr]
    assert store2.write({"model": b"after"}, {}).seq == good.seq + 1


def test_failed_write_cleans_its_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(tmp_path)
    store.write({"model": b"ok"}, {})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(OSError):
        store.write({"model": b"fails"}, {})
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert store.write({"model": b"next"}, {}).seq == 2


# ---------------------------------------------------------------- sequence


def test_seq_increases_across_reopen(tmp_path: Path) -> None:
    seqs = []
    for _ in range(3):
        store = SnapshotStore(tmp_path)
        seqs.append(store.write({"m": b"x"}, {}).seq)
        seqs.append(store.write({"m": b"y"}, {}).seq)
        store.prune(seqs[-1])
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert [snapshot_seq(p) for p in SnapshotStore(tmp_path).list()] == [6]


def test_seq_monotonic_within_process_even_if_dir_emptied(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    a = store.write({"m": b"x"}, {})
    import shutil

    shutil.rmtree(a.path)
    assert store.write({"m": b"x"}, {}).seq == 2


def test_list_ignores_non_snapshots(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.write({"m": b"x"}, {})
    (tmp_path / "snap-1").mkdir()  # too few digits
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "snap-000000000009").write_text("a file, not a dir")
    (tmp_path / "snap-000000000010").symlink_to(tmp_path / "snap-000000000001")
    assert [p.name for p in store.list()] == ["snap-000000000001"]


# ---------------------------------------------------------------- prune


def test_prune_removes_older_keeps_newest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    infos = [store.write({"model": f"state-{i}".encode()}, {"i": i}) for i in range(4)]
    _corrupt_flip(infos[1].path)  # invalid old ones go too
    tmp = tmp_path / ".tmp-stale"
    tmp.mkdir()
    removed = store.prune(infos[2].seq)
    assert sorted(removed) == sorted([infos[0].path, infos[1].path, tmp])
    assert [p.name for p in store.list()] == [infos[2].path.name, infos[3].path.name]
    assert not tmp.exists()
    assert store.load_latest().seq == infos[3].seq  # type: ignore[union-attr]

    removed = store.prune(infos[3].seq)
    assert removed == [infos[2].path]
    assert [p.name for p in store.list()] == [infos[3].path.name]
    assert store.prune(infos[3].seq) == []
    assert store.load_latest().parts == {"model": b"state-3"}  # type: ignore[union-attr]


def test_prune_leaves_no_trace_of_removed_data(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    secret = os.urandom(48)  # a deleted person's vector
    old = store.write({"model": b"prefix" + secret + b"suffix", "offsets": b"o"}, {"n": 1})
    (old.path / "stray-copy").write_bytes(secret)  # a stray file goes too
    new = store.write({"model": b"without the deleted point", "offsets": b"o"}, {"n": 0})
    assert any(secret in data for _, data in all_bytes_under(tmp_path))
    store.prune(new.seq)
    assert not old.path.exists()
    for path, data in all_bytes_under(tmp_path):
        assert secret not in data, path
    assert store.load_latest().seq == new.seq  # type: ignore[union-attr]


def test_prune_refuses_without_valid_keep(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    a = store.write({"model": b"a"}, {})
    b = store.write({"model": b"b"}, {})
    with pytest.raises(SnapshotError):
        store.prune(99)
    _corrupt_flip(b.path)
    with pytest.raises(SnapshotError):
        store.prune(b.seq)
    assert a.path.exists()  # nothing removed
    assert store.prune(b.seq, verify=False) == [a.path]


def test_relabel_hard_links_the_parts_and_survives_pruning(tmp_path):
    store = SnapshotStore(tmp_path / "snaps")
    first = store.write({"model": b"m" * 1000, "state": b"s1"}, {"pending": ["alice"]})
    second = store.relabel(first.path, {"pending": []})
    assert second.seq == first.seq + 1 and second.size_bytes > 1002
    for name in ("model", "state"):
        assert (second.path / name).stat().st_ino == (first.path / name).stat().st_ino
    store.prune(second.seq)
    assert not first.path.exists()
    loaded = store.load_latest()
    assert loaded.seq == second.seq and loaded.parts == {"model": b"m" * 1000, "state": b"s1"}
    assert loaded.meta == {"pending": []}
    assert ((second.path / "model").stat().st_mode & 0o777) == 0o600
    assert b"alice" not in b"".join(p.read_bytes() for p in (tmp_path / "snaps").rglob("*") if p.is_file())


def test_relabel_of_a_damaged_snapshot_fails_and_adds_nothing(tmp_path):
    store = SnapshotStore(tmp_path / "snaps")
    first = store.write({"model": b"x"}, {"n": 1})
    _corrupt_flip_manifest(first.path)
    with pytest.raises(SnapshotError):
        store.relabel(first.path, {"n": 2})
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir() if not p.name.startswith(".lock")) == [
        first.path.name]


def test_relabel_refuses_a_foreign_snapshot(tmp_path):
    store = SnapshotStore(tmp_path / "a")
    other = SnapshotStore(tmp_path / "b").write({"model": b"x"}, {})
    with pytest.raises(ValueError, match="this store"):
        store.relabel(other.path, {})
