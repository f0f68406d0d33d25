"""What a worker tells the world about its model, each message sent only when it changed.

dc: the summary of each owned partition (its subtree's top centroids and
weights, with the offsets they cover) goes to the summaries topic; the
global model, merged from the newest summary of every partition (the
worker's own, or a newer one another worker published), goes to the model
topic. q: the one model's centroids go to the model topic.
When to publish (the rate limit) is the loop's business, not this module's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .config import WorkerConfig
from .partitioned import merge_latest, partition_summary, position
from .publisher import Publisher, encode_global_message
from .summaries import GlobalModel, PartitionSummary, SummaryError, encode_summary, newer
from .units import Unit

log = logging.getLogger(__name__)


class ModelPublishing:
    """A worker's partition summaries and global model messages.

    ``reader`` (dc only): a :class:`~stream_unlearn.model_cmd.SummaryReader`
    of the summaries topic, for the partitions other workers own.
    ``global_model`` is the last merged :class:`~.summaries.GlobalModel`.
    """

    def __init__(self, config: WorkerConfig, publisher: Publisher, n_partitions: int, reader: Any = None) -> None:
        self.config = config
        self.n_partitions = n_partitions
        self.global_model: GlobalModel | None = None
        self._publisher = publisher
        self._reader = reader
        self._own: dict[int, PartitionSummary] = {}
        self._published: tuple[Any, ...] | None = None

    @property
    def dc(self) -> bool:
        return self.config.algorithm == "dc"

    def summaries(self, units: Iterable[Unit], dim: int | None) -> None:
        """Send the summary of each given dc unit whose subtree or offsets changed."""
        if not self.dc:
            return
        c = self.config
        for unit in units:
            p = unit.key
            if not unit.summary_dirty or p is None:
                continue
            summary = partition_summary(unit.model, p, self.n_partitions, self._offsets(unit, p), dim)  # type: ignore[arg-type]
            if summary is None:
                continue  # no point seen and no dimension known yet
            self._publisher.send(c.summaries_topic, summary.key, encode_summary(summary))
            self._own[p] = summary
            unit.summary_dirty = False

    def forget(self, partition: int) -> None:
        """The worker let go of ``partition``: its summary is no longer ours to merge."""
        self._own.pop(partition, None)

    def dim_seen(self) -> int | None:
        """The vector dimension of the other workers' summaries (None if none was read)."""
        latest = self._reader.latest if self._reader is not None else {}
        if not latest:
            return None
        return next(iter(latest.values())).centroids.shape[1] or None

    def model(self, units: list[Unit], dim: int | None) -> None:
        """Summaries of the changed units, then the global model if it changed since the last one sent."""
        c = self.config
        if self.dc:
            self.summaries(units, dim)
            merged = self._merged()
            if merged is None:
                return
            self.global_model = merged
            version = position(merged)
            ident: tuple[Any, ...] = (version, merged.complete, merged.n_points, merged.centroids.tobytes())
            if ident == self._published:
                return
            value = encode_global_message(merged.centroids, merged.n_points, version, c.algorithm,
                                          merged.complete, merged.partitions, merged.version)
        else:
            if not units:
                return
            unit = units[0]
            version = sum(unit.offsets.values())
            ident = (version,)
            if ident == self._published:
                return
            value = encode_global_message(unit.model.centroids_, unit.model.n_points_, version, c.algorithm, True,
                                          {p: self._offsets(unit, p) for p in unit.partitions})
        self._publisher.send(c.model_topic, b"model", value)
        self._published = ident

    def _offsets(self, unit: Unit, partition: int) -> tuple[int, int]:
        """The unit's (insert topic, delete topic) offsets of ``partition``."""
        return unit.offsets[(self.config.insert_topic, partition)], unit.offsets[(self.config.delete_topic, partition)]

    def _merged(self) -> GlobalModel | None:
        """The latest summary of every partition: ours for owned ones (unless a newer one was read)."""
        latest: dict[int, PartitionSummary] = dict(self._reader.latest) if self._reader is not None else {}
        for p, mine in self._own.items():
            theirs = latest.get(p)
            if theirs is None or not newer(theirs, mine):
                latest[p] = mine
        if not latest:
            return None
        try:
            return merge_latest(latest)
        except SummaryError as exc:
            log.warning("cannot merge partition summaries: %s", exc)
            return None
