"""The worker's model metrics: the loss spread over batches one unit at a time, and Q's counters as deltas."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stream_unlearn import KMeans, QKMeans
from stream_unlearn.model_accounting import ModelAccounting


class Recorder:
    """What the accounting reported, call by call (the metrics interface the worker feeds)."""

    def __init__(self) -> None:
        self.states: list[tuple[int, float | None]] = []
        self.certs: list[tuple[int, int]] = []
        self.refit_counts: list[int] = []

    def model_state(self, points: int, loss: float | None) -> None:
        self.states.append((points, loss))

    def certificates(self, passed: int, failed: int) -> None:
        self.certs.append((passed, failed))

    def refits(self, n: int) -> None:
        self.refit_counts.append(n)


def _unit(X: np.ndarray, prefix: str) -> SimpleNamespace:
    model = KMeans(k=2, seed=0)
    model.insert([f"{prefix}{i}" for i in range(len(X))], X)
    return SimpleNamespace(model=model)


def test_the_loss_is_one_unit_per_batch_against_the_rounds_centroids():
    rng = np.random.default_rng(0)
    units = [_unit(rng.normal(size=(50, 3)), "a"), _unit(rng.normal(size=(30, 3)) + 2, "b")]
    C = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    recorder = Recorder()
    accounting = ModelAccounting(recorder, loss_interval=3600.0)
    for _ in range(3):
        accounting.after_batch(units, lambda: C, owns=lambda unit: True)
    expected = (units[0].model.sq_dist_sum(C) + units[1].model.sq_dist_sum(C)) / 80
    # Round 1 starts at the first batch: unit a, then unit b and the mean; the third batch waits for the next round.
    assert recorder.states == [(80, None), (80, expected), (80, None)]


def test_a_unit_no_longer_owned_is_left_out_of_the_round():
    rng = np.random.default_rng(1)
    units = [_unit(rng.normal(size=(20, 2)), "a"), _unit(rng.normal(size=(40, 2)), "b")]
    C = np.zeros((2, 2))
    recorder = Recorder()
    accounting = ModelAccounting(recorder, loss_interval=3600.0)
    for _ in range(2):  # unit a, then unit b skipped (another worker owns it now) and the mean
        accounting.after_batch(units, lambda: C, owns=lambda unit: unit is units[0])
    assert recorder.states == [(60, None), (60, units[0].model.sq_dist_sum(C) / 20)]


def test_q_certificates_and_refits_are_reported_as_increments():
    rng = np.random.default_rng(2)
    model = QKMeans(k=2, seed=0, eps=0.5)
    model.insert(range(200), rng.normal(size=(200, 2)) * 3)
    model.flush()
    unit = SimpleNamespace(model=model)
    recorder = Recorder()
    accounting = ModelAccounting(recorder, loss_interval=3600.0)
    accounting.after_batch([unit], lambda: model.centroids_, owns=lambda u: True, q_model=model)
    assert recorder.refit_counts == [1]  # the fit
    for i in range(200, 260):  # one change per batch: each is certified, or fails and refits
        passed, failed, refits = model.certificates_passed_, model.certificates_failed_, model.refits_
        model.insert([i], rng.normal(size=(1, 2)) * 3)
        model.flush()
        accounting.after_batch([unit], lambda: model.centroids_, owns=lambda u: True, q_model=model)
        assert recorder.certs[-1] == (model.certificates_passed_ - passed, model.certificates_failed_ - failed)
        assert sum(recorder.certs[-1]) == 1
        if model.refits_ > refits:
            assert recorder.refit_counts[-1] == model.refits_ - refits
    assert sum(recorder.refit_counts) == model.refits_ and sum(p for p, _ in recorder.certs) == model.certificates_passed_
