"""Offset continuity: which fetched records a unit applies, and which offsets it goes on without.

A unit's model reflects every record of its partitions up to its offsets,
and nothing after them. The consumer may hand the worker records that do
not start at a unit's offset:

* records the unit already holds (redelivered after a seek): skipped;
* offsets that never come back as records: transaction markers, aborted
  transactions under read_committed, compacted records. The consumer's
  position moves past them; a unit *in step* with the consumer (its offset
  equals the consumer's position before the poll) moves past them too;
* a gap where the unit is not in step (say, the group set a position
  before the unit's restore): fetched again from the unit's offset, a few
  times, before the worker accepts the records as gone.

Only a log that now starts after the missing offsets (retention) means
events were lost; that alone is logged as an error.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["GAP_RETRIES", "Continuity", "Key"]

log = logging.getLogger(__name__)

#: A gap in a partition's offsets is re-fetched this many times before it is accepted as lost data.
GAP_RETRIES = 3

#: (topic, partition)
Key = tuple[str, int]


class Continuity:
    """Checks each fetched run of records against the offset of the unit it is for (one consumer)."""

    def __init__(self, consumer: Any, poll_timeout_ms: int) -> None:
        self._consumer = consumer
        self._timeout_ms = poll_timeout_ms
        #: re-fetches so far of each gap (topic, partition, first missing offset)
        self._gaps: collections.Counter[tuple[str, int, int]] = collections.Counter()

    def positions(self, owned: Callable[[int], bool]) -> dict[Key, int]:
        """Where the consumer will next fetch each assigned partition that ``owned`` accepts (~10 us each).

        Read before and after a poll: a unit is in step when its offset
        equals the position before; whatever the poll moved past, it is past too.
        """
        positions = {(tp.topic, tp.partition): self._consumer.position(tp, timeout_ms=self._timeout_ms)
                     for tp in self._consumer.assignment() if owned(tp.partition)}
        return {key: offset for key, offset in positions.items() if offset is not None}  # None: not known in time

    def take(self, tp: Any, records: list[Any], expected: int, before: Mapping[Key, int],
             after: Mapping[Key, int]) -> tuple[list[Any], int] | None:
        """The records of ``tp`` that a unit at offset ``expected`` applies, and its offset after them.

        None: nothing to apply now (all already held, or a gap being fetched
        again: the consumer was sought back to ``expected``).
        ``before``/``after``: :meth:`positions` around the poll.
        """
        records = [r for r in records if r.offset >= expected]  # already held: redelivered
        if not records:
            return None
        key = (tp.topic, tp.partition)
        in_step = before.get(key) == expected
        if records[0].offset > expected and not in_step:
            gap = (tp.topic, tp.partition, expected)
            self._gaps[gap] += 1
            if self._gaps[gap] <= GAP_RETRIES:
                log.warning("%s/%d: got offset %d, expected %d: seeking back", tp.topic, tp.partition,
                            records[0].offset, expected)
                self._consumer.seek(tp, expected)
                return None
        if records[0].offset > expected:
            self.passed_over(tp, expected, records[0].offset)
        if self._gaps:
            self._gaps.pop((tp.topic, tp.partition, expected), None)  # closed, or given up on
        after_records = records[-1].offset + 1
        # In step, past what the consumer passed over after the records too (a transaction's marker).
        return records, max(after_records, after.get(key, 0)) if in_step else after_records

    def moved_past(self, fetched: set[Key], offset_of: Callable[[Key], int | None], before: Mapping[Key, int],
                   after: Mapping[Key, int]) -> dict[Key, int]:
        """New offsets of units in step that got no records while the consumer moved on (over a marker).

        ``fetched``: partitions the poll returned records for; ``offset_of``:
        the offset of the unit owning a partition (None if none does).
        """
        from kafka import TopicPartition

        moved = {}
        for key, position in after.items():
            if key in fetched or key not in before or offset_of(key) != before[key] or position <= before[key]:
                continue
            self.passed_over(TopicPartition(*key), before[key], position)
            moved[key] = position
        return moved

    def passed_over(self, tp: Any, first: int, next_record: int) -> None:
        """Offsets ``first..next_record-1`` of ``tp`` gave no record (to a fetch from ``first``, or to
        every re-fetch of it): say why, once the worker goes on without them."""
        try:
            start = self._consumer.beginning_offsets([tp]).get(tp)
        except Exception as exc:  # noqa: BLE001 - only the log message depends on it
            log.warning("%s/%d: offsets %d..%d passed over; the log start is unknown (%r)", tp.topic,
                        tp.partition, first, next_record - 1, exc)
            return
        if start is not None and start > first:
            log.error("%s/%d: offsets %d..%d are gone from the log (retention?); going on without them",
                      tp.topic, tp.partition, first, min(start, next_record) - 1)
        else:
            log.debug("%s/%d: offsets %d..%d hold no records (transaction markers, aborted or compacted "
                      "records)", tp.topic, tp.partition, first, next_record - 1)
