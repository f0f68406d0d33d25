"""Helpers shared by the benchmarks: timing, tables, environment notes."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def now() -> float:
    return time.perf_counter()


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def mean_sq_loss(X: np.ndarray, C: np.ndarray, chunk: int = 8192) -> float:
    """Mean squared distance of each row of X to its nearest row of C (chunked, BLAS)."""
    cc = np.einsum("kd,kd->k", C, C)
    total = 0.0
    for start in range(0, len(X), chunk):
        part = X[start : start + chunk]
        d2 = np.einsum("md,md->m", part, part)[:, None] - 2.0 * (part @ C.T) + cc[None, :]
        total += float(np.maximum(d2.min(axis=1), 0.0).sum())
    return total / len(X)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain fixed-width table: columns are (key, header)."""
    cells = [[h for _, h in columns]] + [[_fmt(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = [all(isinstance(r.get(key), (int, float, np.number)) or r.get(key) is None
                   for r in rows) for key, _ in columns]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j and numeric[i] else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "OK" if v else "FAIL"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if np.isnan(v):
            return "-"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.3g}" if a < 10 else f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def environment() -> str:
    """One line about the machine and BLAS, so a reader can judge the numbers."""
    parts = [f"python {platform.python_version()}", f"numpy {np.__version__}", f"cores {os.cpu_count()}"]
    try:
        import sklearn

        parts.append(f"scikit-learn {sklearn.__version__}")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i['internal_api']}/{i.get('architecture')}/{i['num_threads']}t" for i in threadpool_info()
                if i["user_api"] == "blas"]
        parts.append("blas " + ",".join(sorted(set(blas))))
    except ImportError:
        pass
    env = [f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS") if k in os.environ]
    if env:
        parts.append(" ".join(env))
    return ", ".join(parts)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
