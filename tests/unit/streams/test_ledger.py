"""The ack ledger: acks never pass an unanswered event of their partition, whatever the order."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streaminfer.streams.ledger import AckLedger


class Recorder:
    def __init__(self) -> None:
        self.acked: list[tuple[int, int]] = []
        self.released: list[tuple[int, int]] = []

    def take(self, ledger: AckLedger, partition: int, offset: int):
        async def ack():
            self.acked.append((partition, offset))

        return ledger.take(
            "t", partition, offset, ack, lambda: self.released.append((partition, offset))
        )


async def test_an_answer_waits_for_every_earlier_event_of_its_partition():
    ledger, rec = AckLedger(), Recorder()
    e0, e1, e2 = (rec.take(ledger, 0, o) for o in (10, 11, 12))
    other = rec.take(ledger, 1, 5)
    await ledger.answer(e2)
    await ledger.answer(e1)
    assert rec.acked == [], "offset 10 is unanswered: nothing after it may be acked"
    await ledger.answer(other)
    assert rec.acked == [(1, 5)], "another partition does not wait"
    await ledger.answer(e0)
    assert rec.acked == [(1, 5), (0, 10), (0, 11), (0, 12)]
    assert ledger.held == 0


async def test_the_first_event_after_the_committed_offset_holds_everything():
    # faust's own check lets one unacked offset right after the committed one be passed
    ledger, rec = AckLedger(), Recorder()
    first = rec.take(ledger, 0, 0)
    later = [rec.take(ledger, 0, o) for o in range(1, 50)]
    for entry in later:
        await ledger.answer(entry)
    assert rec.acked == [] and ledger.unanswered("t", 0) == [0]
    await ledger.answer(first)
    assert [o for _, o in rec.acked] == list(range(50))


async def test_a_given_up_event_releases_everything_after_it_and_acks_nothing_past_it():
    ledger, rec = AckLedger(), Recorder()
    e0, e1, e2 = (rec.take(ledger, 0, o) for o in (0, 1, 2))
    await ledger.answer(e0)
    ledger.give_up(e1)
    await ledger.answer(e2)
    assert rec.acked == [(0, 0)]
    assert rec.released == [(0, 1), (0, 2)], "answered after a gap: released, not acked"
    assert ledger.held == 0
    again = rec.take(ledger, 0, 1)  # redelivered after the rebalance: a fresh partition
    await ledger.answer(again)
    assert rec.acked[-1] == (0, 1)


async def test_events_before_a_given_up_one_are_still_acked_as_they_are_answered():
    # shutdown sheds what is queued while earlier events of the partition are still running
    ledger, rec = AckLedger(), Recorder()
    running, answered, queued, later = (rec.take(ledger, 0, o) for o in (0, 1, 2, 3))
    await ledger.answer(answered)  # waits for offset 0
    ledger.give_up(queued)
    await ledger.answer(later)
    assert rec.acked == [] and rec.released == [(0, 2), (0, 3)]
    await ledger.answer(running)
    assert rec.acked == [(0, 0), (0, 1)], "the run before the given-up event commits"
    assert ledger.held == 0


async def test_reset_gives_up_what_is_held_and_late_answers_ack_nothing():
    ledger, rec = AckLedger(), Recorder()
    e0, e1 = rec.take(ledger, 0, 0), rec.take(ledger, 0, 1)
    await ledger.answer(e1)
    assert ledger.reset() == 2
    assert sorted(rec.released) == [(0, 0), (0, 1)]
    await ledger.answer(e0)
    assert rec.acked == []


async def test_answering_twice_acks_once():
    ledger, rec = AckLedger(), Recorder()
    entry = rec.take(ledger, 0, 0)
    await ledger.answer(entry)
    await ledger.answer(entry)
    ledger.give_up(entry)
    assert rec.acked == [(0, 0)] and rec.released == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=60), st.randoms())
async def test_acks_are_a_prefix_in_offset_order_whatever_the_answer_order(
    partitions, rnd: random.Random
):
    ledger, rec = AckLedger(), Recorder()
    offsets: dict[int, int] = {}
    entries = []
    for p in partitions:
        offsets[p] = offsets.get(p, -1) + 1
        entries.append((p, offsets[p], rec.take(ledger, p, offsets[p])))
    order = list(entries)
    rnd.shuffle(order)
    answered: set[tuple[int, int]] = set()
    for p, o, entry in order:
        await ledger.answer(entry)
        answered.add((p, o))
        for part in set(partitions):
            acked = [off for pp, off in rec.acked if pp == part]
            assert acked == list(range(len(acked))), "acked in offset order, no gaps"
            # every acked offset and all before it were answered
            assert all((part, off) in answered for off in acked)
            # the run stops exactly at the first unanswered offset
            first_open = next(
                (off for off in range(offsets[part] + 1) if (part, off) not in answered), None
            )
            assert len(acked) == (first_open if first_open is not None else offsets[part] + 1)
    assert ledger.held == 0
