"""Offset continuity decisions, against a recording stand-in for the consumer's position calls.

The worker tests run the same code through a real broker (transaction
markers, seeks before a restore, crashes); these pin each decision down.
"""

from __future__ import annotations

import logging
from collections import namedtuple

import pytest
from kafka import TopicPartition

from stream_unlearn.continuity import GAP_RETRIES, Continuity

Record = namedtuple("Record", "offset")
TP = TopicPartition("unlearn.inserts", 0)
KEY = (TP.topic, TP.partition)


class PositionsOnly:
    """The consumer calls Continuity makes: assignment, position, seek, beginning_offsets."""

    def __init__(self, positions: dict[TopicPartition, int], log_start: int = 0) -> None:
        self.positions = positions
        self.log_start = log_start
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def position(self, tp: TopicPartition, timeout_ms: int) -> int | None:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log_start for tp in tps}


def records(*offsets: int) -> list[Record]:
    return [Record(o) for o in offsets]


def test_positions_cover_only_owned_partitions_whose_position_is_known() -> None:
    other, unknown = TopicPartition(TP.topic, 1), TopicPartition(TP.topic, 2)
    consumer = PositionsOnly({TP: 5, other: 7, unknown: None})
    assert Continuity(consumer, 200).positions(lambda p: p != 1) == {KEY: 5}


def test_records_already_held_are_skipped_and_the_rest_taken() -> None:
    continuity = Continuity(PositionsOnly({TP: 12}), 200)
    assert continuity.take(TP, records(8, 9), 10, {KEY: 8}, {KEY: 10}) is None
    taken, offset = continuity.take(TP, records(8, 9, 10, 11), 10, {KEY: 8}, {KEY: 12})
    assert [r.offset for r in taken] == [10, 11] and offset == 12


def test_a_unit_in_step_moves_past_a_marker_after_its_records(caplog: pytest.LogCaptureFixture) -> None:
    consumer = PositionsOnly({TP: 10})
    continuity = Continuity(consumer, 200)
    with caplog.at_level(logging.DEBUG, logger="stream_unlearn.continuity"):
        # offsets 10 (a marker) gave no record; the consumer passed 14 (another marker) after 11..13
        taken, offset = continuity.take(TP, records(11, 12, 13), 10, {KEY: 10}, {KEY: 15})
    assert [r.offset for r in taken] == [11, 12, 13] and offset == 15
    assert consumer.seeks == []
    assert [r.levelname for r in caplog.records] == ["DEBUG"]  # a marker: not an alarm


def test_a_gap_out_of_step_is_fetched_again_then_accepted(caplog: pytest.LogCaptureFixture) -> None:
    consumer = PositionsOnly({TP: 20}, log_start=15)
    continuity = Continuity(consumer, 200)
    with caplog.at_level(logging.DEBUG, logger="stream_unlearn.continuity"):
        for _ in range(GAP_RETRIES):
            assert continuity.take(TP, records(20, 21), 10, {KEY: 20}, {KEY: 22}) is None
        assert consumer.seeks == [(TP, 10)] * GAP_RETRIES
        taken, offset = continuity.take(TP, records(20, 21), 10, {KEY: 20}, {KEY: 30})
    assert [r.offset for r in taken] == [20, 21]
    assert offset == 22  # not in step: only past its own records, whatever the consumer passed after them
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{TP.topic}/0: offsets 10..14 are gone from the log (retention?); going on without them"]
    # the gap is closed: a later gap at the same offset gets its re-fetches again
    assert continuity.take(TP, records(20), 10, {KEY: 20}, {KEY: 21}) is None
    assert len(consumer.seeks) == GAP_RETRIES + 1


def test_units_in_step_without_records_follow_the_consumer_past_markers() -> None:
    other = (TP.topic, 1)
    continuity = Continuity(PositionsOnly({TP: 10}), 200)
    offsets = {KEY: 10, other: 3}
    before, after = {KEY: 10, other: 4}, {KEY: 11, other: 6}
    # KEY: in step, moved 10 -> 11; other: not in step (its unit is at 3, the consumer was at 4)
    assert continuity.moved_past(set(), offsets.get, before, after) == {KEY: 11}
    assert continuity.moved_past({KEY}, offsets.get, before, after) == {}  # it got records: take() decides
    assert continuity.moved_past(set(), {}.get, before, after) == {}  # no unit owns it
