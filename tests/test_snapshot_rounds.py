"""A snapshot round's captures are spread over the interval, in slots fixed by the round's tick."""

from __future__ import annotations

from stream_unlearn.snapshot_rounds import CaptureSlots


def test_slots_are_an_even_share_of_the_interval_from_the_tick():
    slots = CaptureSlots()
    slots.start_round(100.0, 2.0, 4)
    opened = []
    for now in [100.0 + 0.1 * i for i in range(20)]:
        if slots.open(now):
            opened.append(round(now, 1))
            slots.taken()
    assert opened == [100.0, 100.5, 101.0, 101.5]


def test_a_late_capture_does_not_push_the_later_slots_back():
    """Slots from the last capture's time would drift later by each capture's lateness, and a unit
    would be captured less often than once per interval (its receipts would wait longer)."""
    slots = CaptureSlots()
    slots.start_round(10.0, 3.0, 3)
    assert slots.open(10.4)  # the first capture runs 0.4 s late (the writer was busy)
    slots.taken()
    assert not slots.open(10.99) and slots.open(11.0)
    slots.taken()
    assert slots.open(12.0)
    slots.taken()
    slots.start_round(13.0, 3.0, 3)  # the next tick starts over, whatever is left
    assert slots.open(13.0)


def test_a_round_with_nothing_or_one_unit_due_opens_at_its_tick():
    for n_due in (0, 1):
        slots = CaptureSlots()
        slots.start_round(5.0, 2.0, n_due)
        assert not slots.open(4.9) and slots.open(5.0)
