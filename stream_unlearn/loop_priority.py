"""The worker's loop goes first: the snapshot writer steps aside while a batch is applied.

Why: the writer thread encodes and writes a unit's state (30 MB at 130k
points) while the loop goes on. On a 2-core machine the two compete for
the GIL and the cores, and a batch applied meanwhile takes two to three
times as long: in ``bench/stream.py`` a Q refit that met a snapshot job
took 150-220 ms instead of 60-90 ms, and the events queued behind it
missed the 250 ms event-to-model target. The writer pauses between small
steps of its work (a slice of ids, a piece of a file, a chunk of receipts)
while the loop is inside :meth:`LoopPriority.applying`, and runs while the
loop polls. A job waits at most ``budget`` seconds in all, so a loop that
is never idle (catching up on a backlog) delays a snapshot, and its
receipts, by at most that much.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEFAULT_BUDGET", "LoopPriority"]

#: Seconds a snapshot job may spend waiting for the loop, in all (receipts are due within the
#: snapshot interval + 1 s; a job itself takes 0.2-0.4 s at 130k points here, up to 0.9 s in
#: the machine's slow phases).
DEFAULT_BUDGET = 0.5


class LoopPriority:
    """A flag the loop raises while it applies a batch, and a bounded wait for it to drop.

    The loop thread calls :meth:`applying`; one background thread at a time
    calls :meth:`job_started` and :meth:`pause`.
    """

    def __init__(self, budget: float = DEFAULT_BUDGET) -> None:
        if not budget >= 0:
            raise ValueError(f"budget must be >= 0 seconds, got {budget!r}")
        self.budget = budget
        self._idle = threading.Event()
        self._idle.set()
        self._deadline = 0.0
        #: seconds the current job has waited so far
        self.waited = 0.0

    @contextmanager
    def applying(self) -> Iterator[None]:
        """The loop applies a batch: background work pauses until it is done."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    def job_started(self) -> None:
        """A new job: its waits count against a fresh budget."""
        self._deadline = time.monotonic() + self.budget
        self.waited = 0.0

    def pause(self) -> None:
        """Between two steps of background work: wait while the loop applies, within the job's budget."""
        if self._idle.is_set():
            return
        started = time.monotonic()
        if started < self._deadline:
            self._idle.wait(self._deadline - started)
            self.waited += time.monotonic() - started
