"""Input checks shared by every model: a bad call raises ValueError and changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .hashing import decimal_lengths, decimal_strings

MAX_ID_BYTES = 256
#: Largest |value| accepted in a vector: beyond it squared distances and sums could overflow to
#: infinity (centroids that are not numbers), so such a value is refused like NaN.
MAX_ABS_VALUE = 1e100


def within_range(values: np.ndarray) -> bool:
    """Every value finite and within ``MAX_ABS_VALUE`` (a NaN makes max and min NaN, which compares false).

    Two reductions, no temporary array: at 100k x 25 a third of the time of ``abs(values) <= M``.
    """
    if values.size == 0:
        return True
    return float(values.max()) <= MAX_ABS_VALUE and float(values.min()) >= -MAX_ABS_VALUE  # float: no float32 cast


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high)``; bools, floats and strings are a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_real(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` if ``low_open``); bools are a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004 - ValueError: the API's bad-input error
    number = float(value)
    if not (low < number if low_open else low <= number) or not number <= high:
        raise ValueError(f"{name} must lie in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")
    return number


def normalize_id(raw: object, max_id_bytes: int = MAX_ID_BYTES) -> str:
    """An id as its canonical string: str as is, int as its decimal form."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, np.integer)):
        raise ValueError(f"an id must be a str or an int, not {type(raw).__name__}")  # noqa: TRY004 - ValueError: the API's bad-input error
    text = raw if isinstance(raw, str) else str(int(raw))
    if not text:
        raise ValueError("an id must not be empty")
    if len(text) > max_id_bytes or len(text.encode("utf-8", "surrogatepass")) > max_id_bytes:
        raise ValueError(f"id longer than {max_id_bytes} bytes: {text[:40]!r}...")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"id is not valid unicode: {text[:40]!r}") from exc
    return text


def normalize_ids(ids: Iterable[object], max_id_bytes: int = MAX_ID_BYTES) -> list[str]:
    """A list of distinct canonical ids; a lone str is refused as ambiguous."""
    if isinstance(ids, (str, bytes)):
        raise ValueError("ids must be a sequence of ids, not a single string; wrap it in a list")  # noqa: TRY004 - ValueError: the API's bad-input error
    fast = _distinct_ints_as_text(ids, max_id_bytes)
    if fast is not None:
        return fast
    try:
        out = list(ids)
    except TypeError as exc:
        raise ValueError(f"ids must be a sequence of ids, not {type(ids).__name__}") from exc
    if not _plain_short_strings(out, max_id_bytes):
        out = [normalize_id(i, max_id_bytes) for i in out]
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dup = next(i for i in out if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate id within one call: {dup!r}")
    return out


def _distinct_ints_as_text(ids: Iterable[object], max_id_bytes: int) -> list[str] | None:
    """Fast path: distinct ints (an integer array or a list of plain ints) as decimal strings.

    None when ``ids`` is anything else, holds a duplicate or an over-long
    number: the general path then converts or names the offender.
    """
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.dtype.itemsize > 8:
            return None
        ordered = np.sort(ids)
        if np.any(ordered[1:] == ordered[:-1]):  # distinct ints have distinct decimal forms
            return None
        # No 64-bit integer takes more than 20 characters: only a lower limit needs their lengths.
        if max_id_bytes < 20 and len(ids) and int(decimal_lengths(ids).max()) > max_id_bytes:
            return None
        return decimal_strings(ids)
    if not (isinstance(ids, list) and ids and set(map(type, ids)) == {int}):
        return None
    if len(set(ids)) != len(ids):
        return None
    out = list(map(str, ids))
    if max(map(len, out)) > max_id_bytes:
        return None
    return out


def _plain_short_strings(ids: list[object], max_id_bytes: int) -> bool:
    """Fast path: non-empty str ids too short to exceed the limit even as 4-byte UTF-8."""
    if not ids or set(map(type, ids)) != {str}:
        return False
    lengths = list(map(len, ids))  # type: ignore[arg-type]
    return min(lengths) > 0 and max(lengths) * 4 <= max_id_bytes and all(map(str.isascii, ids))  # type: ignore[arg-type]


def as_points(X: object, n_rows: int, n_features: int | None) -> np.ndarray:
    """``X`` as a C-contiguous float64 (n_rows, d) array of finite values within ``MAX_ABS_VALUE``."""
    try:
        raw = np.asarray(X)
        if raw.dtype.kind == "c":
            raise ValueError("complex values")
        arr = raw.astype(np.float64, copy=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"X is not a rectangular array of real numbers: {exc}") from exc
    if arr.ndim != 2:
        if arr.ndim == 1 and n_rows == 0 and arr.size == 0:
            return np.empty((0, n_features or 0))
        raise ValueError(f"X must be 2-D (n_points, n_features), got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"X has {arr.shape[0]} rows but {n_rows} ids were given")
    if n_rows and arr.shape[1] == 0:
        raise ValueError("X must have at least one feature")
    if n_features is not None and n_rows and arr.shape[1] != n_features:
        raise ValueError(f"X has {arr.shape[1]} features, the model holds {n_features}")
    if not within_range(arr):
        if not np.all(np.isfinite(arr)):
            raise ValueError("X contains NaN or infinity")
        raise ValueError(f"X holds a value beyond +-{MAX_ABS_VALUE:g}: squared distances would overflow")
    return np.ascontiguousarray(arr)


def as_partitions(partitions: Sequence[int] | np.ndarray | None, n_rows: int, n_partitions: int) -> np.ndarray | None:
    """Validated partition numbers in ``[0, n_partitions)``, or None."""
    if partitions is None:
        return None
    arr = np.asarray(partitions)
    if arr.shape != (n_rows,) or (n_rows and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"partitions must be {n_rows} integers")
    arr = arr.astype(np.int64)
    if n_rows and (arr.min() < 0 or arr.max() >= n_partitions):
        raise ValueError(f"partitions must lie in [0, {n_partitions})")
    return arr
