"""Wire format: round trips, every bad-record reason, ids, vectors, limits."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn.wire import (
    BAD_RECORD_REASONS,
    BadRecord,
    DeleteEvent,
    InsertEvent,
    decode_delete,
    decode_insert,
    decode_inserts,
    encode_delete,
    encode_insert,
    key_bytes,
)

RECORD_TS = 1_700_000_000.5


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def f32(values: list[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


# -- round trips ---------------------------------------------------------------

ids = st.one_of(
    st.text(min_size=1, max_size=40),  # at most 160 UTF-8 bytes: under the limit
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # msgpack's int range
)
finite64 = st.floats(min_value=-1e100, max_value=1e100)  # MAX_ABS_VALUE: beyond, squares overflow
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
tss = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=200)
@given(pid=ids, vec=st.lists(finite64, min_size=1, max_size=50), ts=tss)
def test_insert_round_trip_list_is_exact(pid: str | int, vec: list[float], ts: float | None) -> None:
    value = encode_insert(pid, vec, ts, binary=False)
    ev = decode_insert(value, dim=len(vec), record_ts=RECORD_TS, key=key_bytes(pid))
    assert ev.id == str(pid)
    assert ev.vec.dtype == np.float64 and ev.vec.shape == (len(vec),)
    assert np.array_equal(ev.vec, np.asarray(vec))
    assert ev.ts == (RECORD_TS if ts is None else ts)


@settings(max_examples=200)
@given(pid=ids, vec=st.lists(finite32, min_size=1, max_size=50), ts=tss)
def test_insert_round_trip_bin_equals_list(pid: str | int, vec: list[float], ts: float | None) -> None:
    as_bin = decode_insert(encode_insert(pid, vec, ts, binary=True), dim=None, record_ts=RECORD_TS)
    as_list = decode_insert(encode_insert(pid, vec, ts, binary=False), dim=None, record_ts=RECORD_TS)
    assert as_bin == as_list
    assert as_bin.vec.dtype == np.float64
    assert np.array_equal(as_bin.vec, np.asarray(vec))


@settings(max_examples=200)
@given(pid=ids, ts=tss)
def test_delete_round_trip(pid: str | int, ts: float | None) -> None:
    ev = decode_delete(encode_delete(pid, ts), record_ts=RECORD_TS, key=key_bytes(pid))
    assert ev == DeleteEvent(str(pid), RECORD_TS if ts is None else ts)


def test_binary_rounds_to_float32() -> None:
    x = np.array([0.1, 1 / 3, 1e-3])
    ev = decode_insert(encode_insert("a", x), dim=3, record_ts=0.0)
    assert np.array_equal(ev.vec, x.astype(np.float32).astype(np.float64))
    assert not np.array_equal(ev.vec, x)


def test_decoded_vector_is_owned_and_writable() -> None:
    ev = decode_insert(encode_insert("a", [1.0, 2.0]), dim=2, record_ts=0.0)
    assert ev.vec.flags.writeable and ev.vec.flags.owndata


# -- ids, ts and extra fields -----------------------------------------------------


@pytest.mark.parametrize("raw_id, expected", [(42, "42"), (-7, "-7"), (0, "0"), (2**64 - 1, str(2**64 - 1))])
def test_int_ids_mean_their_decimal_string(raw_id: int, expected: str) -> None:
    ev = decode_insert(pack({"id": raw_id, "vec": [1.0]}), dim=1, record_ts=0.0, key=expected.encode())
    assert ev.id == expected
    assert decode_delete(pack({"id": raw_id}), record_ts=0.0).id == expected
    assert key_bytes(raw_id) == expected.encode()


def test_int_id_and_string_id_encode_identically() -> None:
    assert encode_insert(5, [1.0], 1.0) == encode_insert("5", [1.0], 1.0)
    assert encode_delete(np.int64(5)) == encode_delete("5")


def test_ts_missing_or_nil_uses_record_ts_and_int_ts_is_accepted() -> None:
    assert decode_delete(pack({"id": "a"}), record_ts=12.5).ts == 12.5
    assert decode_delete(pack({"id": "a", "ts": None}), record_ts=12.5).ts == 12.5
    ev = decode_delete(pack({"id": "a", "ts": 1_700_000_000}), record_ts=12.5)
    assert ev.ts == 1_700_000_000.0 and isinstance(ev.ts, float)


def test_unknown_fields_are_ignored() -> None:
    value = pack({"id": "a", "vec": [1, 2.5], "ts": 3.0, "source": "crm", "v": 2, "extra": {"x": [1]}})
    assert decode_insert(value, dim=2, record_ts=0.0) == InsertEvent("a", np.array([1.0, 2.5]), 3.0)
    # a delete ignores a vector, even a malformed one
    assert decode_delete(pack({"id": "a", "vec": "junk"}), record_ts=1.0) == DeleteEvent("a", 1.0)


def test_int_elements_in_list_vector() -> None:
    ev = decode_insert(pack({"id": "a", "vec": [1, -2, 3.5]}), dim=3, record_ts=0.0)
    assert ev.vec.dtype == np.float64 and ev.vec.tolist() == [1.0, -2.0, 3.5]


def test_no_key_is_fine_and_utf8_key_matches() -> None:
    value = encode_delete("ünïcødé")
    assert decode_delete(value, record_ts=0.0).id == "ünïcødé"
    assert decode_delete(value, record_ts=0.0, key="ünïcødé".encode()).id == "ünïcødé"


def test_values_up_to_the_limit_pass_and_beyond_it_are_refused() -> None:
    x = [1e100, -1e100, 5e99]  # x.x is 2.25e200: finite
    ev = decode_insert(encode_insert("a", x, binary=False), dim=3, record_ts=0.0)
    assert ev.vec.tolist() == x
    with pytest.raises(BadRecord) as info:  # finite, but its square (and any distance to it) overflows
        decode_insert(pack({"id": "a", "vec": [1e300, 0.0, 0.0]}), dim=3, record_ts=0.0)
    assert info.value.reason == "non_finite"
    with pytest.raises(ValueError, match="beyond"):  # the producer library refuses it before sending
        encode_insert("a", [1e300, 0.0, 0.0], binary=False)


# -- every bad-record reason, each from a real malformed value ------------------

NESTED = b"\x91" * 5000 + b"\x01"  # 5000 nested arrays: past msgpack's depth limit
BAD = [
    # (reason, value, kind, extra kwargs)
    ("empty_value", b"", "insert", {}),
    ("empty_value", None, "delete", {}),
    ("oversized", pack({"id": "a", "vec": [1.0] * 100}), "insert", {"max_value_bytes": 100}),
    ("oversized", pack({"id": "a" * 5000}), "delete", {}),  # string over the parse limit
    ("oversized", pack({f"k{i}": i for i in range(100)} | {"id": "a"}), "delete", {}),  # map
    ("not_msgpack", b"\xc1", "insert", {}),  # the one never-used msgpack byte
    ("not_msgpack", pack({"id": "a", "vec": [1.0]})[:-3], "insert", {}),  # truncated
    ("not_msgpack", pack({"id": "a"}) + b"\x00", "delete", {}),  # trailing bytes
    ("not_msgpack", b"\x81\xa2id\xa2\xff\xfe", "delete", {}),  # invalid UTF-8 string
    ("not_msgpack", pack({1: "a"}), "delete", {}),  # non-string map key
    ("not_msgpack", b"\x81\xa2id\xd4\x01\x00", "delete", {}),  # ext type
    ("not_msgpack", NESTED, "delete", {}),
    ("not_msgpack", b'{"id": "a", "vec": [1.0]}', "insert", {}),  # JSON is not msgpack
    ("not_a_map", pack(["a", [1.0]]), "insert", {}),
    ("not_a_map", pack("a"), "delete", {}),
    ("not_a_map", pack(17), "delete", {}),
    ("missing_field", pack({"vec": [1.0]}), "insert", {}),
    ("missing_field", pack({"id": "a"}), "insert", {}),
    ("missing_field", pack({"ts": 1.0}), "delete", {}),
    ("wrong_type", pack({"id": 1.5, "vec": [1.0]}), "insert", {}),
    ("wrong_type", pack({"id": True}), "delete", {}),  # bool is not an int id
    ("wrong_type", pack({"id": None}), "delete", {}),
    ("wrong_type", pack({"id": b"a"}), "delete", {}),  # bin is not a str
    ("wrong_type", pack({"id": "a", "vec": "1.0,2.0"}), "insert", {}),
    ("wrong_type", pack({"id": "a", "vec": {"0": 1.0}}), "insert", {}),
    ("wrong_type", pack({"id": "a", "vec": 1.0}), "insert", {}),
    ("wrong_type", pack({"id": "a", "ts": "2024-01-01"}), "delete", {}),
    ("wrong_type", pack({"id": "a", "ts": False}), "delete", {}),
    ("bad_id", pack({"id": "", "vec": [1.0]}), "insert", {}),
    ("bad_id", pack({"id": ""}), "delete", {}),
    ("id_too_long", pack({"id": "x" * 257}), "delete", {}),
    ("id_too_long", pack({"id": "é" * 129}), "delete", {}),  # 129 chars, 258 bytes
    ("id_too_long", pack({"id": 123456}), "delete", {"max_id_bytes": 5}),
    ("key_mismatch", pack({"id": "a", "vec": [1.0]}), "insert", {"key": b"b"}),
    ("key_mismatch", pack({"id": 7}), "delete", {"key": b"07"}),
    ("key_mismatch", pack({"id": "a"}), "delete", {"key": b""}),
    ("bad_vector", pack({"id": "a", "vec": []}), "insert", {}),
    ("bad_vector", pack({"id": "a", "vec": b""}), "insert", {}),
    ("bad_vector", pack({"id": "a", "vec": b"\x00\x00\x80"}), "insert", {}),  # 3 bytes
    ("bad_vector", pack({"id": "a", "vec": [1.0, "2.0"]}), "insert", {}),  # numpy would parse it
    ("bad_vector", pack({"id": "a", "vec": [1.0, True]}), "insert", {}),  # numpy would make it 1.0
    ("bad_vector", pack({"id": "a", "vec": [1.0, None]}), "insert", {}),
    ("bad_vector", pack({"id": "a", "vec": [[1.0, 2.0]]}), "insert", {}),
    ("wrong_dimension", pack({"id": "a", "vec": [1.0, 2.0]}), "insert", {"dim": 3}),
    ("wrong_dimension", pack({"id": "a", "vec": f32([1.0, 2.0, 3.0, 4.0])}), "insert", {"dim": 3}),
    ("non_finite", pack({"id": "a", "vec": [1.0, math.nan]}), "insert", {}),
    ("non_finite", pack({"id": "a", "vec": [-math.inf, 1.0]}), "insert", {}),
    ("non_finite", pack({"id": "a", "vec": f32([1.0, math.inf])}), "insert", {}),
    ("non_finite", pack({"id": "a", "vec": f32([math.nan])}), "insert", {}),
    ("non_finite", pack({"id": "a", "vec": [1.0, -1.7e308]}), "insert", {}),  # finite, but its square is not
    ("bad_ts", pack({"id": "a", "ts": math.nan}), "delete", {}),
    ("bad_ts", pack({"id": "a", "vec": [1.0], "ts": math.inf}), "insert", {}),
    # No stand-in event time: the clock at decode would differ at every replay.
    ("no_timestamp", pack({"id": "a", "vec": [1.0]}), "insert", {"record_ts": None}),
    ("no_timestamp", pack({"id": "a", "ts": 5.0}), "delete", {"record_ts": None}),
]


def _decode(value: bytes | None, kind: str, kwargs: dict) -> object:
    kwargs = dict(kwargs)
    record_ts = kwargs.pop("record_ts", 0.0)
    if kind == "insert":
        return decode_insert(value, dim=kwargs.pop("dim", None), record_ts=record_ts, **kwargs)
    kwargs.pop("dim", None)
    return decode_delete(value, record_ts=record_ts, **kwargs)


@pytest.mark.parametrize("reason, value, kind, kwargs", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_records_raise_with_their_reason(reason: str, value: bytes | None, kind: str, kwargs: dict) -> None:
    with pytest.raises(BadRecord) as info:
        _decode(value, kind, kwargs)
    assert info.value.reason == reason, info.value.detail
    assert info.value.detail
    assert isinstance(info.value, ValueError)


def test_every_reason_is_exercised() -> None:
    # wrong_partition is the worker's check (tests/test_worker.py), not the decoder's.
    assert {b[0] for b in BAD} | {"wrong_partition"} == set(BAD_RECORD_REASONS)
    assert len(BAD_RECORD_REASONS) == len(set(BAD_RECORD_REASONS))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_bad_record(value: bytes) -> None:
    for kind in ("insert", "delete"):
        try:
            _decode(value, kind, {"dim": 3})
        except BadRecord as exc:
            assert exc.reason in BAD_RECORD_REASONS


def test_bad_record_pickles() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(BadRecord("bad_id", "id is empty")))
    assert (exc.reason, exc.detail) == ("bad_id", "id is empty")


# -- limits ------------------------------------------------------------------------


def test_limits_are_inclusive() -> None:
    assert decode_delete(pack({"id": "x" * 256}), record_ts=0.0).id == "x" * 256
    value = pack({"id": "a", "vec": [1.0] * 100})
    assert decode_insert(value, dim=100, record_ts=0.0, max_value_bytes=len(value)).vec.size == 100
    with pytest.raises(BadRecord, match="oversized"):
        decode_insert(value, dim=100, record_ts=0.0, max_value_bytes=len(value) - 1)


def test_large_ids_allowed_by_a_raised_limit() -> None:
    pid = "x" * 10_000
    assert decode_delete(pack({"id": pid}), record_ts=0.0, max_id_bytes=10_000).id == pid


def test_a_lying_length_header_does_not_allocate() -> None:
    # array32 / bin32 / str32 headers claiming 4 GiB, with no payload behind them
    for header in (b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"):
        with pytest.raises(BadRecord) as info:
            decode_insert(b"\x82\xa2id\xa1a\xa3vec" + header, dim=None, record_ts=0.0)
        assert info.value.reason in ("oversized", "not_msgpack")


def test_wide_vectors_within_the_default_value_limit() -> None:
    x = np.random.default_rng(0).standard_normal(784)
    for binary in (True, False):
        ev = decode_insert(encode_insert("img-1", x, 1.0, binary=binary), dim=784, record_ts=0.0)
        assert ev.vec.shape == (784,)


# -- encoders refuse what decoders would reject ----------------------------------


@pytest.mark.parametrize(
    "args, exc",
    [
        (("", [1.0]), ValueError),
        ((True, [1.0]), TypeError),
        ((1.5, [1.0]), TypeError),
        (("a", []), ValueError),
        (("a", [[1.0], [2.0]]), ValueError),
        (("a", [math.nan]), ValueError),
        (("a", [1e300]), ValueError),  # overflows float32 in binary mode
        (("a", [1.0], math.inf), ValueError),
        (("a", [1.0], "now"), TypeError),
    ],
)
def test_encode_insert_rejects(args: tuple, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        encode_insert(*args)


def test_encode_list_keeps_float64_range() -> None:
    ev = decode_insert(encode_insert("a", [1e99], binary=False), dim=1, record_ts=0.0)
    assert ev.vec[0] == 1e99  # far beyond float32


def test_encode_delete_rejects() -> None:
    with pytest.raises(ValueError):
        encode_delete("")
    with pytest.raises(TypeError):
        encode_delete(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_delete("a", math.nan)


def test_ts_too_far_after_the_record_timestamp_is_a_bad_record() -> None:
    """A far-future ts would drag the watermark (and the tombstone horizon) past honest events."""
    for value in (pack({"id": "a", "vec": [1.0], "ts": 1000.0 + 86401}), pack({"id": "a", "ts": 1e12})):
        with pytest.raises(BadRecord) as err:
            if b"vec" in value:
                decode_insert(value, dim=1, record_ts=1000.0, max_ts_ahead=86400.0)
            else:
                decode_delete(value, record_ts=1000.0, max_ts_ahead=86400.0)
        assert err.value.reason == "bad_ts" and "after the record's Kafka timestamp" in err.value.detail
    # At the limit, in the past, or absent (the record time itself): accepted.
    assert decode_insert(pack({"id": "a", "vec": [1.0], "ts": 1000.0 + 86400}), dim=1, record_ts=1000.0,
                         max_ts_ahead=86400.0).ts == 87400.0
    assert decode_delete(pack({"id": "a", "ts": 5.0}), record_ts=1000.0, max_ts_ahead=0.0).ts == 5.0
    assert decode_delete(pack({"id": "a"}), record_ts=1000.0, max_ts_ahead=0.0).ts == 1000.0


# -- batch decoding: the same outcome as record by record ----------------------------------

_BATCH_POOL = [
    pack({"id": "a", "vec": f32([1.0, 2.0, 3.0])}),
    pack({"id": "b", "vec": f32([-0.5, 0.0, 1e30]), "ts": 5.0}),
    pack({"id": 7, "vec": [1.0, 2.0, 3.0]}),  # a list vector
    pack({"id": "c", "vec": f32([1.0, math.nan, 3.0])}),  # non_finite
    pack({"id": "d", "vec": f32([math.inf, 0.0, 0.0]), "ts": math.nan}),  # non_finite comes before bad_ts
    pack({"id": "e", "vec": f32([1.0, 2.0, 3.0]), "ts": math.inf}),  # bad_ts
    pack({"id": "f", "vec": f32([1.0, 2.0, 3.0]), "ts": "now"}),  # wrong_type ts
    pack({"id": "g", "vec": f32([1.0, 2.0])}),  # wrong_dimension once 3 is fixed, else fixes 2
    pack({"id": "h", "vec": f32([math.nan, 1.0])}),  # non_finite, never fixes the dimension
    pack({"id": "i", "vec": b"\x00\x00\x80"}),  # bad_vector
    pack({"id": "j", "vec": [1.0, 2.0, 3.0, 4.0]}),
    pack({"id": "k", "vec": f32([1.0, 2.0, 3.0]), "ts": RECORD_TS + 1e6}),  # too far ahead
    pack({"id": "", "vec": f32([1.0, 2.0, 3.0])}),  # bad_id
    pack({"id": "l"}),  # missing_field
    b"\xc1",  # not_msgpack
    b"",  # empty_value
] + [value for reason, value, kind, kwargs in BAD if kind == "insert" and not kwargs]


def _id_in(value: bytes) -> object:
    try:
        obj = msgpack.unpackb(value, raw=False)
    except Exception:  # noqa: BLE001 - any undecodable value
        return "x"
    return obj.get("id", "x") if isinstance(obj, dict) else "x"


def _outcome(result: object) -> tuple:
    if isinstance(result, BadRecord):
        return ("bad", result.reason, result.detail)
    assert isinstance(result, InsertEvent)
    return ("event", result.id, result.ts, result.vec.dtype.str, result.vec.tolist())


@settings(max_examples=300)
@given(picks=st.lists(st.integers(0, len(_BATCH_POOL) - 1), max_size=30),
       dim=st.sampled_from([None, 2, 3]), keyed=st.booleans(), no_ts=st.booleans())
def test_batch_decoding_equals_decoding_record_by_record(picks: list[int], dim: int | None, keyed: bool,
                                                         no_ts: bool) -> None:
    """Outcomes, vectors' bits and the dimension learnt: as if each record were decoded alone, in order."""
    records = []
    for n, i in enumerate(picks):
        value = _BATCH_POOL[i]
        key = None
        if keyed:  # the id's bytes, or (every third record) someone else's: key_mismatch
            key = b"other" if n % 3 == 0 else str(_id_in(value)).encode()
        records.append((value, key, None if no_ts and n % 4 == 0 else RECORD_TS))
    expected, learnt = [], dim
    for value, key, record_ts in records:
        try:
            event = decode_insert(value, dim=learnt, record_ts=record_ts, key=key, max_ts_ahead=3600.0)
        except BadRecord as bad:
            expected.append(_outcome(bad))
            continue
        learnt = learnt or len(event.vec)
        expected.append(_outcome(event))
    results, batch_dim = decode_inserts(records, dim=dim, max_ts_ahead=3600.0)
    assert [_outcome(r) for r in results] == expected
    assert batch_dim == learnt


def test_batch_decoded_vectors_are_rows_of_one_float64_array() -> None:
    records = [(pack({"id": str(i), "vec": f32([i, i + 0.5])}), None, RECORD_TS) for i in range(3)]
    events, dim = decode_inserts(records, dim=2)
    assert dim == 2
    assert all(isinstance(e, InsertEvent) and e.vec.dtype == np.float64 and e.vec.flags.c_contiguous for e in events)
    assert [e.vec.tolist() for e in events] == [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]
