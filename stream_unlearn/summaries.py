"""Partition summaries: the scale-out unit of DC-k-means (DESIGN section 5).

The first level of the DC tree under the root is the Kafka partition, so a
partition's subtree root (k weighted centroids) is a function of that
partition's points alone. Whoever owns a partition publishes its summary
(keyed by partition, on a compacted topic); anyone holding the latest
summary of every partition merges them into the global root with the same
pure function the single-process model uses. Pure numpy and msgpack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .dc_kmeans import DCKMeans, merge_partitions

FORMAT = "stream-unlearn-summary"
VERSION = 1


class SummaryError(ValueError):
    """A summary record that cannot be read or does not fit with the others."""


@dataclass(frozen=True)
class PartitionSummary:
    """The subtree root of one partition, and where in the stream it stands."""

    partition: int
    n_partitions: int
    centroids: np.ndarray
    weights: np.ndarray
    n_points: int
    offsets: tuple[int, int]
    params: dict[str, Any]

    @property
    def key(self) -> bytes:
        """The record key: the partition number (compaction keeps the latest)."""
        return str(self.partition).encode()


@dataclass(frozen=True)
class GlobalModel:
    """The merged root of the latest summaries."""

    centroids: np.ndarray
    n_points: int
    version: str
    complete: bool
    partitions: dict[int, tuple[int, int]]


def summaries_of(model: DCKMeans, partitions: list[int], offsets: Mapping[int, tuple[int, int]]) -> list[PartitionSummary]:
    """Summaries of the given partitions of ``model`` (their subtrees' roots)."""
    C, W = model.partition_summaries()
    sizes = model.partition_sizes()
    params = model.get_params()
    return [
        PartitionSummary(p, model.n_partitions, C[p], W[p], int(sizes[p]), tuple(offsets.get(p, (0, 0))), params)
        for p in partitions
    ]


def encode_summary(summary: PartitionSummary) -> bytes:
    """msgpack with float64 little-endian arrays."""
    C = np.ascontiguousarray(summary.centroids, dtype="<f8")
    return msgpack.packb(
        {
            "format": FORMAT, "version": VERSION, "partition": summary.partition,
            "n_partitions": summary.n_partitions, "shape": list(C.shape), "centroids": C.tobytes(),
            "weights": np.ascontiguousarray(summary.weights, dtype="<f8").tobytes(),
            "n_points": summary.n_points, "offsets": list(summary.offsets), "params": summary.params,
        },
        use_bin_type=True,
    )


def decode_summary(blob: bytes) -> PartitionSummary:
    """Inverse of :func:`encode_summary`; a clear SummaryError otherwise."""
    try:
        body = msgpack.unpackb(blob, raw=False)
        if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("version") != VERSION:
            raise SummaryError("not a stream-unlearn partition summary")
        k, d = (int(v) for v in body["shape"])
        C = np.frombuffer(body["centroids"], dtype="<f8").reshape(k, d).astype(np.float64)
        W = np.frombuffer(body["weights"], dtype="<f8").reshape(k).astype(np.float64)
        summary = PartitionSummary(
            int(body["partition"]), int(body["n_partitions"]), C, W, int(body["n_points"]),
            (int(body["offsets"][0]), int(body["offsets"][1])),
            DCKMeans(**body["params"]).get_params(),  # in today's terms: an older writer may omit a newer default
        )
    except SummaryError:
        raise
    except Exception as exc:  # msgpack, key and shape errors of a foreign record
        raise SummaryError(f"unreadable partition summary: {type(exc).__name__}: {exc}") from exc
    if not 0 <= summary.partition < summary.n_partitions:
        raise SummaryError(f"summary partition {summary.partition} outside [0, {summary.n_partitions})")
    return summary


def newer(a: PartitionSummary, b: PartitionSummary) -> bool:
    """Whether ``a`` reflects more of its partition's stream than ``b``."""
    return a.offsets[0] >= b.offsets[0] and a.offsets[1] >= b.offsets[1] and a.offsets != b.offsets


def merge(summaries: Mapping[int, PartitionSummary]) -> GlobalModel:
    """The global root from the latest summary of each partition.

    Bit-identical to the root of one DCKMeans holding every partition, since
    both call :func:`~stream_unlearn.dc_kmeans.merge_partitions` on the same
    summaries. A partition with no summary counts as empty and the result
    says ``complete=False``.
    """
    if not summaries:
        raise SummaryError("no partition summaries to merge")
    first = next(iter(summaries.values()))
    P, params = first.n_partitions, first.params
    for s in summaries.values():
        if s.n_partitions != P or s.params != params or s.centroids.shape != first.centroids.shape:
            raise SummaryError(
                f"summaries disagree: partition {s.partition} has {s.n_partitions} partitions and params "
                f"{s.params}, partition {first.partition} has {P} and {params}"
            )
    k, d = first.centroids.shape
    C = np.zeros((P, k, d))
    W = np.zeros((P, k))
    for p, s in summaries.items():
        C[p], W[p] = s.centroids, s.weights
    centroids, _ = merge_partitions(C, W, params["k"], params["seed"], params["root_max_iter"])
    positions = {p: s.offsets for p, s in sorted(summaries.items())}
    version = ";".join(f"{p}:{o[0]}.{o[1]}" for p, o in positions.items())
    return GlobalModel(centroids, sum(s.n_points for s in summaries.values()), version,
                       len(summaries) == P, positions)

