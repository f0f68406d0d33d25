"""The process's pool of compute threads, one per core this process may use.

Compiled kernels release the GIL, so independent pieces of one model
update (runs of DC nodes, a store's row copy) can run on every core. One
shared pool: models and stores must not each start threads of their own.
Work given to it must not wait on work given to it (its threads would
wait on themselves).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

__all__ = ["compute_pool", "n_threads"]

_pool: ThreadPoolExecutor | None = None


@lru_cache(maxsize=1)
def n_threads() -> int:
    """Cores this process may run on (read once: a flush must not pay a system call per level)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def compute_pool() -> ThreadPoolExecutor:
    """The shared pool, started on first use."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=n_threads(), thread_name_prefix="compute")
    return _pool
