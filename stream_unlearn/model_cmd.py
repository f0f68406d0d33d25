"""The summaries topic, its reader, and ``stream-unlearn model``.

Each worker publishes the subtree root of every partition it owns to the
summaries topic (default ``unlearn.summaries``), keyed by the partition
number; on real Kafka the topic is compacted (``cleanup.policy=compact``),
so it keeps the latest record per partition. A reader reads the topic from
the beginning (``assign()``, no consumer group) and keeps, per partition,
the summary with the highest offsets pair; that is also right where there
is no compaction (Tansu) and when an old owner's last summary arrives after
a new owner's first. :func:`stream_unlearn.summaries.merge` of the kept
summaries is the global model, bit-identical to one DCKMeans holding every
partition's points.

``stream-unlearn model --bootstrap-servers HOST:PORT --json`` prints it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from .config import TOPIC_SUMMARIES
from .summaries import GlobalModel, PartitionSummary, SummaryError, decode_summary, newer

__all__ = [
    "SUMMARIES_TOPIC",
    "SummaryReader",
    "add_model_arguments",
    "ensure_summaries_topic",
    "global_model_json",
    "main_model",
    "read_global_model",
]

log = logging.getLogger(__name__)

SUMMARIES_TOPIC = TOPIC_SUMMARIES
#: Topic configuration of the summaries topic on brokers that honour it.
SUMMARIES_TOPIC_CONFIGS = {"cleanup.policy": "compact"}
_TOPIC_ALREADY_EXISTS = 36


def ensure_summaries_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> None:
    """Create the summaries topic (one partition, compacted) unless it exists."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from .broker import ensure_topics

    admin = KafkaAdminClient(bootstrap_servers=[s.strip() for s in bootstrap.split(",") if s.strip()],
                             request_timeout_ms=int(timeout * 1000), client_id="stream-unlearn-admin")
    try:
        if topic not in set(admin.list_topics()):
            admin.create_topics([NewTopic(topic, 1, 1, topic_configs=dict(SUMMARIES_TOPIC_CONFIGS))],
                                timeout_ms=int(timeout * 1000), raise_errors=False)
    finally:
        admin.close()
    ensure_topics(bootstrap, {topic: 1}, timeout=timeout)  # waits until it is in the metadata


class SummaryReader:
    """Follows the summaries topic from its beginning; keeps the latest summary per partition.

    ``params`` / ``n_partitions``: when given, summaries of another
    configuration (e.g. an earlier run on the same topic) are ignored.
    """

    def __init__(self, bootstrap: str | list[str], topic: str, *, params: dict[str, Any] | None = None,
                 n_partitions: int | None = None, consumer: Any = None) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self.params = params
        self.n_partitions = n_partitions
        self.latest: dict[int, PartitionSummary] = {}
        #: records read, and records ignored (unreadable or of another configuration)
        self.records = self.ignored = 0
        servers = bootstrap if isinstance(bootstrap, list) else [s.strip() for s in bootstrap.split(",") if s.strip()]
        self._consumer = consumer or KafkaConsumer(
            bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest",
            client_id="stream-unlearn-summaries", max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20,
        )
        self._tps: list[Any] = []

    def _assign(self, wait: float) -> bool:
        from kafka import TopicPartition

        if self._tps:
            return True
        deadline = time.monotonic() + wait
        while True:
            parts = self._consumer.partitions_for_topic(self.topic)
            if parts or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not parts:
            return False
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)
        return True

    def poll(self, timeout_ms: int = 0) -> int:
        """Read what has arrived; returns the number of partitions whose summary changed."""
        if not self._assign(0.0):
            return 0
        changed = 0
        for records in self._consumer.poll(timeout_ms=timeout_ms, max_records=10000).values():
            for record in records:
                self.records += 1
                if self.offer_bytes(record.value):
                    changed += 1
        return changed

    def offer_bytes(self, value: bytes | None) -> bool:
        try:
            summary = decode_summary(value or b"")
        except SummaryError as exc:
            self.ignored += 1
            log.warning("ignored a record on %s: %s", self.topic, exc)
            return False
        return self.offer(summary)

    def offer(self, summary: PartitionSummary) -> bool:
        """Keep ``summary`` if it is newer than the one held for its partition."""
        if (self.params is not None and summary.params != self.params) or (
                self.n_partitions is not None and summary.n_partitions != self.n_partitions):
            self.ignored += 1
            return False
        held = self.latest.get(summary.partition)
        if held is None or newer(summary, held):
            self.latest[summary.partition] = summary
            return True
        return False

    def caught_up(self) -> bool:
        """Whether every record up to the high-water mark has been read."""
        if not self._tps:
            return False
        for tp in self._tps:
            high = self._consumer.highwater(tp)
            if high is None or self._consumer.position(tp) < high:
                return False
        return True

    def read_to_end(self, timeout: float = 30.0) -> None:
        """Poll until caught up with the high-water mark (not ``end_offsets()``: Tansu gets it wrong)."""
        deadline = time.monotonic() + timeout
        if not self._assign(timeout):
            raise SummaryError(f"topic {self.topic!r} does not exist")
        while time.monotonic() < deadline:
            self.poll(timeout_ms=200)
            if self.caught_up():
                return
        raise TimeoutError(f"could not read {self.topic!r} to its end within {timeout:.0f}s")

    def close(self) -> None:
        self._consumer.close()


def read_global_model(bootstrap: str, topic: str = SUMMARIES_TOPIC, timeout: float = 30.0) -> GlobalModel | None:
    """The global model merged from the summaries topic (None if it holds no summary)."""
    from .partitioned import merge_latest

    reader = SummaryReader(bootstrap, topic)
    try:
        reader.read_to_end(timeout)
        latest = reader.latest
        if not latest:
            return None
        # Summaries of another configuration (an older run on the topic) cannot merge: keep the newest run's.
        newest = max(latest.values(), key=lambda s: sum(s.offsets))
        latest = {p: s for p, s in latest.items() if s.params == newest.params and s.n_partitions == newest.n_partitions}
        return merge_latest(latest)
    finally:
        reader.close()


def global_model_json(model: GlobalModel) -> dict[str, Any]:
    """JSON-ready form: centroids, n_points, version, position, complete, partitions."""
    from .partitioned import position

    return {
        "centroids": model.centroids.tolist(),
        "n_points": int(model.n_points),
        "version": model.version,
        "position": position(model),
        "complete": bool(model.complete),
        "partitions": {str(p): {"inserts": int(o[0]), "deletes": int(o[1])} for p, o in model.partitions.items()},
    }


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``model``."""
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help="Kafka bootstrap address(es)")
    parser.add_argument("--summaries-topic", default=SUMMARIES_TOPIC, help="topic of partition summaries")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to read the topic to its end")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main_model(args: argparse.Namespace) -> int:
    """Print the global model: 0, or 2 if the topic holds no summary (or cannot be read, Kafka unreachable)."""
    from .broker import KafkaUnreachable, wait_for_kafka

    logging.getLogger("kafka").setLevel(logging.ERROR)
    try:
        wait_for_kafka(args.bootstrap_servers, args.timeout)
        model = read_global_model(args.bootstrap_servers, args.summaries_topic, args.timeout)
    except (SummaryError, TimeoutError, KafkaUnreachable) as exc:
        print(f"stream-unlearn model: {exc}", file=sys.stderr)
        return 2
    if model is None:
        print(f"stream-unlearn model: no partition summary on {args.summaries_topic!r}", file=sys.stderr)
        return 2
    info = global_model_json(model)
    if args.json:
        print(json.dumps(info))
        return 0
    import numpy as np

    print(f"global model  {info['n_points']:,} points, version {info['version']} "
          f"({'complete' if info['complete'] else 'INCOMPLETE: some partitions have no summary'})")
    with np.printoptions(precision=4, suppress=True, linewidth=120, threshold=2000):
        for j, row in enumerate(model.centroids):
            print(f"  {j:3d} {row}")
    return 0
