"""Splitting work over the compute pool: every problem once, and no run left behind on an error."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stream_unlearn import lloyd


@pytest.mark.parametrize("n_problems", [1, 15, 16, 17, 500])
def test_in_parallel_gives_every_problem_to_exactly_one_run(monkeypatch, n_problems):
    monkeypatch.setattr(lloyd, "n_threads", lambda: 2)
    runs: list[tuple[int, int]] = []
    lock = threading.Lock()

    def solve(a: int, b: int) -> None:
        with lock:
            runs.append((a, b))

    lloyd.in_parallel(np.arange(n_problems) % 7, solve)
    covered = sorted(i for a, b in runs for i in range(a, b))
    assert covered == list(range(n_problems))
    assert len(runs) == (1 if n_problems < lloyd._PARALLEL_NODES else 2)


def test_in_parallel_waits_for_every_run_before_it_raises(monkeypatch):
    """A failing run must not leave another still writing into the caller's arrays."""
    monkeypatch.setattr(lloyd, "n_threads", lambda: 2)
    finished: list[int] = []

    def solve(a: int, b: int) -> None:
        if a == 0:
            raise RuntimeError("first run fails")
        time.sleep(0.2)
        finished.append(a)

    with pytest.raises(RuntimeError, match="first run fails"):
        lloyd.in_parallel(np.ones(64, dtype=np.int64), solve)
    assert len(finished) == 1 and finished[0] > 0  # the other run had finished
