"""/healthz: the poll loop's liveness, served beside /metrics over real HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from stream_unlearn.config import ConfigError, WorkerConfig
from stream_unlearn.liveness import HEALTH_PATH, Liveness
from stream_unlearn.metrics import WorkerMetrics

CONFIG = {"algorithm": "dc", "k": 5, "seed": 7, "version": "0.1.0", "partitions": 3}


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_live_while_starting_and_stepping_stalled_after_the_limit():
    clock = FakeClock()
    liveness = Liveness(30.0, clock=clock)
    assert liveness.status() == (True, "starting: the poll loop has not stepped yet")
    clock.now += 1000.0  # a long restore before the first step is not a stall
    assert liveness.status()[0]
    liveness.beat()
    clock.now += 30.0
    live, reason = liveness.status()
    assert live and reason.startswith("ok: last poll loop step 30.0 s ago")
    clock.now += 0.5
    live, reason = liveness.status()
    assert not live and reason == "stalled: no poll loop step for 30.5 s (limit 30 s)"
    liveness.beat()
    assert liveness.status()[0]


def test_a_zero_limit_never_stalls_and_bad_limits_are_refused():
    clock = FakeClock()
    liveness = Liveness(0.0, clock=clock)
    liveness.beat()
    clock.now += 10**6
    assert liveness.status()[0]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="stall_after"):
            Liveness(bad)
    with pytest.raises(ConfigError, match="--stall-timeout"):
        WorkerConfig(stall_timeout=-1.0)
    with pytest.raises(ConfigError, match="must exceed --handover-timeout"):
        WorkerConfig(stall_timeout=60.0, handover_timeout=120.0)
    assert WorkerConfig(stall_timeout=0.0).stall_timeout == 0.0


def test_healthz_is_served_beside_the_metrics_and_turns_503_when_the_loop_stalls():
    m = WorkerMetrics(**CONFIG)
    port = m.serve(0, stall_after=1.0)  # a second of room for each request after a beat, on a busy box
    try:
        assert get(port, HEALTH_PATH) == (200, "starting: the poll loop has not stepped yet\n")
        m.heartbeat()
        status, reason = get(port, HEALTH_PATH)
        assert status == 200 and reason.startswith("ok: last poll loop step")
        assert get(port, HEALTH_PATH, "HEAD") == (200, "")
        time.sleep(1.5)
        status, reason = get(port, HEALTH_PATH)
        assert status == 503 and reason.startswith("stalled: no poll loop step for") and "(limit 1 s)" in reason
        status, metrics = get(port, "/metrics")  # the metrics themselves are unaffected
        assert status == 200 and "stream_unlearn_build_info" in metrics
        m.heartbeat()
        assert get(port, HEALTH_PATH)[0] == 200
    finally:
        m.close()
