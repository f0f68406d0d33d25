"""``stream-unlearn demo``: the paper's Gaussian mixture, streamed and forgotten exactly.

Starts an embedded Kafka-protocol broker, creates the topics, runs a real
worker process (metrics served on a free port), streams inserts with a
share of deletes, including the awkward cases the worker must get right:

* deletes sent BEFORE their insert, whose insert then arrives late with an
  older event time (dropped by the tombstone);
* re-inserts of deleted ids with a new vector and a newer event time;
* redelivered inserts (at-least-once producers) and late redeliveries of
  inserts that were deleted meanwhile;
* a handful of malformed records (they must end up in the dead-letter topic).

Then it stops the worker with SIGTERM (final snapshot, receipts) and
reports throughput, latency, deletes forgotten, receipts, dead letters and
the offline verify of the final snapshot. Exit status 0 only if verify
passed and every count adds up.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

__all__ = ["add_demo_arguments", "gaussian_mixture", "main_demo", "plan_stream"]

INSERTS, DELETES = "unlearn.inserts", "unlearn.deletes"
DEAD_LETTER, RECEIPTS, MODEL = "unlearn.dead-letter", "unlearn.receipts", "unlearn.model"
_CHUNK = 2000
#: Events/s the demo offers by default: below what the worker applies on a 2-core machine, so that a
#: delete reaches the worker after its insert (an unpaced producer outruns the worker's reading of
#: the insert topic, and every delete then overtakes its insert) and latencies are not queueing.
DEFAULT_RATE = 10_000.0


def gaussian_mixture(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's synthetic set: k spherical Gaussians with well-separated means."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 5.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    return centres[labels] + rng.normal(size=(n, d)), labels


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the demo subcommand."""
    parser.add_argument("--n", type=int, default=100_000, help="points (default %(default)s)")
    parser.add_argument("--d", type=int, default=25, help="dimension (default %(default)s)")
    parser.add_argument("--k", type=int, default=5, help="clusters (default %(default)s)")
    parser.add_argument("--delete-fraction", type=float, default=0.1, help="share of points deleted (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the input topics (default %(default)s)")
    parser.add_argument("--algorithm", choices=("dc", "q"), default="dc", help="model (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data and model seed (default %(default)s)")
    parser.add_argument("--snapshot-interval", type=float, default=2.0, help="seconds (default %(default)s)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help="events/s the demo producer offers, 0 = as fast as it can (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=0, help="worker metrics port (default: a free one)")
    parser.add_argument("--snapshot-dir", help="keep snapshots here (default: a temporary directory, removed if the demo passes)")


# --------------------------------------------------------------------------
# the scenario


@dataclass
class Stream:
    """What the demo sends, in order, and what the worker must end up with."""

    #: ("insert", ids, X, ts) | ("delete", ids, ts) | ("raw", topic, key, value); see plan_stream

    steps: list[tuple] = field(default_factory=list)
    survivors: dict[str, np.ndarray] = field(default_factory=dict)
    n_records: int = 0
    n_valid_deletes: int = 0
    n_malformed: int = 0


def malformed_records(d: int) -> list[tuple[str, bytes | None, bytes | None]]:
    """(topic, key, value) of records the worker must dead-letter, one per kind of fault."""
    pack = lambda obj: msgpack.packb(obj, use_bin_type=True)
    good = [0.5] * d
    return [
        (INSERTS, b"bad-1", b"\xc1\xff not msgpack"),
        (INSERTS, b"bad-2", b""),
        (INSERTS, b"bad-3", pack([1, 2, 3])),
        (INSERTS, b"bad-4", pack({"vec": good})),
        (INSERTS, b"bad-5", pack({"id": "bad-5"})),
        (INSERTS, b"bad-6", pack({"id": 1.5, "vec": good})),
        (INSERTS, b"bad-7", pack({"id": "bad-7", "vec": [math.nan] * d})),
        (INSERTS, b"bad-8", pack({"id": "bad-8", "vec": good + [1.0]})),
        (INSERTS, None, pack({"id": "x" * 300, "vec": good})),
        (INSERTS, b"bad-10", pack({"id": "bad-10", "vec": good, "ts": "yesterday"})),
        (DELETES, b"bad-11", pack({"ts": 1.0})),
        (DELETES, b"other-key", pack({"id": "bad-12"})),
    ]


def plan_stream(n: int, d: int, k: int, delete_fraction: float, seed: int, t0: float) -> Stream:
    """Plan the records of the demo and the survivors the worker must hold.

    Event times (``ts`` of a step): ``None`` lets the Kafka record timestamp
    stand in (so latency is measured from the send); ``"now"`` is the send
    time; ``"later"`` is 10 ms after the previous step's time (a re-insert
    right after its delete); a float is an explicit, late event time.
    """
    X, _ = gaussian_mixture(n, d, k, seed)
    # Fixed-width ids: see the report on hashing.id_keys (keys depended on the batch's longest id).
    ids = [f"user-{i}" for i in range(n)]
    rng = np.random.default_rng(seed + 1)
    chosen = rng.permutation(n)
    n_del = int(n * delete_fraction)
    n_early, n_re = n_del // 10, n_del // 10
    early = chosen[:n_early]
    reinsert = chosen[n_early : n_early + n_re]
    normal = chosen[n_early + n_re : n_del]
    redeliver = set(chosen[n_del : n_del + max(1, n // 100)].tolist()) | set(normal[: n // 200].tolist())
    early_set, re_set = set(early.tolist()), set(reinsert.tolist())
    s = Stream()

    # Deletes that overtake their inserts: sent first, at event time t0.
    s.steps.append(("delete", [ids[i] for i in early], t0))
    delete_at: dict[int, list[int]] = {}
    for i in np.concatenate([normal, reinsert]).tolist():
        delete_at.setdefault(i // _CHUNK + 1, []).append(i)
    n_chunks = -(-n // _CHUNK)
    for c in range(n_chunks + 1):
        rows = range(c * _CHUNK, min(n, (c + 1) * _CHUNK))
        plain = [i for i in rows if i not in early_set and i not in redeliver]
        if plain:
            s.steps.append(("insert", [ids[i] for i in plain], X[plain], None))
        twice = [i for i in rows if i in redeliver]
        if twice:  # sent with an explicit time so that a redelivery can repeat it exactly
            s.steps.append(("insert", [ids[i] for i in twice], X[twice], t0))
        late = [i for i in rows if i in early_set]
        if late:  # the overtaken inserts, with an event time before their delete
            s.steps.append(("insert", [ids[i] for i in late], X[late], t0 - 1.0))
        victims = sorted(delete_at.get(c, []))
        if victims:  # deletes of the previous chunk
            s.steps.append(("delete", [ids[i] for i in victims], "now"))
            back = [i for i in victims if i in re_set]
            if back:
                s.steps.append(("insert", [ids[i] for i in back], X[back] + 0.25, "later"))
    # At-least-once redelivery of inserts: duplicates if still held as sent,
    # stale if deleted (or re-inserted) since; never resurrected.
    again = sorted(redeliver)
    s.steps.append(("insert", [ids[i] for i in again], X[again], t0))
    for topic, key, value in malformed_records(d):
        s.steps.append(("raw", topic, key, value))

    gone = set(normal.tolist()) | early_set
    for i in range(n):
        if i not in gone:
            vec = X[i] + 0.25 if i in re_set else X[i]
            s.survivors[ids[i]] = vec.astype("<f4").astype(np.float64)  # the float32 wire format
    for step in s.steps:
        s.n_records += 1 if step[0] == "raw" else len(step[1])
    s.n_valid_deletes = sum(len(step[1]) for step in s.steps if step[0] == "delete")
    s.n_malformed = len(malformed_records(d))
    return s


# --------------------------------------------------------------------------
# sending


class Sender(threading.Thread):
    """Sends a :class:`Stream` in a background thread, counting records."""

    def __init__(self, bootstrap: str, stream: Stream, rate: float = 0.0) -> None:
        super().__init__(name="demo-sender", daemon=True)
        from kafka import KafkaProducer

        from .producer import EventProducer

        self.stream = stream
        self.rate = rate  # events/s; 0 = unpaced
        self.sent = 0
        self.error: BaseException | None = None
        self.started_at = self.finished_at = 0.0
        self._events = EventProducer(bootstrap, linger_ms=20, batch_size=512 * 1024)
        self._raw = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def run(self) -> None:
        self.started_at = last = time.time()
        try:
            for step in self.stream.steps:
                if step[0] in ("insert", "delete"):
                    ts = step[-1]
                    if ts == "now":
                        ts = last = time.time()
                    elif ts == "later":
                        ts = last = last + 0.01
                if step[0] == "insert":
                    ids, X = step[1], step[2]
                    for lo in range(0, len(ids), 500):
                        self.sent += self._events.insert(ids[lo : lo + 500], X[lo : lo + 500], ts)
                        self._pace()
                elif step[0] == "delete":
                    self.sent += self._events.delete(step[1], ts)
                    self._pace()
                else:
                    _, topic, key, value = step
                    self._raw.send(topic, key=key, value=value)
                    self.sent += 1
                    self._raw.flush()
            self._events.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            self.finished_at = time.time()
            self._events.close()
            self._raw.close()

    def _pace(self) -> None:
        """Sleep until the events sent so far are due at ``rate``."""
        if self.rate > 0:
            time.sleep(max(0.0, self.started_at + self.sent / self.rate - time.time()))


# --------------------------------------------------------------------------
# reading the worker


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of the worker's /metrics: name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def bucket_counts(samples: dict, name: str, **labels: str) -> dict[float, float]:
    """Cumulative counts per upper bound ``le`` of histogram ``name``, summed over matching series."""
    out: dict[float, float] = {}
    for lab, v in samples.get(f"{name}_bucket", []):
        if all(lab.get(k) == x for k, x in labels.items()):
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def bucket_quantile(cum: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    items = sorted(cum.items())
    if not items or items[-1][1] <= 0:
        return math.nan
    rank = q * items[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in items:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def histogram_quantile(samples: dict, name: str, q: float, **labels: str) -> float:
    """Prometheus-style quantile of histogram ``name`` in scraped ``samples``."""
    return bucket_quantile(bucket_counts(samples, name, **labels), q)


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float) -> list:
    """All records of ``topic`` (waits for at least ``expect`` of them)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [0])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=300)
            for batch in got.values():
                records.extend(batch)
            if len(records) >= expect and not got:
                break
        return records
    finally:
        consumer.close()


def _bar(done: int, goal: int, sent: int, rate: float, width: int = 30) -> str:
    frac = min(1.0, done / goal) if goal else 1.0
    fill = int(frac * width)
    return (f"\r  [{'#' * fill}{'.' * (width - fill)}] {frac:6.1%}  consumed {done:,}/{goal:,}"
            f"  sent {sent:,}  {rate:,.0f} ev/s ")


# --------------------------------------------------------------------------
# the command


def main_demo(args: argparse.Namespace) -> int:
    """Run the demo end to end; 0 only if verify passed and every count adds up."""
    from .broker import EmbeddedBroker, ensure_topics, free_port

    if args.n < 100 or args.d < 1 or args.k < 1 or not 0 <= args.delete_fraction < 1 or not 0 <= args.rate < math.inf:
        print("stream-unlearn demo: need --n >= 100, --d >= 1, --k >= 1, 0 <= --delete-fraction < 1, "
              "0 <= --rate < inf", file=sys.stderr)
        return 2
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="stream-unlearn-demo-"))
    snap_dir = Path(args.snapshot_dir) if args.snapshot_dir else tmp / "snapshots"
    worker: subprocess.Popen[bytes] | None = None
    passed = False
    try:
        with EmbeddedBroker(port=0) as broker:
            bootstrap = broker.bootstrap
            print(f"broker        {bootstrap} (Tansu, in memory)")
            ensure_topics(bootstrap, {INSERTS: args.partitions, DELETES: args.partitions,
                                      DEAD_LETTER: 1, RECEIPTS: 1, MODEL: 1})
            port = args.metrics_port or free_port()
            log_path = tmp / "worker.log"
            worker = _start_worker(args, bootstrap, snap_dir, port, log_path)
            print(f"worker        pid {worker.pid}, {args.algorithm} k={args.k}, snapshots in {snap_dir}")
            print(f"metrics       http://127.0.0.1:{port}/metrics   (log: {log_path})")
            if not _wait_ready(worker, port, 2 * args.partitions):
                return _fail(worker, log_path, "the worker did not take its partitions within 120 s")
            stream = plan_stream(args.n, args.d, args.k, args.delete_fraction, args.seed, t0=time.time())
            print(f"stream        {args.n:,} points x {args.d} dims, {stream.n_valid_deletes:,} deletes, "
                  f"{stream.n_records:,} records in all ({stream.n_malformed} malformed)")
            sender = Sender(bootstrap, stream, args.rate)
            sender.start()
            samples, done_at = _follow(worker, sender, port, stream.n_records)
            if samples is None:
                return _fail(worker, log_path, "the worker did not consume every record")
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                return _fail(worker, log_path, "the worker did not stop within 60 s of SIGTERM")
            if code != 0:
                return _fail(worker, log_path, f"the worker exited with status {code}")
            receipts = read_topic(bootstrap, RECEIPTS, stream.n_valid_deletes, timeout=30)
            dead = read_topic(bootstrap, DEAD_LETTER, stream.n_malformed, timeout=10)
            result = _report(args, stream, sender, samples, done_at, receipts, dead, snap_dir, started)
            passed = result == 0
            return result
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        if passed:  # the worker log (and the default snapshot dir) go; a failed run keeps them to look at
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"stream-unlearn demo: kept the worker log (and any default snapshots) in {tmp}", file=sys.stderr)


def _start_worker(args: argparse.Namespace, bootstrap: str, snap_dir: Path, port: int,
                  log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "stream_unlearn.cli", "worker",
           "--bootstrap-servers", bootstrap, "--algorithm", args.algorithm, "--k", str(args.k),
           "--seed", str(args.seed), "--dim", str(args.d), "--snapshot-dir", str(snap_dir),
           "--snapshot-interval", str(args.snapshot_interval), "--metrics-port", str(port),
           "--partitions", str(args.partitions), "--log-level", "INFO"]
    # q is one global model: a single worker reading every partition; dc joins a consumer group
    # (a short session timeout, as group joins on the embedded broker take about half of it).
    cmd += ["--no-group"] if args.algorithm == "q" else ["--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_UNLEARN_")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_ready(worker: subprocess.Popen[bytes], port: int, n_input_partitions: int, timeout: float = 120.0) -> bool:
    """Wait until the worker reports lag for every input partition: it has taken them all.

    Events sent before that would queue while the worker loads its kernels
    and joins the group (~4 s), and the report would show that queueing as
    event-to-model latency.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            if len(scrape(port).get("stream_unlearn_consumer_lag_records", [])) >= n_input_partitions:
                return True
        except OSError:
            pass  # the endpoint is not up yet
        time.sleep(0.1)
    return False


def _follow(worker: subprocess.Popen[bytes], sender: Sender, port: int, goal: int,
            timeout: float = 600.0) -> tuple[dict | None, float]:
    """Draw the progress bar until the worker has handled ``goal`` records."""
    deadline = time.monotonic() + timeout
    samples: dict = {}
    done = 0
    tty = sys.stderr.isatty()
    last_line = 0.0
    while time.monotonic() < deadline:
        if worker.poll() is not None or sender.error is not None:
            break
        try:
            samples = scrape(port)
            done = int(total(samples, "stream_unlearn_events_total"))
        except OSError:
            pass  # the worker is still starting
        now = time.time()
        rate = done / max(now - sender.started_at, 1e-9) if sender.started_at else 0.0
        if tty or now - last_line >= 5 or done >= goal:
            sys.stderr.write(_bar(done, goal, sender.sent, rate) + ("" if tty else "\n"))
            sys.stderr.flush()
            last_line = now
        if done >= goal and not sender.is_alive():
            sys.stderr.write("\n")
            return samples, now
        time.sleep(0.25)
    sys.stderr.write("\n")
    if sender.error is not None:
        print(f"stream-unlearn demo: sending failed: {sender.error!r}", file=sys.stderr)
    return None, time.time()


def _fail(worker: subprocess.Popen[bytes], log_path: Path, why: str) -> int:
    print(f"stream-unlearn demo: FAILED: {why}", file=sys.stderr)
    if worker.poll() is None:
        worker.kill()
        worker.wait()
    try:
        tail = log_path.read_text(errors="replace")[-3000:]
        print(f"--- worker log tail ---\n{tail}", file=sys.stderr)
    except OSError:
        pass
    return 1


def _report(args: argparse.Namespace, stream: Stream, sender: Sender, samples: dict, done_at: float,
            receipts: list, dead: list, snap_dir: Path, started: float) -> int:
    from .inspect_cmd import NoSnapshot, load_model_for_reading
    from .receipts import decode_receipt

    elapsed = done_at - sender.started_at
    outcomes = Counter()
    for labels, value in samples.get("stream_unlearn_events_total", []):
        if value:
            outcomes[f"{labels['type']}/{labels['outcome']}"] = int(value)
    unique_receipts = {(r.id, r.deleted_ts) for r in (decode_receipt(rec.value) for rec in receipts)}
    reasons = Counter(dict(rec.headers).get("reason", b"?").decode() for rec in dead)
    try:
        model, snap_name, _ = load_model_for_reading(snap_dir)
        verify_started = time.perf_counter()
        verified = model.verify()
        verify_seconds = time.perf_counter() - verify_started
        held_ids, held_X, _ = model.held()
    except NoSnapshot as exc:
        print(f"stream-unlearn demo: FAILED: no final snapshot: {exc}", file=sys.stderr)
        return 1
    order = np.argsort(held_ids)
    same_set = sorted(held_ids) == sorted(stream.survivors) and all(
        np.array_equal(held_X[i], stream.survivors[held_ids[i]]) for i in order)

    checks = {
        "every record handled": total(samples, "stream_unlearn_events_total") == stream.n_records,
        "dead letters = malformed records": len(dead) == stream.n_malformed
        and total(samples, "stream_unlearn_dead_letters_total") == stream.n_malformed,
        "receipts = deletes": len(unique_receipts) == stream.n_valid_deletes,
        "points held = survivors": model.n_points_ == len(stream.survivors),
        "held (id, vector) set = expected": same_set,
        "verify: bit-identical refit": verified,
    }
    q = lambda name, p, **lab: histogram_quantile(samples, name, p, **lab) * 1e3
    print()
    print("report")
    print(f"  throughput        {stream.n_records / elapsed:,.0f} events/s end to end "
          f"({stream.n_records:,} records in {elapsed:.1f}s; producer alone {sender.sent / max(sender.finished_at - sender.started_at, 1e-9):,.0f}/s"
          + (f", paced at --rate {args.rate:,.0f}; --rate 0 sends as fast as it can)" if args.rate > 0 else ")"))
    print(f"  event-to-model    insert p50 {q('stream_unlearn_event_to_model_seconds', 0.5, type='insert'):.0f} ms,"
          f" p99 {q('stream_unlearn_event_to_model_seconds', 0.99, type='insert'):.0f} ms;"
          f" delete p50 {q('stream_unlearn_event_to_model_seconds', 0.5, type='delete'):.0f} ms,"
          f" p99 {q('stream_unlearn_event_to_model_seconds', 0.99, type='delete'):.0f} ms (histogram buckets"
          + (f"; offered {args.rate:,.0f} events/s; the late and redelivered events count from their old event"
             " times)" if args.rate > 0 else
             "; includes time queued: the producer sends as fast as it can, faster than the worker applies)"))
    print(f"  deletes forgotten {outcomes.get('delete/applied', 0):,} held points removed, "
          f"{outcomes.get('delete/tombstoned', 0):,} tombstones for deletes that overtook their insert;"
          f" delete-to-forgotten p99 {q('stream_unlearn_delete_to_forgotten_seconds', 0.99):.0f} ms")
    print("  outcomes          " + ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())))
    print(f"  receipts          {len(receipts):,} received ({len(unique_receipts):,} distinct) for "
          f"{stream.n_valid_deletes:,} deletes")
    print(f"  dead letters      {len(dead)}: " + ", ".join(f"{r} {c}" for r, c in sorted(reasons.items())))
    print(f"  final snapshot    {snap_name}: {model.n_points_:,} points "
          f"(expected {len(stream.survivors):,}), centroids {model.centroids_.shape}")
    print(f"  verify            {'OK: bit-identical to a fresh fit on the survivors' if verified else 'FAILED'}"
          f" ({verify_seconds:.2f}s)")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'}  {name}")
    print(f"  total time        {time.time() - started:.1f}s")
    return 0 if all(checks.values()) else 1
