"""Configuration of ``stream-unlearn worker``: flags, environment, validation.

Every option is a command-line flag and a ``STREAM_UNLEARN_<UPPER_SNAKE>``
environment variable (``--snapshot-dir`` <-> ``STREAM_UNLEARN_SNAPSHOT_DIR``);
a flag wins over the environment, which wins over the default. The result
is one frozen :class:`WorkerConfig`, validated as a whole, so the worker
never starts with a value it would choke on later.

Conventions worth knowing:

* ``--metrics-port 0`` disables the Prometheus endpoint (there is no way to
  discover a random port from outside, so "0 = any port" would be useless),
  and with it ``/healthz``; ``--stall-timeout 0`` keeps ``/healthz`` at 200.
* ``--tombstone-horizon inf`` keeps tombstones forever (exact semantics for
  arbitrarily late events, memory grows with distinct deleted ids).
* ``--dim 0`` takes the vector dimension from the first valid insert.
* ``--partitions`` only matters when the worker creates the input topics.
* Workers with the same ``--group-id`` split the partitions (Kafka consumer
  group); ``--no-group`` reads every partition with ``assign()``.
  ``--algorithm q`` (one global model) requires ``--no-group``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .dc_kmeans import default_fanout
from .wire import (
    DEFAULT_MAX_ID_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    TOPIC_DEAD_LETTER,
    TOPIC_DELETES,
    TOPIC_INSERTS,
    TOPIC_MODEL,
    TOPIC_RECEIPTS,
)

#: Default topic of partition summaries (see :mod:`stream_unlearn.model_cmd`).
TOPIC_SUMMARIES = "unlearn.summaries"

__all__ = [
    "ALGORITHMS",
    "ENV_PREFIX",
    "ConfigError",
    "WorkerConfig",
    "add_worker_arguments",
    "config_from_args",
    "env_name",
]

ENV_PREFIX = "STREAM_UNLEARN_"
ALGORITHMS = ("dc", "q")
#: murmur2: a DC worker over several partitions dead-letters records off their id's murmur2 partition;
#: any: trust the producers' partitioner (one that maps each key to one partition in both topics).
PARTITIONERS = ("murmur2", "any")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class ConfigError(ValueError):
    """An invalid worker configuration (the CLI exits with status 2)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker needs to know; validated on construction."""

    bootstrap_servers: str = "127.0.0.1:9092"
    connect_timeout: float = 120.0
    insert_topic: str = TOPIC_INSERTS
    delete_topic: str = TOPIC_DELETES
    dead_letter_topic: str = TOPIC_DEAD_LETTER
    receipts_topic: str = TOPIC_RECEIPTS
    model_topic: str = TOPIC_MODEL
    summaries_topic: str = TOPIC_SUMMARIES
    group_id: str = "stream-unlearn"
    group: bool = True
    session_timeout_ms: int = 10000
    heartbeat_interval_ms: int = 3000
    handover_timeout: float = 120.0
    algorithm: str = "dc"
    partitioner: str = "murmur2"
    k: int = 5
    seed: int = 0
    eps: float = 0.5
    n_leaves: int = 4096
    fanout: int = 0
    node_k: int = 0
    dim: int = 0
    snapshot_dir: str = "snapshots"
    snapshot_interval: float = 5.0
    model_publish_interval: float = 1.0
    tombstone_horizon: float = 7 * 24 * 3600.0
    max_ts_ahead: float = 24 * 3600.0
    metrics_port: int = 9464
    metrics_addr: str = "127.0.0.1"
    stall_timeout: float = 300.0
    max_batch: int = 5000
    fetch_max_wait_ms: int = 50
    isolation_level: str = "read_committed"
    max_id_bytes: int = DEFAULT_MAX_ID_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    create_topics: bool = True
    partitions: int = 3
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def bootstrap_list(self) -> list[str]:
        """``bootstrap_servers`` split on commas."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def input_topics(self) -> tuple[str, str]:
        """The two co-partitioned input topics: (inserts, deletes)."""
        return (self.insert_topic, self.delete_topic)

    @property
    def output_topics(self) -> tuple[str, ...]:
        """The topics the worker writes to: dead letters, receipts, the model, and (dc) partition summaries."""
        summaries = (self.summaries_topic,) if self.algorithm == "dc" else ()
        return (self.dead_letter_topic, self.receipts_topic, self.model_topic, *summaries)

    def to_argv(self) -> list[str]:
        """Flags reproducing this configuration (to start a worker process)."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                argv.append(_flag(f.name) if value else "--no-" + _flag(f.name)[2:])
            else:
                argv += [_flag(f.name), repr(value) if isinstance(value, float) else str(value)]
        return argv

    def model_params(self) -> dict[str, Any]:
        """Constructor arguments of the model (without ``n_partitions``)."""
        if self.algorithm == "dc":
            return {"k": self.k, "seed": self.seed, "n_leaves": self.n_leaves,
                    "fanout": self.fanout or default_fanout(self.k, self.n_leaves), "node_k": self.node_k or self.k,
                    "max_id_bytes": self.max_id_bytes}
        return {"k": self.k, "seed": self.seed, "eps": self.eps, "max_id_bytes": self.max_id_bytes}


def _validate(c: WorkerConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(what)

    need(bool(c.bootstrap_list), "--bootstrap-servers must name at least one host:port")
    topics = {"--insert-topic": c.insert_topic, "--delete-topic": c.delete_topic,
              "--dead-letter-topic": c.dead_letter_topic, "--receipts-topic": c.receipts_topic,
              "--model-topic": c.model_topic, "--summaries-topic": c.summaries_topic}
    for flag, name in topics.items():
        need(bool(_TOPIC_RE.match(name)) and name not in (".", ".."),
             f"{flag}: {name!r} is not a valid Kafka topic name")
    need(len(set(topics.values())) == len(topics), f"the {len(topics)} topics must be distinct, got {sorted(topics.values())}")
    need(bool(c.group_id.strip()), "--group-id must not be empty")
    need(not (c.algorithm == "q" and c.group),
         "--algorithm q is one global model over all partitions and cannot be split across a consumer "
         "group: run a single q worker with --no-group (it reads every partition), or use --algorithm dc "
         "to scale out")
    need(1000 <= c.session_timeout_ms <= 3_600_000,
         f"--session-timeout-ms must lie in [1000, 3600000], got {c.session_timeout_ms}")
    need(100 <= c.heartbeat_interval_ms < c.session_timeout_ms,
         f"--heartbeat-interval-ms must lie in [100, --session-timeout-ms), got {c.heartbeat_interval_ms}")
    need(math.isfinite(c.connect_timeout) and c.connect_timeout >= 0,
         f"--connect-timeout must be a finite number of seconds >= 0, got {c.connect_timeout}")
    need(math.isfinite(c.handover_timeout) and c.handover_timeout > 0,
         f"--handover-timeout must be a positive number of seconds, got {c.handover_timeout}")
    need(c.algorithm in ALGORITHMS, f"--algorithm must be one of {ALGORITHMS}, got {c.algorithm!r}")
    need(c.partitioner in PARTITIONERS, f"--partitioner must be one of {PARTITIONERS}, got {c.partitioner!r}")
    need(c.k >= 1, f"--k must be >= 1, got {c.k}")
    need(0 <= c.seed < 2**63, f"--seed must lie in [0, 2**63), got {c.seed}")
    need(math.isfinite(c.eps) and c.eps > 0, f"--eps must be a positive finite number, got {c.eps}")
    need(c.n_leaves >= 1, f"--n-leaves must be >= 1, got {c.n_leaves}")
    need(c.fanout == 0 or c.fanout >= 2, f"--fanout must be 0 (by k) or >= 2, got {c.fanout}")
    need(c.node_k == 0 or c.node_k >= c.k, f"--node-k must be 0 (= k) or >= --k, got {c.node_k}")
    need(c.dim >= 0, f"--dim must be >= 0 (0 = from the first insert), got {c.dim}")
    need(bool(c.snapshot_dir), "--snapshot-dir must not be empty")
    need(math.isfinite(c.snapshot_interval) and c.snapshot_interval > 0,
         f"--snapshot-interval must be a positive number of seconds, got {c.snapshot_interval}")
    need(math.isfinite(c.model_publish_interval) and c.model_publish_interval >= 0,
         f"--model-publish-interval must be >= 0 seconds, got {c.model_publish_interval}")
    need(c.tombstone_horizon > 0 and not math.isnan(c.tombstone_horizon),
         f"--tombstone-horizon must be > 0 seconds (or inf), got {c.tombstone_horizon}")
    need(c.max_ts_ahead >= 0 and not math.isnan(c.max_ts_ahead),
         f"--max-ts-ahead must be >= 0 seconds (or inf), got {c.max_ts_ahead}")
    need(0 <= c.metrics_port <= 65535, f"--metrics-port must lie in [0, 65535] (0 = off), got {c.metrics_port}")
    need(bool(c.metrics_addr), "--metrics-addr must not be empty")
    need(math.isfinite(c.stall_timeout) and c.stall_timeout >= 0,
         f"--stall-timeout must be a finite number of seconds >= 0 (0 = never), got {c.stall_timeout}")
    # A new owner's loop step waits up to the handover timeout for a partition's lock: a live wait.
    need(c.stall_timeout == 0 or c.stall_timeout > c.handover_timeout,
         f"--stall-timeout ({c.stall_timeout:g} s) must exceed --handover-timeout ({c.handover_timeout:g} s), "
         "which one loop step may spend waiting for a partition (or be 0)")
    need(1 <= c.max_batch <= 1_000_000, f"--max-batch must lie in [1, 1000000], got {c.max_batch}")
    need(0 <= c.fetch_max_wait_ms <= 10_000, f"--fetch-max-wait-ms must lie in [0, 10000], got {c.fetch_max_wait_ms}")
    need(c.isolation_level in ISOLATION_LEVELS,
         f"--isolation-level must be one of {ISOLATION_LEVELS}, got {c.isolation_level!r}")
    need(1 <= c.max_id_bytes <= 65536, f"--max-id-bytes must lie in [1, 65536], got {c.max_id_bytes}")
    need(64 <= c.max_value_bytes <= 64 << 20, f"--max-value-bytes must lie in [64, 64 MiB], got {c.max_value_bytes}")
    need(1 <= c.partitions <= 10000, f"--partitions must lie in [1, 10000], got {c.partitions}")
    need(c.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
         f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {c.log_level!r}")


# --------------------------------------------------------------------------
# parsing (shared by flags and environment variables)


def _int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if math.isnan(value):
        raise ValueError("NaN is not allowed")
    return value


def _str(text: str) -> str:
    return text.strip()


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false)")


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap ``parse`` so argparse reports its message (exit status 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.lstrip("_")
    return convert


_PARSERS: dict[type, Callable[[str], Any]] = {int: _int, float: _float, str: _str, bool: _bool}

_HELP: dict[str, str] = {
    "bootstrap_servers": "Kafka bootstrap address(es), comma-separated",
    "connect_timeout": "seconds to wait at start for Kafka to answer (it may start after the worker; "
                       "0 = one attempt); then exit 1",
    "insert_topic": "topic of insert events",
    "delete_topic": "topic of delete events (same partition count as the insert topic)",
    "dead_letter_topic": "topic for records that fail validation",
    "receipts_topic": "topic for erasure receipts",
    "model_topic": "topic for the latest centroids",
    "summaries_topic": "topic of partition summaries (subtree roots, keyed by partition; compacted)",
    "group_id": "consumer group: workers with the same group id split the partitions",
    "group": "join the consumer group (--no-group: read every partition with assign(), one worker; "
             "required by --algorithm q)",
    "session_timeout_ms": "consumer group session timeout: a worker silent this long loses its partitions",
    "heartbeat_interval_ms": "consumer group heartbeat interval (well below the session timeout)",
    "handover_timeout": "seconds a new owner waits for the previous owner to snapshot and let go of a partition",
    "algorithm": "dc (divide and conquer) or q (quantized Lloyd)",
    "partitioner": "dc over several partitions: murmur2 = an id's records must be on its Kafka default "
                   "(murmur2) partition, others are dead letters (wrong_partition); any = trust the producers' "
                   "key partitioner (it must map each id to one partition in both topics)",
    "k": "number of clusters",
    "seed": "model seed",
    "eps": "q: quantization grid spacing, in data units",
    "n_leaves": "dc: leaves per partition",
    "fanout": "dc: children per internal node (0 = by k and --n-leaves: the fewest levels whose nodes hold at "
              "most 320 items, spread evenly)",
    "node_k": "dc: centres each internal node below a partition's top keeps for the level above (0 = k: every "
              "node solves k-means, the paper's tree; 2k loses less per level at large k, at 1.5-2x the delete cost)",
    "dim": "vector dimension (0 = take it from the first valid insert)",
    "snapshot_dir": "directory of snapshots (created mode 0700)",
    "snapshot_interval": "seconds between snapshots (and erasure receipts)",
    "model_publish_interval": "minimum seconds between centroid messages on the model topic",
    "tombstone_horizon": "seconds of event time a delete is remembered; later events are dropped (inf = forever)",
    "max_ts_ahead": "seconds an event's ts may lie after its Kafka record timestamp; later ones are dead letters "
                    "(bad_ts), since they would push the tombstone horizon past honest events (inf = no limit)",
    "metrics_port": "Prometheus port (0 = no endpoint)",
    "metrics_addr": "address the Prometheus endpoint binds to",
    "stall_timeout": "seconds without a poll loop step after which /healthz (beside /metrics) answers 503, for "
                     "container liveness probes (0 = never; before the first step it answers 200)",
    "max_batch": "maximum records per poll (one model update per poll)",
    "fetch_max_wait_ms": "longest the broker may hold a fetch to fill it (latency floor when traffic is light)",
    "isolation_level": "read_committed = events of transactions that were aborted, or are still open, are not "
                       "applied (transactional producers); read_uncommitted = every record as soon as it is written",
    "max_id_bytes": "longest accepted id in UTF-8 bytes",
    "max_value_bytes": "largest accepted record value in bytes",
    "create_topics": "create missing topics on start",
    "partitions": "partitions of the input topics when the worker creates them",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def env_name(field_name: str) -> str:
    """``snapshot_dir`` -> ``STREAM_UNLEARN_SNAPSHOT_DIR``."""
    return ENV_PREFIX + field_name.upper()


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`WorkerConfig` field to ``parser``.

    Defaults are ``None`` here so that :func:`config_from_args` can tell an
    explicit flag from an absent one and fall back to the environment.
    """
    defaults = WorkerConfig()
    for f in fields(WorkerConfig):
        default = getattr(defaults, f.name)
        help_text = f"{_HELP[f.name]} (env {env_name(f.name)}; default {default})"
        kind = _field_type(f.name)
        if kind is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text,
                                  "type": _argparse_type(_PARSERS[kind])}
        if f.name == "algorithm":
            kwargs["choices"] = ALGORITHMS
        if f.name == "partitioner":
            kwargs["choices"] = PARTITIONERS
        if f.name == "isolation_level":
            kwargs["choices"] = ISOLATION_LEVELS
        parser.add_argument(_flag(f.name), **kwargs)


def _field_type(name: str) -> type:
    value = getattr(WorkerConfig(), name)
    return type(value)


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Resolve flag > environment > default and validate; raise :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(WorkerConfig):
        value = getattr(args, f.name, None)
        if value is None and env.get(env_name(f.name), "").strip():
            raw = env[env_name(f.name)]
            try:
                value = _PARSERS[_field_type(f.name)](raw)
            except ValueError as exc:
                raise ConfigError(f"{env_name(f.name)}: {exc}") from None
            if f.name == "algorithm" and value not in ALGORITHMS:
                raise ConfigError(f"{env_name(f.name)}: must be one of {ALGORITHMS}, got {value!r}")
        if value is not None:
            values[f.name] = value
    return WorkerConfig(**values)
