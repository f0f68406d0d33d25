"""A snapshot's cut is captured on the loop and encoded later, on the writer thread.

Whatever happens to the model or the semantics between the capture and the
encoding, the bytes must be those of the moment of capture: the snapshot's
offsets say which events it reflects.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import CONFIGS

from stream_unlearn import QKMeans
from stream_unlearn.pieces import joined
from stream_unlearn.semantics import EventTimeState
from stream_unlearn.wire import DeleteEvent, InsertEvent

# One step: insert a batch of ids (True) or delete some (False), then maybe read the model.
STEPS = st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 40), min_size=1, max_size=8, unique=True),
                           st.booleans()), min_size=2, max_size=12)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=25, deadline=None)
@given(steps=STEPS, capture_at=st.integers(0, 11), data_seed=st.integers(0, 2**16))
def test_a_captured_model_state_encodes_the_moment_of_capture(name, steps, capture_at, data_seed):
    rng = np.random.default_rng(data_seed)
    model = CONFIGS[name](3, data_seed % 7)
    pending = None
    for i, (adding, members, read) in enumerate(steps):
        if i == min(capture_at, len(steps) - 1):
            pending = (model.to_state(), model.capture_state())
        ids = [f"p{m}" for m in members]
        if adding:
            model.insert(ids, rng.normal(size=(len(ids), 2)) + rng.integers(0, 3, size=(len(ids), 1)) * 4)
        else:
            model.delete(ids)
        if read:
            model.flush()
    assert pending is not None
    expected, encode = pending
    assert joined(encode()) == expected


def test_a_captured_q_state_survives_certified_changes_that_edit_the_races():
    """Certified inserts that join a seeding race edit the runners in place: the capture must not see it."""
    edited = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(60, 2)) * 3 + rng.integers(0, 3, size=(60, 1)) * 5
        ids = [f"p{i}" for i in range(len(X))]
        model = QKMeans(k=3, seed=seed, eps=[0.5, 2.0, 8.0][seed % 3], max_iter=6)
        model.insert(ids[:20], X[:20])
        model.flush()
        for i in range(20, len(X)):
            runners = [list(r) for r in model._candidate_slots]
            expected, encode = model.to_state(), model.capture_state()
            model.insert([ids[i]], X[i : i + 1])
            model.flush()
            edited += model._fitted and model._candidate_slots != runners
            assert joined(encode()) == expected
    assert edited > 10  # the edits this test is about did happen


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6), st.floats(0, 100)), min_size=2, max_size=30),
       st.integers(0, 29))
def test_a_captured_semantics_state_encodes_the_moment_of_capture(events, capture_at):
    state = EventTimeState(horizon=50.0)
    pending = None
    for i, (is_insert, m, ts) in enumerate(events):
        if i == min(capture_at, len(events) - 1):
            pending = (state.to_bytes(), state.capture_bytes())
        event = InsertEvent(f"id{m}", np.array([float(m), ts]), ts) if is_insert else DeleteEvent(f"id{m}", ts)
        state.apply([event], partitions=[0])
    assert pending is not None
    expected, encode = pending
    assert joined(encode()) == expected
