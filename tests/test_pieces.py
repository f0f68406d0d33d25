"""msgpack as pieces: the same bytes as ``packb``, in small steps, big binaries by reference."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn import DCKMeans, pieces
from stream_unlearn.pieces import joined, n_bytes, pack_pieces
from stream_unlearn.snapshot import SnapshotStore, load_snapshot


@contextlib.contextmanager
def tiny_thresholds() -> Iterator[None]:
    """Every branch (references, slices, gathering) on small values."""
    saved = pieces._BIG, pieces._SLICE, pieces._SHORT, pieces._GATHER
    pieces._BIG, pieces._SLICE, pieces._SHORT, pieces._GATHER = 4, 3, 2, 16
    try:
        yield
    finally:
        pieces._BIG, pieces._SLICE, pieces._SHORT, pieces._GATHER = saved


scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
           | st.text(max_size=12) | st.binary(max_size=40))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=6) | st.integers(0, 9), inner,
                                                                  max_size=6),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_pieces_join_to_the_bytes_of_packb(value):
    with tiny_thresholds():
        got = pack_pieces(value)
    assert joined(got) == msgpack.packb(value, use_bin_type=True)
    assert n_bytes(got) == len(joined(got))


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70000])
def test_every_bin_header_width_is_the_one_packb_picks(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    with tiny_thresholds():
        assert joined(pack_pieces({"a": data, "b": memoryview(data)})) == msgpack.packb(
            {"a": data, "b": data}, use_bin_type=True)


def test_an_object_array_packs_as_its_list_a_slice_at_a_time():
    ids = np.array([f"id-{i}" for i in range(10_000)], dtype=object)
    got = pack_pieces({"ids": ids})
    assert joined(got) == msgpack.packb({"ids": ids.tolist()}, use_bin_type=True)


def test_big_binaries_are_referenced_and_small_values_gathered():
    """No copy of a big array (so no long GIL-holding memcpy), and no huge packed piece either."""
    vectors = np.arange(200_000, dtype=np.float64)
    ids = [f"point-{i}" for i in range(300_000)]
    got = pack_pieces({"ids": ids, "vectors": memoryview(vectors).cast("B"), "n": 3})
    referenced = [p for p in got if isinstance(p, memoryview)]
    assert len(referenced) == 1 and np.shares_memory(np.frombuffer(referenced[0], dtype=np.uint8), vectors)
    assert max(len(p) for p in got if not isinstance(p, memoryview)) <= 2 * pieces._GATHER
    assert joined(got) == msgpack.packb({"ids": ids, "vectors": vectors.tobytes(), "n": 3}, use_bin_type=True)


def test_a_model_state_is_the_same_whole_or_in_pieces(tmp_path: Path):
    rng = np.random.default_rng(3)
    model = DCKMeans(k=3, n_leaves=8, fanout=4)
    model.insert([f"p{i}" for i in range(5000)], rng.normal(size=(5000, 4)))
    encoded = model.capture_state()()
    assert len(encoded) > 2 and any(isinstance(p, memoryview) for p in encoded)
    store = SnapshotStore(tmp_path)
    info = store.write({"model": encoded, "small": b"abc"}, {"m": 1})
    snap = load_snapshot(info.path)
    assert snap.parts["model"] == model.to_state() and snap.parts["small"] == b"abc"
    assert info.size_bytes == snap.size_bytes
    manifest = msgpack.unpackb(msgpack.unpackb((info.path / "manifest.msgpack").read_bytes())["body"])
    assert manifest["parts"]["model"]["sha256"] == hashlib.sha256(model.to_state()).digest()
    assert DCKMeans.from_state(snap.parts["model"]).verify()


def test_a_part_of_anything_but_pieces_is_refused_and_nothing_written(tmp_path: Path):
    store = SnapshotStore(tmp_path)
    for bad in (["text, not bytes"], [b"ok", 3], ("a", b"b"), {"x": b"y"}):
        with pytest.raises(TypeError, match="part 'a'"):
            store.write({"a": bad}, {})  # type: ignore[dict-item]
    assert store.list() == []
