"""Per-id event-time semantics: order-independent, replay-safe, erasure-safe."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_unlearn import pieces
from stream_unlearn.pieces import joined
from stream_unlearn.semantics import EventTimeState, SemanticsError, vector_digest
from stream_unlearn.wire import DeleteEvent, InsertEvent

IDS = ["a", "b", "c", "d"]
VECTORS = [np.array([float(i), -float(i)]) for i in range(4)]


def ins(pid: str, ts: float, v: int = 0) -> InsertEvent:
    return InsertEvent(pid, VECTORS[v], ts)


def dele(pid: str, ts: float) -> DeleteEvent:
    return DeleteEvent(pid, ts)


def run(events, state: EventTimeState | None = None, cuts=(), model=None):
    """Feed events in batches split at ``cuts``; return (state, model dict, outcomes)."""
    state = state or EventTimeState()
    model = {} if model is None else model
    outcomes: list[str] = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(events)), len(events)]
    for lo, hi in itertools.pairwise(bounds):
        plan = state.apply(events[lo:hi], partitions=[0] * (hi - lo))
        outcomes += plan.outcomes
        assert len(set(plan.delete_ids)) == len(plan.delete_ids)
        assert len(set(plan.insert_ids)) == len(plan.insert_ids)
        for pid in plan.delete_ids:
            del model[pid]  # must have been held
        for i, pid in enumerate(plan.insert_ids):
            model[pid] = tuple(plan.insert_vectors[i])
    return state, model, outcomes


def expected(events) -> dict:
    """The closed form: the newest insert newer than every delete, ties by digest."""
    out = {}
    for pid in {e.id for e in events}:
        dead = max((e.ts for e in events if e.id == pid and isinstance(e, DeleteEvent)), default=-math.inf)
        alive = [e for e in events if e.id == pid and isinstance(e, InsertEvent) and e.ts > dead]
        if alive:
            best = max(alive, key=lambda e: (e.ts, vector_digest(e.vec)))
            out[pid] = tuple(best.vec)
    return out


event_st = st.one_of(
    st.builds(ins, st.sampled_from(IDS), st.integers(0, 5).map(float), st.integers(0, 3)),
    st.builds(dele, st.sampled_from(IDS), st.integers(0, 5).map(float)),
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(event_st, max_size=25), data=st.data())
def test_any_order_and_batching_gives_the_same_set(events, data):
    order = data.draw(st.permutations(range(len(events))))
    shuffled = [events[i] for i in order]
    cuts = data.draw(st.lists(st.integers(0, max(len(events), 1)), max_size=4))
    _, model_a, _ = run(events)
    _, model_b, _ = run(shuffled, cuts=cuts)
    assert model_a == model_b == expected(events)


@settings(max_examples=150, deadline=None)
@given(events=st.lists(event_st, max_size=25), data=st.data())
def test_redelivery_and_restore_change_nothing(events, data):
    """At-least-once delivery replays a suffix; a snapshot restore sits anywhere."""
    cut = data.draw(st.integers(0, len(events)))
    replay_from = data.draw(st.integers(0, cut))
    state, model, _ = run(events[:cut])
    restored = EventTimeState.from_bytes(state.to_bytes())
    _, model, _ = run(events[replay_from:], state=restored, model=model)
    assert model == expected(events)


def test_outcomes_of_the_documented_cases():
    state = EventTimeState()
    plan = state.apply([ins("a", 1.0, 0), ins("a", 1.0, 0)])
    assert plan.outcomes == ["applied", "duplicate"] and plan.insert_ids == ["a"]
    plan = state.apply([ins("a", 0.5, 1), ins("a", 2.0, 1)])
    assert plan.outcomes == ["stale", "replaced"] and plan.insert_ids == ["a"]
    plan = state.apply([dele("a", 1.5), dele("a", 3.0)])
    assert plan.outcomes == ["stale", "applied"] and plan.delete_ids == ["a"]
    plan = state.apply([ins("a", 2.5, 2), dele("a", 3.0), dele("a", 2.0)])
    assert plan.outcomes == ["stale", "duplicate", "duplicate"] and not plan.changes_model
    plan = state.apply([ins("a", 4.0, 3)])  # newer than the tombstone: a re-insert
    assert plan.outcomes == ["applied"] and state.tombstone_ts("a") is None
    plan = state.apply([dele("z", 9.0), ins("z", 8.0, 0), ins("z", 9.0, 0)])
    assert plan.outcomes == ["tombstoned", "stale", "stale"] and not plan.changes_model


def test_same_ts_tie_is_broken_by_vector_digest_not_arrival():
    x, y = ins("a", 1.0, 1), ins("a", 1.0, 2)
    winner = max((x, y), key=lambda e: vector_digest(e.vec))
    for order in ([x, y], [y, x]):
        _, model, _ = run(order, cuts=[1])
        assert model == {"a": tuple(winner.vec)}


def test_insert_and_delete_in_one_batch_never_reach_the_model():
    plan = EventTimeState().apply([ins("a", 1.0), dele("a", 2.0)])
    assert plan.outcomes == ["applied", "applied"] and not plan.changes_model


def test_partition_of_the_winning_insert_is_reported():
    plan = EventTimeState().apply([ins("a", 1.0, 0), ins("a", 2.0, 1)], partitions=[2, 1])
    assert plan.insert_ids == ["a"] and plan.insert_partitions == [1]


def test_tombstones_expire_in_event_time_and_late_inserts_stay_dropped():
    state = EventTimeState(horizon=10.0)
    state.apply([dele("a", 100.0)])
    assert state.n_tombstones == 1
    state.apply([ins("b", 105.0)])  # watermark 105: tombstone at 100 is within the horizon
    assert state.n_tombstones == 1
    state.apply([ins("c", 111.0)])  # watermark 111: floor 101 passes the tombstone
    assert state.n_tombstones == 0
    plan = state.apply([ins("a", 99.0), ins("d", 100.5), dele("zz", 50.0)])
    # Too late to be checked against an expired tombstone: never resurrected.
    assert plan.outcomes == ["stale", "stale", "ignored"] and not plan.changes_model
    plan = state.apply([ins("a", 102.0)])
    assert plan.outcomes == ["applied"]


def test_a_renewed_tombstone_outlives_its_first_expiry_also_after_a_restore():
    state = EventTimeState(horizon=15.0)
    state.apply([dele("a", 10.0), dele("b", 12.0)])
    state.apply([dele("a", 20.0), ins("b", 13.0), dele("b", 14.0)])  # a renewed; b re-inserted, deleted again
    state = EventTimeState.from_bytes(state.to_bytes())
    state.apply([ins("c", 26.0)])  # floor 11: a's first delete (10) expires, but a now has 20
    assert state.tombstone_ts("a") == 20.0 and state.tombstone_ts("b") == 14.0
    state.apply([ins("c", 30.0)])  # floor 15: b (14) goes
    assert state.tombstone_ts("a") == 20.0 and state.tombstone_ts("b") is None
    state.apply([ins("c", 36.0)])  # floor 21: a (20) goes
    assert state.n_tombstones == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(IDS), st.integers(0, 60)), max_size=40),
       st.integers(1, 8))
def test_tombstones_kept_are_exactly_those_newer_than_the_floor(events, batch):
    """Expiry is lazy (a heap): after every batch the tombstones must equal a full sweep's."""
    state = EventTimeState(horizon=12.0)
    newest: dict[str, float] = {}
    for lo in range(0, len(events), batch):
        chunk = [ins(pid, float(ts)) if is_insert else dele(pid, float(ts)) for is_insert, pid, ts in events[lo:lo + batch]]
        state.apply(chunk)
        for pid in IDS:
            got = state.tombstone_ts(pid)
            assert got is None or got > state.floor
        for e in chunk:
            if isinstance(e, DeleteEvent) and state.held_version(e.id) is None and e.ts > state.floor:
                newest[e.id] = max(newest.get(e.id, -math.inf), e.ts)
        for pid, ts in newest.items():
            if ts > state.floor and state.held_version(pid) is None and state.tombstone_ts(pid) is not None:
                assert state.tombstone_ts(pid) >= ts


def test_state_roundtrip_and_no_plain_ids_for_tombstones():
    state = EventTimeState(horizon=1e6)
    state.apply([ins("keep-me", 1.0), ins("erase-me", 1.0), dele("erase-me", 2.0), dele("never-held", 3.0)])
    blob = state.to_bytes()
    assert b"keep-me" in blob
    assert b"erase-me" not in blob and b"never-held" not in blob
    back = EventTimeState.from_bytes(blob)
    assert back.n_held == 1 and back.n_tombstones == 2 and back.watermark == 3.0
    assert back.tombstone_ts("erase-me") == 2.0 and back.held_version("keep-me") == state.held_version("keep-me")
    assert back.to_bytes() == blob


def test_a_state_encoded_in_steps_is_the_same_bytes(monkeypatch):
    """The writer thread encodes held versions and tombstones a few thousand at a time (short GIL
    holds); the bytes are those of one pass, and they load back."""
    state = EventTimeState(horizon=1e6, key=b"k" * 32)
    state.apply([ins(f"held-{i}", float(i)) for i in range(50)]
                + [dele(f"gone-{i}", 100.0 + i) for i in range(30)])
    whole = state.to_bytes()
    pauses = []
    monkeypatch.setattr(pieces, "STEP_ITEMS", 7)
    stepped = joined(state.capture_bytes()(lambda: pauses.append(1)))
    assert stepped == whole
    assert len(pauses) >= 50 // 7 + 30 // 7
    back = EventTimeState.from_bytes(stepped)
    assert back.n_held == 50 and back.n_tombstones == 30 and back.tombstone_ts("gone-29") == 129.0


@pytest.mark.parametrize("blob", [b"", b"\x81\xa1x\x01", b"garbage\xff"])
def test_corrupt_state_is_refused(blob):
    with pytest.raises(SemanticsError):
        EventTimeState.from_bytes(blob)


def test_tombstone_key_differs_per_state():
    a, b = EventTimeState(), EventTimeState()
    a.apply([dele("x", 1.0)])
    b.apply([dele("x", 1.0)])
    assert a.to_bytes() != b.to_bytes()
