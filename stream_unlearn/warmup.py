"""Load the compiled kernels before the first real batch.

numba compiles (or loads from its cache) each kernel on first call, ~1 s in
all. A worker that pays it inside its first batch shows a latency spike and
a slower first minute; calling :func:`warm_up` at start-up moves the cost
before the worker reports ready.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import MODELS
from .q_kmeans import QKMeans


def warm_up(algorithm: str, k: int, **params: Any) -> float:
    """Run a tiny model of ``algorithm`` (with the worker's ``params``) through every kernel it uses;
    returns the seconds spent.

    Array shapes do not matter to numba, only types, so any dimension will do;
    but a DC tree's depth does (its path refit takes one array per level).
    """
    started = time.perf_counter()
    X = np.random.default_rng(0).normal(size=(max(4 * k, 40), 4))
    ids = [f"warm-up-{i}" for i in range(len(X))]
    model = MODELS[algorithm](k=k, **params)
    model.insert(ids, X)
    model.flush()
    # Single events, so that Q-k-means runs its certificates (a delete of a
    # seeding candidate would skip them: a few ids make sure some are not).
    for i, point_id in enumerate(ids[-4:]):
        model.delete([point_id])
        model.flush()
        model.insert([f"warm-up-new-{i}"], X[i : i + 1] + 0.5)
        model.flush()
    model.predict(X[:2])
    model.loss()
    if isinstance(model, QKMeans):
        # A newcomer's entry cost into a seeding race: reached only when an insert makes the race's
        # top few, which no event above is sure to do (uncompiled, the first one took 1.3 s of a batch).
        model._entry_cost(X[0] + 0.25, 1, ([], 0))
        model._race_successor(1)  # likewise, the successor of a deleted runner
    return time.perf_counter() - started
