"""The worker's Prometheus metrics, scraped over real HTTP."""

from __future__ import annotations

import inspect
import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_unlearn.metrics import (
    CERTIFICATE_RESULTS,
    EVENT_TYPES,
    LATENCY_BUCKETS,
    OUTCOMES,
    SNAPSHOT_FAILURE_REASONS,
    NullMetrics,
    WorkerMetrics,
)
from stream_unlearn.wire import BAD_RECORD_REASONS

CONFIG = {"algorithm": "dc", "k": 5, "seed": 7, "version": "0.1.0", "partitions": 3}

# name -> (type, label names, excluding "le")
EXPECTED = {
    "stream_unlearn_build_info": ("gauge", {"version", "algorithm", "k", "seed", "partitions"}),
    "stream_unlearn_events": ("counter", {"type", "outcome"}),
    "stream_unlearn_event_to_model_seconds": ("histogram", {"type"}),
    "stream_unlearn_model_update_seconds": ("histogram", set()),
    "stream_unlearn_batch_events": ("histogram", set()),
    "stream_unlearn_delete_to_forgotten_seconds": ("histogram", set()),
    "stream_unlearn_delete_to_persisted_seconds": ("histogram", set()),
    "stream_unlearn_receipts": ("counter", set()),
    "stream_unlearn_snapshot_duration_seconds": ("histogram", set()),
    "stream_unlearn_snapshot_size_bytes": ("gauge", set()),
    "stream_unlearn_snapshot_last_success_timestamp_seconds": ("gauge", set()),
    "stream_unlearn_snapshots": ("counter", set()),
    "stream_unlearn_snapshot_failures": ("counter", {"reason"}),
    "stream_unlearn_points": ("gauge", set()),
    "stream_unlearn_model_loss": ("gauge", set()),
    "stream_unlearn_certificates": ("counter", {"result"}),
    "stream_unlearn_refits": ("counter", set()),
    "stream_unlearn_consumer_lag_records": ("gauge", {"topic", "partition"}),
    "stream_unlearn_dead_letters": ("counter", {"reason"}),
    "stream_unlearn_tombstones": ("gauge", set()),
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset(labels.items())): value}"""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def record_one_of_each(m) -> None:
    """Call every recording method once (used here and by test_grafana)."""
    m.events("insert", "applied", 10)
    m.events("delete", "applied", 2)
    m.events("insert", "dead_letter")
    m.event_to_model("insert", [0.0002, 0.003])
    m.event_to_model("delete", [0.004])
    m.model_update(0.00012, events=12)
    m.delete_forgotten([0.005, 0.006])
    m.delete_persisted([2.5])
    m.receipts(2)
    m.snapshot(0.8, 12345, 1_700_000_000.0)
    m.snapshot_failed("os_error")
    m.model_state(8, 42.5)
    m.certificates(3, 1)
    m.refits(1)
    m.lag("unlearn.inserts", 0, 17)
    m.dead_letter("not_msgpack")
    m.tombstones(2)


@pytest.fixture
def served():
    m = WorkerMetrics(**CONFIG)
    port = m.serve(0)
    try:
        yield m, port
    finally:
        m.close()


def test_names_types_and_labels(served):
    m, port = served
    record_one_of_each(m)
    families = {f.name: f for f in text_string_to_metric_families(scrape(port))}
    for name, (mtype, labels) in EXPECTED.items():
        assert name in families, name
        fam = families[name]
        assert fam.type == mtype, name
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    # prometheus_client also exposes <counter/histogram>_created gauges; they are not ours to name.
    ours = [n for n in families if n.startswith("stream_unlearn") and not n.endswith("_created")]
    assert set(ours) == set(EXPECTED), set(ours) ^ set(EXPECTED)
    # Prometheus naming rules: snake case, base units, counters end in _total.
    for name in ours:
        assert re.fullmatch(r"stream_unlearn_[a-z0-9_]+", name)
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)\b", name)
    for name, (mtype, _) in EXPECTED.items():
        sample_names = {s.name for s in families[name].samples}
        if mtype == "counter":
            assert name + "_total" in sample_names
        if mtype == "histogram":
            assert {name + "_bucket", name + "_sum", name + "_count"} <= sample_names
    assert "process_cpu_seconds_total" in {s.name for f in families.values() for s in f.samples}


def test_build_info(served):
    _, port = served
    assert value(scrape(port), "stream_unlearn_build_info",
                 version="0.1.0", algorithm="dc", k="5", seed="7", partitions="3") == 1.0  # fmt: skip


def test_label_series_are_pre_initialised_at_zero(served):
    _, port = served
    text = scrape(port)
    for t in EVENT_TYPES:
        for o in OUTCOMES:
            assert value(text, "stream_unlearn_events_total", type=t, outcome=o) == 0
        assert value(text, "stream_unlearn_event_to_model_seconds_count", type=t) == 0
    for reason in BAD_RECORD_REASONS:
        assert value(text, "stream_unlearn_dead_letters_total", reason=reason) == 0
    for reason in SNAPSHOT_FAILURE_REASONS:
        assert value(text, "stream_unlearn_snapshot_failures_total", reason=reason) == 0
    for res in CERTIFICATE_RESULTS:
        assert value(text, "stream_unlearn_certificates_total", result=res) == 0
    for name in ("receipts_total", "refits_total", "snapshots_total", "model_update_seconds_count",
                 "delete_to_forgotten_seconds_count", "delete_to_persisted_seconds_count",
                 "snapshot_duration_seconds_count", "batch_events_count"):  # fmt: skip
        assert value(text, "stream_unlearn_" + name) == 0, name
    for name in ("points", "tombstones", "snapshot_last_success_timestamp_seconds"):
        assert value(text, "stream_unlearn_" + name) == 0, name


def test_recorded_values(served):
    m, port = served
    record_one_of_each(m)
    m.model_state(9, float("nan"))  # NaN loss is skipped, points still set
    m.model_state(9, None)
    m.certificates(0, 0)
    m.events("delete", "stale", 0)
    text = scrape(port)
    assert value(text, "stream_unlearn_events_total", type="insert", outcome="applied") == 10
    assert value(text, "stream_unlearn_events_total", type="insert", outcome="dead_letter") == 1
    assert value(text, "stream_unlearn_events_total", type="delete", outcome="stale") == 0
    assert value(text, "stream_unlearn_event_to_model_seconds_count", type="insert") == 2
    assert value(text, "stream_unlearn_event_to_model_seconds_bucket", type="insert", le="0.00025") == 1
    assert value(text, "stream_unlearn_model_update_seconds_bucket", le="0.0001") == 0
    assert value(text, "stream_unlearn_model_update_seconds_bucket", le="0.00025") == 1
    assert value(text, "stream_unlearn_batch_events_sum") == 12
    assert value(text, "stream_unlearn_delete_to_forgotten_seconds_count") == 2
    assert value(text, "stream_unlearn_delete_to_persisted_seconds_bucket", le="2.5") == 1
    assert value(text, "stream_unlearn_receipts_total") == 2
    assert value(text, "stream_unlearn_snapshots_total") == 1
    assert value(text, "stream_unlearn_snapshot_size_bytes") == 12345
    assert value(text, "stream_unlearn_snapshot_last_success_timestamp_seconds") == 1_700_000_000.0
    assert value(text, "stream_unlearn_snapshot_failures_total", reason="os_error") == 1
    assert value(text, "stream_unlearn_points") == 9
    assert value(text, "stream_unlearn_model_loss") == 42.5
    assert value(text, "stream_unlearn_certificates_total", result="passed") == 3
    assert value(text, "stream_unlearn_certificates_total", result="failed") == 1
    assert value(text, "stream_unlearn_refits_total") == 1
    assert value(text, "stream_unlearn_consumer_lag_records", topic="unlearn.inserts", partition="0") == 17
    assert value(text, "stream_unlearn_dead_letters_total", reason="not_msgpack") == 1
    assert value(text, "stream_unlearn_tombstones") == 2


def test_buckets_span_sub_millisecond_to_minutes(served):
    _, port = served
    text = scrape(port)
    for name in ("event_to_model_seconds", "model_update_seconds", "delete_to_forgotten_seconds",
                 "delete_to_persisted_seconds", "snapshot_duration_seconds"):  # fmt: skip
        les = sorted(
            float(dict(lbl)["le"])
            for (n, lbl) in samples(text)
            if n == f"stream_unlearn_{name}_bucket" and dict(lbl).get("type", "insert") == "insert"
        )
        assert les[0] <= 0.00005, name
        assert les[-1] == float("inf")
        assert 60 <= les[-2] <= 120, name
        assert sum(1 for b in les if b < 0.001) >= 3, name  # resolution below 1 ms
    assert LATENCY_BUCKETS == tuple(sorted(LATENCY_BUCKETS))
    # the 250 ms event-to-model objective is an edge, with steps of at most 50 ms below it
    assert 0.25 in LATENCY_BUCKETS and {0.15, 0.2} <= set(LATENCY_BUCKETS)


def test_unknown_labels_are_rejected():
    m = WorkerMetrics(**CONFIG)
    with pytest.raises(ValueError):
        m.events("upsert", "applied")
    with pytest.raises(ValueError):
        m.events("insert", "weird")
    with pytest.raises(ValueError):
        m.event_to_model("upsert", [0.1])
    with pytest.raises(ValueError):
        m.dead_letter("")


def test_two_instances_do_not_clash():
    a = WorkerMetrics(**CONFIG)
    b = WorkerMetrics(**{**CONFIG, "algorithm": "q"})
    pa, pb = a.serve(0), b.serve(0)
    try:
        assert pa != pb
        a.events("insert", "applied", 5)
        assert value(scrape(pa), "stream_unlearn_events_total", type="insert", outcome="applied") == 5
        assert value(scrape(pb), "stream_unlearn_events_total", type="insert", outcome="applied") == 0
        assert ("stream_unlearn_build_info", frozenset(
            {"version": "0.1.0", "algorithm": "q", "k": "5", "seed": "7", "partitions": "3"}.items()
        )) in samples(scrape(pb))  # fmt: skip
    finally:
        a.close()
        b.close()


def test_serve_twice_fails_and_close_frees_the_port():
    m = WorkerMetrics(**CONFIG)
    port = m.serve(0)
    with pytest.raises(RuntimeError):
        m.serve(0)
    m.close()
    m.close()  # idempotent
    with pytest.raises(OSError):
        scrape(port)
    # the same port can be bound again
    m2 = WorkerMetrics(**CONFIG)
    try:
        assert m2.serve(port) == port
        scrape(port)
    finally:
        m2.close()


def _public(cls) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_null_metrics_has_the_same_interface():
    worker, null = _public(WorkerMetrics), _public(NullMetrics)
    assert set(worker) == set(null)
    for name, sig in worker.items():
        assert list(sig.parameters) == list(null[name].parameters), name
    n = NullMetrics(**CONFIG)
    record_one_of_each(n)
    assert n.serve(0) == 0
    n.close()
    assert NullMetrics().serve(1234) == 0


def test_bulk_histogram_exposes_what_a_prometheus_histogram_would():
    """Batch-binned latencies must read exactly like prometheus_client's own Histogram."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from stream_unlearn.bulk_histogram import BulkHistogram
    from stream_unlearn.metrics import LATENCY_BUCKETS

    values = [0.0, 0.00005, 0.00005001, 0.3, 2.5, 7.0, 500.0, -1.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("lat_seconds", "Latency.", ["type"], LATENCY_BUCKETS, namespace="x", registry=ours)
    bulk.observe_many(values[:3], "insert")
    bulk.observe_many(values[3:], "insert")
    bulk.labels("delete")
    reference = Histogram("lat_seconds", "Latency.", ["type"], namespace="x", registry=theirs, buckets=LATENCY_BUCKETS)
    for v in values:
        reference.labels(type="insert").observe(max(v, 0.0))
    reference.labels(type="delete")

    def lines(registry: CollectorRegistry) -> list[str]:
        return sorted(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)

    assert lines(ours) == lines(theirs)
    with pytest.raises(ValueError):
        bulk.observe_many([float("nan")], "insert")
