"""Fixed feature scaling: round trips, refusals, and exactness on scaled data."""

from __future__ import annotations

import numpy as np
import pytest

from stream_unlearn import QKMeans
from stream_unlearn.scaling import FeatureScaler, suggest_eps


def test_scaler_round_trip_and_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, [1.0, 10.0, 0.1], size=(500, 3))
    X[:, 2] = 7.0
    scaler = FeatureScaler.from_sample(X)
    Z = scaler.transform(X)
    assert np.allclose(Z[:, :2].std(axis=0), 1.0) and np.all(Z[:, 2] == 0.0)
    assert np.allclose(scaler.inverse_transform(Z), X)
    scaler.save(tmp_path / "scale.npz")
    again = FeatureScaler.load(tmp_path / "scale.npz")
    assert np.array_equal(again.transform(X), Z)


@pytest.mark.parametrize("center, scale", [([0.0], [0.0]), ([0.0, 1.0], [1.0]), ([np.nan], [1.0])])
def test_bad_scaler_is_refused(center, scale):
    with pytest.raises(ValueError):
        FeatureScaler(np.array(center), np.array(scale))


def test_scaled_q_model_stays_exact():
    rng = np.random.default_rng(1)
    raw = rng.normal(0, 1000, size=(4, 5))[rng.integers(0, 4, 2000)] + rng.normal(0, 50, size=(2000, 5))
    scaler = FeatureScaler.from_sample(raw[:500])
    X = scaler.transform(raw)
    model = QKMeans(k=4, seed=3, eps=suggest_eps(X, 4))
    model.insert(range(2000), X)
    model.flush()
    for i in range(0, 200, 7):
        model.delete([i])
        model.flush()
    assert model.certificates_passed_ > 0 and model.verify()
