"""Generates grafana/dashboards/stream-unlearn.json. After editing, run:

    python grafana/build_dashboard.py

The JSON is committed (Grafana provisions it as is); tests/test_grafana.py
checks that it equals this script's output, so edit here, not there. Every
panel and target uses the ``datasource`` template variable.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "stream-unlearn.json"
UID = "stream-unlearn"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


def hq(q: float, name: str, by: list[str]) -> str:
    """p-quantile of histogram ``name`` over the rate interval, grouped by ``by``."""
    b = ", ".join(["le", *by])
    return f"histogram_quantile({q}, sum by ({b}) (rate({name}_bucket[{RI}])))"


def quantiles(name: str, by: list[str], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[tuple[str, str]]:
    prefix = "".join(f"{{{{{label}}}}} " for label in by)
    return [(hq(q, name, by), f"{prefix}p{round(q * 100)}") for q in qs]


class Layout:
    """Accumulates panels left to right, row by row, on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self._id = 0

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def row(self, title: str) -> None:
        self.panels.append({"type": "row", "title": title, "id": self._next_id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})  # fmt: skip
        self.y += 1

    def newline(self, h: int = 8) -> None:
        self.y += h

    def panel(self, title: str, targets: list[tuple[str, str]], unit: str, x: int, *, w: int = 8, h: int = 8,
              desc: str = "", stack: bool = False, kind: str = "timeseries") -> dict:  # fmt: skip
        p: dict = {
            "type": kind,
            "title": title,
            "id": self._next_id(),
            "datasource": DS,
            "description": desc,
            "gridPos": {"h": h, "w": w, "x": x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
            "options": {},
            "targets": [
                {"datasource": DS, "refId": chr(65 + i), "expr": expr, "legendFormat": legend,
                 "range": True, "instant": False}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "timeseries":
            p["fieldConfig"]["defaults"]["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
                "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            }  # fmt: skip
            p["options"] = {
                "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"],
                           "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }  # fmt: skip
        elif kind == "stat":
            p["options"] = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
                "orientation": "auto",
            }  # fmt: skip
        self.panels.append(p)
        return p


def build() -> dict:
    """The dashboard as a dict."""
    L = Layout()

    L.row("Traffic & errors")
    L.panel("Events / s by type and outcome",
            [(f"sum by (type, outcome) (rate(stream_unlearn_events_total[{RI}]))", "{{type}} {{outcome}}")],
            "ops", 0, w=12, stack=True,
            desc="Kafka records handled per second, one outcome each "
                 "(applied, replaced, duplicate, stale, tombstoned, ignored, dead_letter).")  # fmt: skip
    L.panel("Dead letters / s by reason",
            [(f"sum by (reason) (rate(stream_unlearn_dead_letters_total[{RI}]))", "{{reason}}")],
            "ops", 12, w=6, stack=True, desc="Records that failed validation and went to the dead-letter topic.")  # fmt: skip
    L.panel("Dead-letter ratio",
            [((f'sum(rate(stream_unlearn_events_total{{outcome="dead_letter"}}[{RI}])) '
              f"/ clamp_min(sum(rate(stream_unlearn_events_total[{RI}])), 1e-9)"), "dead letters / events")],
            "percentunit", 18, w=6, kind="stat", desc="Share of handled records sent to the dead-letter topic.")  # fmt: skip
    L.newline()

    L.row("Latency percentiles")
    L.panel("Event time → model (by type)", quantiles("stream_unlearn_event_to_model_seconds", ["type"]), "s", 0,
            w=12, desc="From the event's timestamp to the event being applied to the in-memory model.")  # fmt: skip
    L.panel("Model update duration", quantiles("stream_unlearn_model_update_seconds", []), "s", 12, w=6,
            desc="Wall time to apply one polled batch to the model.")  # fmt: skip
    L.panel("Events per batch",
            [(f"sum(rate(stream_unlearn_batch_events_sum[{RI}])) / sum(rate(stream_unlearn_batch_events_count[{RI}]))",
              "mean"),
             (hq(0.99, "stream_unlearn_batch_events", []), "p99")],
            "short", 18, w=6, desc="Events applied per model update.")  # fmt: skip
    L.newline()

    L.row("Forgetting")
    L.panel("Delete → forgotten (model)", quantiles("stream_unlearn_delete_to_forgotten_seconds", [], (0.5, 0.99)),
            "s", 0, desc="From the delete event's timestamp until the model no longer holds the point.")  # fmt: skip
    L.panel("Delete → persisted (durable snapshot)",
            quantiles("stream_unlearn_delete_to_persisted_seconds", [], (0.5, 0.99)), "s", 8,
            desc="From the delete event's timestamp until a durable snapshot without the point exists "
                 "(older snapshots removed).")  # fmt: skip
    L.panel("Erasure receipts / s and tombstones",
            [(f"sum(rate(stream_unlearn_receipts_total[{RI}]))", "receipts/s"),
             ("sum(stream_unlearn_tombstones)", "tombstones")],
            "short", 16, desc="Receipts published to the receipts topic; deleted ids remembered so that "
                              "late inserts stay forgotten.")  # fmt: skip
    L.newline()

    L.row("Model")
    L.panel("Points held", [("sum by (instance) (stream_unlearn_points)", "{{instance}}")], "short", 0, w=6)
    L.panel("Model loss", [("stream_unlearn_model_loss", "{{instance}}")], "short", 6, w=6,
            desc="k-means loss (sum of squared distances to the nearest centroid).")  # fmt: skip
    L.panel("Certificate pass rate",
            [((f'sum(rate(stream_unlearn_certificates_total{{result="passed"}}[{RI}])) '
              f"/ sum(rate(stream_unlearn_certificates_total[{RI}]))"), "passed / (passed + failed)")],
            "percentunit", 12, w=6,
            desc="Q-k-means deletion certificates that passed (no refit needed). Empty for DC-k-means.")  # fmt: skip
    L.panel("Refits / s", [(f"sum(rate(stream_unlearn_refits_total[{RI}]))", "refits/s")], "ops", 18, w=6)
    L.newline()
    info = L.panel("Worker",
                   [("stream_unlearn_build_info",
                     "{{algorithm}} k={{k}} seed={{seed}} partitions={{partitions}} v{{version}}")],
                   "none", 0, w=24, h=4, kind="stat", desc="Worker version and model configuration.")  # fmt: skip
    info["options"]["textMode"] = "name"
    info["options"]["graphMode"] = "none"
    L.newline(4)

    L.row("Snapshots")
    L.panel("Snapshot duration", quantiles("stream_unlearn_snapshot_duration_seconds", [], (0.5, 0.99)), "s", 0, w=6)
    L.panel("Snapshot size", [("stream_unlearn_snapshot_size_bytes", "{{instance}}")], "bytes", 6, w=6)
    L.panel("Time since last successful snapshot",
            [("time() - (stream_unlearn_snapshot_last_success_timestamp_seconds > 0)", "{{instance}}")],
            "s", 12, w=6, kind="stat")  # fmt: skip
    L.panel("Snapshots and failures / s",
            [(f"sum(rate(stream_unlearn_snapshots_total[{RI}]))", "snapshots/s"),
             (f"sum by (reason) (rate(stream_unlearn_snapshot_failures_total[{RI}]))", "failed: {{reason}}")],
            "ops", 18, w=6)  # fmt: skip
    L.newline()

    L.row("Lag")
    L.panel("Consumer lag per partition",
            [("sum by (topic, partition) (stream_unlearn_consumer_lag_records)", "{{topic}}/{{partition}}")],
            "short", 0, w=18)  # fmt: skip
    L.panel("Total lag", [("sum(stream_unlearn_consumer_lag_records)", "records")], "short", 18, w=6, kind="stat")
    L.newline()

    return {
        "uid": UID,
        "title": "stream-unlearn worker",
        "description": "Exact k-means unlearning on Kafka: traffic, latency, forgetting, model, snapshots, lag.",
        "tags": ["stream-unlearn", "kafka", "unlearning"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [{
            "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False, "options": [],
        }]},
        "panels": L.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
