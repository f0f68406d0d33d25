"""What Prometheus metrics cost the worker: the same stream with WorkerMetrics vs NullMetrics (issue 4).

The insert and delete topics (3 partitions each) are pre-filled once with
``--n`` points of the paper's Gaussian mixture (d=25, k=5) and deletes of
10% of them. Then a :class:`~stream_unlearn.worker.Worker` (in a thread of
this process, fresh snapshot dir and consumer group each time) consumes all
of it from the beginning, ``--repeats`` times with each kind of metrics,
interleaved (real, null, null, real, real, null, ...) so that drift of the
shared machine cancels:

* ``WorkerMetrics``: the real registry, served on a local port and scraped
  every ``--scrape-interval`` s during the run (1 s: 15x more often than
  Prometheus's default), so exposition is paid too;
* ``NullMetrics``: same interface, every method a no-op.

Throughput = records / seconds from ``worker.ready`` until its
``records_handled`` equals the record count (snapshot interval 3600 s, so
no snapshot lands in the timed part). Reports the median of each and the
overhead = 1 - median(real) / median(null). Target: < 5%. Also the CPU
seconds of this process per record (``time.process_time()``: the worker
thread, its Kafka client and metrics threads), far less sensitive to other
load on the shared machine than wall time, and its overhead.

    .venv/bin/python bench/metrics_overhead.py --quick     # n=20k, 3+3 runs (~20 s)
    .venv/bin/python bench/metrics_overhead.py             # n=100k, 5+5 runs (~2 min)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from _common import environment, table, verdict
from stream import Topics, prefill, run_worker_thread, worker_config

from stream_unlearn import __version__
from stream_unlearn.broker import EmbeddedBroker, free_port
from stream_unlearn.metrics import NullMetrics, WorkerMetrics

TARGET = 0.05


def one_run(bootstrap: str, topics: Topics, expect: int, kind: str, algorithm: str, scrape_interval: float,
            tmp: Path) -> dict:
    snap = tempfile.mkdtemp(prefix="snap-", dir=tmp)
    config = worker_config(bootstrap, topics.outputs("mo"), snap, algorithm=algorithm, snapshot_interval=3600.0)
    scrapes = [0]
    if kind == "real":
        metrics = WorkerMetrics(algorithm=algorithm, k=config.k, seed=config.seed, version=__version__,
                                partitions=config.partitions)
        port = metrics.serve(free_port())
        last = [time.monotonic()]

        def during() -> None:
            if time.monotonic() - last[0] >= scrape_interval:
                last[0] = time.monotonic()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    resp.read()
                scrapes[0] += 1
    else:
        metrics, during = NullMetrics(), None
    try:
        r = run_worker_thread(config, expect, metrics=metrics, during=during)
    finally:
        metrics.close()
        shutil.rmtree(snap, ignore_errors=True)
    r["kind"], r["scrapes"] = kind, scrapes[0]
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="points (default 100k; quick 20k)")
    p.add_argument("--algorithm", default="dc", choices=("dc", "q"), help="model (default %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each kind (default 5; quick 3)")
    p.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="n=20k")
    args = p.parse_args(argv)
    n = args.n or (20_000 if args.quick else 100_000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    print(f"bench/metrics_overhead.py: {environment()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    rows: list[dict] = []
    try:
        with EmbeddedBroker(port=0) as broker:
            topics = Topics.fresh("mo")
            topics.create(broker.bootstrap)
            pre = prefill(broker.bootstrap, topics, n)
            print(f"pre-filled {pre['records']:,} records ({n:,} inserts, {pre['deletes']:,} deletes); "
                  f"worker {args.algorithm}, {args.repeats}+{args.repeats} runs interleaved", flush=True)
            # warm-up run (imports, broker caches), not counted
            one_run(broker.bootstrap, topics, pre["records"], "null", args.algorithm, args.scrape_interval, tmp)
            order = []
            for i in range(args.repeats):
                order += ["real", "null"] if i % 2 == 0 else ["null", "real"]
            for i, kind in enumerate(order, 1):
                r = one_run(broker.bootstrap, topics, pre["records"], kind, args.algorithm, args.scrape_interval, tmp)
                r["points_ok"] = r["points"] == pre["survivors"]
                r["run"] = i
                rows.append(r)
                print(f"  run {i}: {kind:4s} {r['rate']:,.0f} records/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    real = [r["rate"] for r in rows if r["kind"] == "real"]
    null = [r["rate"] for r in rows if r["kind"] == "null"]
    med_real, med_null = float(np.median(real)), float(np.median(null))
    overhead = 1.0 - med_real / med_null
    # CPU seconds of this process (worker thread, its producer and metrics threads) per record:
    # far less sensitive than wall time to other load on the shared machine
    for r in rows:
        r["cpu_us"] = 1e6 * r["cpu"] / r["records"]
    cpu_real = float(np.median([r["cpu_us"] for r in rows if r["kind"] == "real"]))
    cpu_null = float(np.median([r["cpu_us"] for r in rows if r["kind"] == "null"]))
    cpu_overhead = cpu_real / cpu_null - 1.0
    # pairwise, adjacent runs: a second view that is less sensitive to drift
    pairs = [1.0 - rows[i]["rate"] / rows[i + 1]["rate"] if rows[i]["kind"] == "real"
             else 1.0 - rows[i + 1]["rate"] / rows[i]["rate"] for i in range(0, len(rows) - 1, 2)]
    print()
    print(f"Metrics overhead, n={n:,} (+{pre['deletes']:,} deletes, {pre['records']:,} records), worker "
          f"{args.algorithm}; WorkerMetrics served and scraped every {args.scrape_interval:g} s vs NullMetrics")
    print(table(rows, [("run", "run"), ("kind", "metrics"), ("records", "records"), ("seconds", "s"),
                       ("rate", "records/s"), ("cpu", "CPU s"), ("cpu_us", "CPU us/record"), ("scrapes", "scrapes"), ("points_ok", "points = survivors")]))
    summary = [{"what": "median records/s, WorkerMetrics", "value": med_real},
               {"what": "median records/s, NullMetrics", "value": med_null},
               {"what": "overhead % (1 - real/null, medians)", "value": 100 * overhead,
                "verdict": verdict(overhead < TARGET)},
               {"what": "median CPU us/record, WorkerMetrics", "value": cpu_real},
               {"what": "median CPU us/record, NullMetrics", "value": cpu_null},
               {"what": "CPU overhead % (real/null - 1, medians)", "value": 100 * cpu_overhead,
                "verdict": verdict(cpu_overhead < TARGET)},
               {"what": "overhead % per adjacent pair", "value": ", ".join(f"{100 * x:+.1f}" for x in pairs)}]
    print(table(summary, [("what", "what"), ("value", "value"), ("verdict", f"target < {100 * TARGET:g}%")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
