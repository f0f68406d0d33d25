"""Static checks of the Grafana dashboard and provisioning under grafana/.

The live counterpart (every expression evaluated by a real Prometheus that
scrapes a real worker) is tests/test_prometheus_live.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import CONFIG, record_one_of_each

from stream_unlearn.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "stream-unlearn.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "provider.yaml"
COMPOSE = ROOT / "docker" / "compose.yaml"

DASHBOARD_UID = "stream-unlearn"
DATASOURCE_UID = "stream-unlearn-prometheus"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
METRIC_RE = re.compile(r"\b(stream_unlearn_[a-z0-9_]+|process_[a-z0-9_]+|python_[a-z0-9_]+)\b")


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dashboard: dict) -> Iterator[dict]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows hold their panels


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """[(panel title, PromQL expression)] of every target of every panel."""
    return [(p["title"], t["expr"]) for p in all_panels(dashboard) for t in p.get("targets", [])]


def test_dashboard_is_valid_json_with_a_stable_uid():
    d = load_dashboard()
    assert d["uid"] == DASHBOARD_UID
    assert d["title"]
    assert isinstance(d["schemaVersion"], int)
    assert "id" not in d or d["id"] is None  # provisioned dashboards must not pin a database id
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


def test_datasource_variable_is_used_by_every_panel():
    d = load_dashboard()
    (var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    text = DASHBOARD.read_text(encoding="utf-8")
    assert DATASOURCE_UID not in text, "panels must use ${datasource}, not a fixed uid"
    data_panels = [p for p in all_panels(d) if p["type"] != "row"]
    assert data_panels
    for p in data_panels:
        assert p["datasource"] == DS_REF, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("datasource", DS_REF) == DS_REF, p["title"]
            assert t["expr"].strip(), p["title"]


def test_rows_cover_the_design():
    d = load_dashboard()
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == ["Traffic & errors", "Latency percentiles", "Forgetting", "Model", "Snapshots", "Lag"]
    exprs = " ".join(e for _, e in expressions(d))
    for needle in (
        "histogram_quantile(0.99, sum by (le, type) (rate(stream_unlearn_event_to_model_seconds_bucket[$__rate_interval])))",
        "histogram_quantile(0.5, sum by (le) (rate(stream_unlearn_model_update_seconds_bucket[$__rate_interval])))",
        "histogram_quantile(0.99, sum by (le) (rate(stream_unlearn_delete_to_forgotten_seconds_bucket[$__rate_interval])))",
        "histogram_quantile(0.99, sum by (le) (rate(stream_unlearn_delete_to_persisted_seconds_bucket[$__rate_interval])))",
        "sum by (type, outcome) (rate(stream_unlearn_events_total[$__rate_interval]))",
        "sum by (reason) (rate(stream_unlearn_dead_letters_total[$__rate_interval]))",
        'stream_unlearn_certificates_total{result="passed"}',
        "stream_unlearn_consumer_lag_records",
        "stream_unlearn_snapshot_last_success_timestamp_seconds",
    ):
        assert needle in exprs, needle


def test_panels_fit_the_grid():
    for p in all_panels(load_dashboard()):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        assert g["h"] > 0


def exposed_sample_names() -> set[str]:
    m = WorkerMetrics(**CONFIG)
    record_one_of_each(m)
    text = generate_latest(m.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_metric_in_the_dashboard_is_exposed():
    exposed = exposed_sample_names()
    referenced = {name for _, e in expressions(load_dashboard()) for name in METRIC_RE.findall(e)}
    assert referenced, "no metric names found in the dashboard"
    missing = referenced - exposed
    assert not missing, f"dashboard references metrics the worker does not expose: {sorted(missing)}"


def test_every_worker_metric_is_on_the_dashboard():
    exposed = {n for n in exposed_sample_names() if n.startswith("stream_unlearn_") and not n.endswith("_created")}
    families = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in exposed}
    text = " ".join(e for _, e in expressions(load_dashboard()))
    absent = sorted(f for f in families if f not in text)
    assert not absent, f"metrics with no panel: {absent}"


def test_expressions_are_balanced():
    for title, e in expressions(load_dashboard()):
        for o, c in ("()", "[]", "{}"):
            assert e.count(o) == e.count(c), (title, e)
        assert "$__rate_interval" in e or "rate(" not in e, (title, e)


def test_provisioning_yaml():
    ds = yaml.safe_load(DATASOURCES.read_text())
    assert ds["apiVersion"] == 1
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus"
    assert prom["uid"] == DATASOURCE_UID
    assert prom["url"] == "http://prometheus:9090"
    assert prom["access"] == "proxy"

    prov = yaml.safe_load(PROVIDER.read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_provisioning_paths_agree_with_compose_mounts():
    if not COMPOSE.exists():
        pytest.skip("docker/compose.yaml not written yet")
    compose = yaml.safe_load(COMPOSE.read_text())
    grafana = compose["services"]["grafana"]
    mounts = {}
    for v in grafana["volumes"]:
        src, dst, *_ = v.split(":")
        mounts[dst] = (COMPOSE.parent / src).resolve()
    assert mounts["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()
    provider = yaml.safe_load(PROVIDER.read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent.resolve()
    # the datasource URL names the compose service and its port
    ds = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    # the datasource scrape interval hint matches Prometheus' scrape interval
    prom_cfg = yaml.safe_load((COMPOSE.parent / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == prom_cfg["global"]["scrape_interval"]


def test_dashboard_json_is_generated_by_build_dashboard():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OUT == DASHBOARD
    assert DASHBOARD.read_text(encoding="utf-8") == module.render(), (
        "grafana/dashboards/stream-unlearn.json is stale: run `python grafana/build_dashboard.py`"
    )
