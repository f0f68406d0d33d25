"""``stream-unlearn demo`` end to end, small: its own broker, a worker process, the report."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from stream_unlearn.cli import main
from stream_unlearn.demo import gaussian_mixture, histogram_quantile, plan_stream


@pytest.mark.parametrize("algorithm", ["dc", "q"])
def test_demo_runs_and_every_check_passes(capsys, tmp_path, monkeypatch, algorithm):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the demo keeps its worker log
    assert main(["demo", "--algorithm", algorithm, "--n", "3000", "--snapshot-interval", "0.5",
                 "--snapshot-dir", str(tmp_path / "s")]) == 0
    assert list(scratch.iterdir()) == []  # a passing demo leaves nothing behind but the snapshots asked for
    out = capsys.readouterr().out
    for line in ("throughput", "event-to-model", "receipts", "dead letters      12", "verify            OK"):
        assert line in out
    assert "FAIL" not in out
    assert main(["verify", str(tmp_path / "s")]) == 0


def test_a_bad_rate_is_refused_before_anything_starts(capsys):
    for rate in ("-1", "nan", "inf"):
        assert main(["demo", "--rate", rate]) == 2
        assert "0 <= --rate < inf" in capsys.readouterr().err


def test_plan_counts_add_up():
    s = plan_stream(2000, 3, 2, 0.1, seed=0, t0=1e9)
    assert s.n_valid_deletes == 200 and s.n_malformed == 12
    assert len(s.survivors) == 2000 - 200 + 20  # re-inserted ids survive with a new vector
    assert s.n_records == sum(1 if st[0] == "raw" else len(st[1]) for st in s.steps)


def test_gaussian_mixture_is_unchanged():
    X, labels = gaussian_mixture(10, 4, 3, seed=0)
    assert X.shape == (10, 4) and labels.shape == (10,)
    assert np.array_equal(X, gaussian_mixture(10, 4, 3, seed=0)[0])


def test_histogram_quantile_interpolates_within_buckets():
    samples = {"h_bucket": [({"le": "0.1"}, 50.0), ({"le": "0.2"}, 100.0), ({"le": "+Inf"}, 100.0)]}
    assert histogram_quantile(samples, "h", 0.5) == 0.1
    assert abs(histogram_quantile(samples, "h", 0.75) - 0.15) < 1e-12
