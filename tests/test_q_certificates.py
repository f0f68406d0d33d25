"""The Q-k-means seeding certificate on hand-made races: each of its refusals is needed.

Random interleavings rarely hit a newcomer that would join a seeding race
(quantized Lloyd often lands on the same fixpoint anyway), so these cases
pin every check of ``kernels.q_seeding_certificate`` down directly.
"""

from __future__ import annotations

import numpy as np

from stream_unlearn import kernels

# Two seeding steps, two candidates each, on a line; candidate 0 won both steps.
CAND = np.array([[[0.0], [10.0]], [[5.0], [20.0]]])
CHOSEN = np.array([0, 0])
POTENTIALS = np.array([[100.0, 200.0], [50.0, 80.0]])
LAST = np.array([-1.0, -1.0])  # race keys of the last runner of each step


def holds(x: float, sign: int, logu=(-2.0, -2.0), potentials=POTENTIALS) -> bool:
    return bool(kernels.q_seeding_certificate(np.array([x]), np.array(logu), float(sign), CAND, CHOSEN,
                                              np.asarray(potentials, dtype=np.float64), LAST, 10.0))


def test_a_far_from_the_race_point_is_certified():
    assert holds(1.0, +1)
    assert holds(1.0, -1, logu=(0.0, 0.0))  # a delete has no race keys


def test_an_insert_that_would_join_a_race_is_refused():
    assert not holds(1.0, +1, logu=(-0.5, -2.0))  # step 0: -0.5 / 1 beats the last runner
    assert not holds(1.0, +1, logu=(-2.0, -0.9))  # step 1: -0.9 / D^2 (= 1) beats it too


def test_a_change_that_flips_or_nearly_flips_a_winner_is_refused():
    assert not holds(10.0, +1, potentials=[[100.0, 60.0 + 100.0 - 81.0], [50.0, 80.0]])  # winner flips
    assert not holds(1.0, +1, potentials=[[100.0, 20.0 + 1e-13], [50.0, 80.0]])  # within rounding of a tie
    assert holds(1.0, +1, potentials=[[100.0, 20.0 + 1e-6], [50.0, 80.0]])
