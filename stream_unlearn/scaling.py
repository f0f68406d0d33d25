"""Fixed feature scaling for models whose parameters are in data units (Q-k-means' eps).

The scale must be part of the configuration, not learned from the stream:
a scale that moved with every insert or delete would make the model depend
on history, breaking the exact-unlearning contract. So estimate it once
from a sample, store it, and apply the same transform to every event.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FeatureScaler:
    """``(x - center) / scale`` per feature, with fixed ``center`` and ``scale``."""

    center: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        center = np.asarray(self.center, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        if center.ndim != 1 or center.shape != scale.shape:
            raise ValueError("center and scale must be 1-D arrays of one length")
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("center must be finite and scale finite and positive")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def from_sample(cls, X: np.ndarray) -> FeatureScaler:
        """z-scores from a representative sample; constant features keep scale 1."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0 or not np.all(np.isfinite(X)):
            raise ValueError("the sample must be a non-empty 2-D array of finite numbers")
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Scaled copy of ``X`` (n, d)."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[-1] != len(self.center):
            raise ValueError(f"expected {len(self.center)} features, got {X.shape[-1]}")
        return (X - self.center) / self.scale

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Back to data units (e.g. for centroids)."""
        return np.asarray(X, dtype=np.float64) * self.scale + self.center

    def save(self, path: str | Path) -> None:
        """Write as .npz (two float64 arrays, no pickle)."""
        np.savez(path, center=self.center, scale=self.scale)

    @classmethod
    def load(cls, path: str | Path) -> FeatureScaler:
        """Read what ``save`` wrote."""
        with np.load(path, allow_pickle=False) as data:
            return cls(data["center"], data["scale"])


def suggest_eps(X_scaled: np.ndarray, k: int, fraction: float = 0.1) -> float:
    """A starting eps for scaled data: a fraction of the typical per-feature spread.

    Bigger eps: more deletions certified, coarser centroids. Tune on your
    data with bench/paper_table.py (loss ratio and pass rate side by side).
    """
    X_scaled = np.asarray(X_scaled, dtype=np.float64)
    spread = float(np.median(X_scaled.std(axis=0))) or 1.0
    return fraction * spread * max(1.0, np.sqrt(k) / 2)
