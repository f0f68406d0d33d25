"""Load the compiled kernels before the first real batch.

numba compiles (or loads from its cache) each kernel on first call, ~1 s in
all. A worker that pays it inside its first batch shows a latency spike and
a slower first minute; calling :func:`warm_up` at start-up moves the cost
before the worker reports ready.
"""

from __future__ import annotations

import time

import numpy as np

from . import MODELS


def warm_up(algorithm: str, k: int) -> float:
    """Run a tiny model of ``algorithm`` through every kernel it uses; returns the seconds spent.

    Array shapes do not matter to numba, only types, so any dimension will do.
    """
    started = time.perf_counter()
    X = np.random.default_rng(0).normal(size=(max(4 * k, 40), 4))
    ids = [f"warm-up-{i}" for i in range(len(X))]
    model = MODELS[algorithm](k=k)
    model.insert(ids, X)
    model.flush()
    model.delete(ids[:1])
    model.insert(ids[:1], X[:1] + 1.0)
    model.predict(X[:2])
    model.loss()
    return time.perf_counter() - started
