"""Q-k-means arithmetic: balance-corrected centroids snapped to a shifted grid.

Shared by the fit and by the certificates so both run the very same
elementwise operations (IEEE results do not depend on array shape).
"""

from __future__ import annotations

import numpy as np

from .hashing import seed_key, uniforms


def phase(seed: int, n_features: int) -> np.ndarray:
    """The grid offset theta (d,) in [0, 1): a function of (seed, feature)."""
    return uniforms(seed_key(seed, 400), np.arange(n_features, dtype=np.uint64))


def corrected_centroids(
    sums: np.ndarray, counts: np.ndarray, previous: np.ndarray, n: int, k: int, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster means pulled toward the previous centre when a cluster is small.

    With ``M = gamma n / k``, a cluster of ``m < M`` points moves to
    ``(m/M) mean + (1 - m/M) previous`` (the paper's balance correction); an
    empty cluster keeps its centre. Returns the centres and the means.
    """
    filled = counts > 0
    mean = sums / np.where(filled, counts, 1.0)[..., None]
    balance = gamma * n / k
    if balance > 0:
        ratio = (counts / balance)[..., None]
        centre = np.where(ratio < 1.0, ratio * mean + (1.0 - ratio) * previous, mean)
    else:
        centre = mean
    return np.where(filled[..., None], centre, previous), mean


def snap(centre: np.ndarray, eps: float, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest point of the grid ``eps (Z^d + theta)``; also the distance to a cell edge.

    Returns (snapped, slack, z): slack is how far (in data units) ``centre``
    lies inside its cell, the room rounding error has before the snap flips.
    """
    z = centre / eps - theta
    cell = np.floor(z + 0.5)
    snapped = eps * (cell + theta)
    slack = (0.5 - np.abs(z - cell)) * eps
    return snapped, slack, z
