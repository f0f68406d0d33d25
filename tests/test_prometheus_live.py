"""A real Prometheus scrapes a real worker; every dashboard query must return data.

Needs the ``prometheus`` binary (Debian package ``prometheus``, which
``./dev test`` installs when run as root); skipped without it. The
Prometheus configuration is docker/prometheus.yml with its targets
rewritten to local ports and a 1 s scrape interval, checked by ``promtool``.

Two tests:

* ``test_dashboard_queries_on_an_exporter``: an in-process
  :class:`WorkerMetrics` fed synthetic observations (no Kafka); isolates
  the dashboard/metrics contract from the worker.
* ``test_dashboard_queries_on_a_live_worker``: ``stream-unlearn worker`` as a
  subprocess on the embedded broker, fed inserts, deletes and a bad record.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_grafana import expressions, load_dashboard
from test_metrics import CONFIG, record_one_of_each

from stream_unlearn import wire
from stream_unlearn.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "docker" / "prometheus.yml"
WORKER_JOB = "stream-unlearn-worker"
RATE_INTERVAL = "1m"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus binary not installed (Debian package `prometheus`; ./dev test installs it as root)",
)


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, on_fail: Callable[[], str] = str) -> object:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, ValueError, KeyError) as exc:
            last_exc = exc
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r}){on_fail()}")


def render(expr: str) -> str:
    """Substitute the Grafana variables an expression may use."""
    for var in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}", "$__range", "${__range}"):
        expr = expr.replace(var, RATE_INTERVAL)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def prometheus_config(prom_addr: str, worker_target: str) -> dict:
    """docker/prometheus.yml with local targets and a 1 s scrape interval."""
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    rewritten = 0
    for job in cfg["scrape_configs"]:
        for sc in job["static_configs"]:
            new = []
            for t in sc["targets"]:
                if job["job_name"] == WORKER_JOB:
                    new.append(worker_target)
                    rewritten += 1
                elif t.startswith("localhost:9090"):
                    new.append(prom_addr)
                else:
                    new.append(t)
            sc["targets"] = new
    assert rewritten == 1, "docker/prometheus.yml must have exactly one worker target"
    return cfg


class Prometheus:
    def __init__(self, base: str, proc: subprocess.Popen, log: Path) -> None:
        self.base, self.proc, self.log = base, proc, log

    def query(self, expr: str) -> list[dict]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(http_get(url))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"query {expr!r} failed: {exc.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str) -> float:
        """Sum of the values of an instant query (0 if empty)."""
        return sum(float(r["value"][1]) for r in self.query(expr))

    def tail(self) -> str:
        return "\n--- prometheus log ---\n" + self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    procs: list[subprocess.Popen] = []

    def start(worker_target: str) -> Prometheus:
        port = free_port()
        addr = f"127.0.0.1:{port}"
        cfg_path = tmp_path / "prometheus.yml"
        cfg_path.write_text(yaml.safe_dump(prometheus_config(addr, worker_target), sort_keys=False))
        if PROMTOOL:
            check = subprocess.run([PROMTOOL, "check", "config", str(cfg_path)], capture_output=True, text=True,
                                   check=False)
            assert check.returncode == 0, check.stdout + check.stderr
        log = tmp_path / "prometheus.log"
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={addr}", "--log.level=warn"],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        procs.append(proc)
        prom = Prometheus(f"http://{addr}", proc, log)

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}{prom.tail()}")
            return http_get(f"{prom.base}/-/ready", timeout=1).strip() != b""

        wait_for(ready, 30, "prometheus to be ready", prom.tail)
        return prom

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_scraped(prom: Prometheus) -> None:
    wait_for(lambda: prom.value(f'up{{job="{WORKER_JOB}"}}') == 1, 30, "the first successful scrape", prom.tail)


def assert_every_dashboard_query_returns_data(prom: Prometheus, must_be_finite: bool = True) -> None:
    exprs = expressions(load_dashboard())
    assert len(exprs) >= 20
    empty, not_finite = [], []
    for title, expr in exprs:
        result = prom.query(render(expr))
        if not result:
            empty.append((title, expr))
        elif must_be_finite and not any(math.isfinite(float(r["value"][1])) for r in result):
            not_finite.append((title, expr, [r["value"][1] for r in result]))
    assert not empty, "dashboard queries with no data:\n" + "\n".join(f"  {t}: {e}" for t, e in empty)
    assert not not_finite, "dashboard queries with only NaN/Inf:\n" + "\n".join(f"  {x}" for x in not_finite)


# ---------------------------------------------------------------- tests


def test_docker_prometheus_config_passes_promtool(tmp_path):
    if PROMTOOL is None:
        pytest.skip("promtool not installed")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(prometheus_config("127.0.0.1:9090", "127.0.0.1:9464")))
    for path in (PROMETHEUS_YML, cfg):
        out = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_queries_on_an_exporter(start_prometheus):
    metrics = WorkerMetrics(**CONFIG)
    port = metrics.serve(0)
    try:
        prom = start_prometheus(f"127.0.0.1:{port}")
        wait_until_scraped(prom)
        # observations spread over a few scrapes, so every rate() sees an increase
        for _ in range(4):
            record_one_of_each(metrics)
            metrics.snapshot(0.5, 2048, time.time())
            time.sleep(1.0)
        wait_for(lambda: prom.value("stream_unlearn_receipts_total") >= 8, 20, "the last observations", prom.tail)
        assert_every_dashboard_query_returns_data(prom)
    finally:
        metrics.close()


def _worker_metrics(port: int) -> dict[str, float]:
    """Worker exposition summed per sample name (labels dropped)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                continue
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


@pytest.mark.slow
def test_dashboard_queries_on_a_live_worker(start_prometheus, broker, unique_topic, tmp_path):
    from kafka import KafkaProducer

    from stream_unlearn.broker import ensure_topics
    from stream_unlearn.producer import EventProducer

    topics = {
        "insert": unique_topic("inserts"),
        "delete": unique_topic("deletes"),
        "dead_letter": unique_topic("dead-letter"),
        "receipts": unique_topic("receipts"),
        "model": unique_topic("model"),
    }
    ensure_topics(broker, {topics["insert"]: 3, topics["delete"]: 3, topics["dead_letter"]: 1,
                           topics["receipts"]: 1, topics["model"]: 1})  # fmt: skip
    metrics_port = free_port()
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_UNLEARN_")}
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "stream_unlearn.cli", "worker",
            "--bootstrap-servers", broker,
            "--insert-topic", topics["insert"],
            "--delete-topic", topics["delete"],
            "--dead-letter-topic", topics["dead_letter"],
            "--receipts-topic", topics["receipts"],
            "--model-topic", topics["model"],
            "--algorithm", "q",
            "--no-group",  # q is one global model: a single worker reading every partition
            "--k", "3",
            "--seed", "0",
            "--snapshot-dir", str(tmp_path / "snapshots"),
            "--snapshot-interval", "1",
            "--metrics-port", str(metrics_port),
            "--metrics-addr", "127.0.0.1",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )

    def worker_log() -> str:
        return "\n--- worker log ---\n" + log.read_text(errors="replace")[-4000:]

    def alive_metrics() -> dict[str, float]:
        if worker.poll() is not None:
            pytest.fail(f"worker exited with {worker.returncode}{worker_log()}")
        return _worker_metrics(metrics_port)

    try:
        wait_for(alive_metrics, 60, "the worker's metrics endpoint", worker_log)
        prom = start_prometheus(f"127.0.0.1:{metrics_port}")
        wait_until_scraped(prom)

        rng = np.random.default_rng(0)
        centers = rng.normal(0.0, 10.0, (3, 4))
        n_deleted = 0
        with EventProducer(broker, insert_topic=topics["insert"], delete_topic=topics["delete"]) as producer:
            for wave in range(3):  # spread over several scrapes
                ids = [f"w{wave}-{i}" for i in range(200)]
                X = centers[rng.integers(0, 3, len(ids))] + rng.normal(0.0, 1.0, (len(ids), 4))
                producer.insert(ids, X)
                producer.flush()
                time.sleep(0.5)
                producer.delete(ids[:20])
                producer.flush()
                n_deleted += 20
                time.sleep(1.0)
        raw = KafkaProducer(bootstrap_servers=broker)
        raw.send(topics["insert"], key=b"bad", value=b"\xc1 not msgpack")
        raw.flush()
        raw.close()

        def worker_done() -> bool:
            m = alive_metrics()
            return (
                m.get("stream_unlearn_events_total", 0) >= 600 + n_deleted + 1
                and m.get("stream_unlearn_dead_letters_total", 0) >= 1
                and m.get("stream_unlearn_delete_to_forgotten_seconds_count", 0) >= n_deleted
                and m.get("stream_unlearn_delete_to_persisted_seconds_count", 0) >= n_deleted
                and m.get("stream_unlearn_receipts_total", 0) >= n_deleted
                and m.get("stream_unlearn_snapshots_total", 0) >= 1
            )

        wait_for(worker_done, 90, "the worker to apply, forget, persist and dead-letter", lambda: (
            f"\nworker metrics: {alive_metrics()}{worker_log()}"
        ))  # fmt: skip
        final = alive_metrics()
        assert final["stream_unlearn_points"] == 600 - n_deleted
        wait_for(
            lambda: prom.value("stream_unlearn_receipts_total") >= final["stream_unlearn_receipts_total"]
            and prom.value("stream_unlearn_dead_letters_total") >= 1,
            20,
            "prometheus to scrape the final counters",
            prom.tail,
        )
        time.sleep(2.0)  # two more scrapes
        assert prom.value('stream_unlearn_events_total{type="delete",outcome="applied"}') == n_deleted
        assert prom.value('stream_unlearn_dead_letters_total{reason="not_msgpack"}') == 1
        assert prom.value(f'stream_unlearn_consumer_lag_records{{topic="{topics["insert"]}"}}') == 0
        assert_every_dashboard_query_returns_data(prom)
    finally:
        if worker.poll() is None:
            worker.terminate()  # SIGTERM: finish the batch, snapshot, close
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert worker.returncode == 0, f"worker exit status {worker.returncode} after SIGTERM{worker_log()}"
    assert wire.TOPIC_INSERTS not in topics.values()  # never touched the shared default topics
