"""Helpers shared by the benchmarks: timing, tables, environment notes."""

from __future__ import annotations

import math
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


class CpuShare:
    """Where the machine's CPU went between two readings: given processes, the rest, idle (Linux /proc).

    Benchmarks share this 2-core machine with their broker and load
    generator, and the machine itself runs slower in some phases; the cores
    each part used during a run say whether the system under test had the
    CPU it needed. On other systems every share reads NaN.
    """

    _TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, **pids: int) -> None:
        self._pids = pids
        self._start = self._read()
        self._t0 = time.monotonic()

    def cores(self) -> dict[str, float]:
        """Cores used since construction: one per named process, ``other`` (all else busy), ``idle``."""
        end, seconds = self._read(), max(time.monotonic() - self._t0, 1e-9)
        used = {name: (end[name] - self._start[name]) / seconds for name in (*self._pids, "busy", "idle")}
        used["other"] = used.pop("busy") - sum(used[name] for name in self._pids)
        return used

    def _read(self) -> dict[str, float]:
        out = {name: _process_cpu_ticks(pid) / self._TICK for name, pid in self._pids.items()}
        try:
            with open("/proc/stat") as f:
                ticks = [float(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        except OSError:
            ticks = [math.nan] * 8
        out["idle"] = (ticks[3] + ticks[4]) / self._TICK
        out["busy"] = (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / self._TICK
        return out


def _process_cpu_ticks(pid: int) -> float:
    """User + system clock ticks of process ``pid`` so far (NaN if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return float(fields[11]) + float(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
