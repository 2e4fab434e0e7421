"""The batcher's queues: priorities, earliest deadline first within one, the starvation guard,
batches cut to meet a deadline, and requests that cannot make theirs taken out."""

from __future__ import annotations

from helpers.batch_items import Item
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.schemas.records import Priority
from streaminfer.schemas.topics import PRIORITIES
from streaminfer.streams.queues import PriorityQueues


def queued(*items: Item, edf: bool = True) -> PriorityQueues[Item]:
    queues: PriorityQueues[Item] = PriorityQueues(edf=edf)
    for item in items:
        queues.push(item)
    return queues


def names(batch) -> list[str]:
    return [i.name for i in batch]


def test_high_before_normal_before_low():
    q = queued(Item("l1", Priority.LOW), Item("n1"), Item("h1", Priority.HIGH), Item("n2"))
    assert names(q.cut(3, now=0.0, starvation_s=10)) == ["h1", "n1", "n2"]
    assert names(q) == ["l1"] and q.items == 1


def test_the_starvation_guard_promotes_a_waiting_low():
    q = queued(
        Item("l1", Priority.LOW, enqueued_at=0.0),
        Item("h1", Priority.HIGH, enqueued_at=9.5),
        Item("h2", Priority.HIGH, enqueued_at=9.6),
    )
    assert names(q.cut(2, now=10.0, starvation_s=5.0)) == ["l1", "h1"]


def test_the_starvation_guard_looks_at_the_oldest_request_not_the_earliest_deadline():
    q = queued(
        Item("l-old", Priority.LOW, enqueued_at=0.0),
        Item("l-due", Priority.LOW, enqueued_at=9.0, deadline_ms=5),
        Item("h1", Priority.HIGH, enqueued_at=9.5),
    )
    assert names(q.cut(1, now=10.0, starvation_s=5.0)) == ["l-due"]


def test_a_request_is_never_split_and_none_jumps_ahead():
    q = queued(Item("a", size=3), Item("b", size=3), Item("c", size=1))
    assert names(q.cut(4, now=0.0, starvation_s=10)) == [
        "a"
    ]  # b does not fit; c must not jump ahead
    assert names(q.cut(4, now=0.0, starvation_s=10)) == ["b", "c"]


def test_within_a_priority_earliest_deadline_first_then_the_rest_in_arrival_order():
    q = queued(
        Item("none1"),
        Item("d300", deadline_ms=300),
        Item("d100", deadline_ms=100),
        Item("none2"),
        Item("d200", deadline_ms=200),
    )
    assert names(q.cut(10, now=0.0, starvation_s=10)) == ["d100", "d200", "d300", "none1", "none2"]


def test_fifo_keeps_arrival_order_and_sheds_nothing():
    q = queued(Item("d300", deadline_ms=300), Item("d100", deadline_ms=100), edf=False)
    assert q.unreachable(now_ms=1_000, cost=lambda n, u: 1.0) == []
    assert names(q.cut(10, now=0.0, starvation_s=10)) == ["d300", "d100"]


def test_a_batch_stops_growing_before_it_would_miss_its_earliest_deadline():
    q = queued(*(Item(f"i{k}", deadline_ms=55) for k in range(8)), Item("late", deadline_ms=10_000))
    fits = lambda items, units, deadline: deadline is None or 10 * items <= deadline  # noqa: E731
    assert names(q.cut(32, now=0.0, starvation_s=10, fits=fits)) == ["i0", "i1", "i2", "i3", "i4"]
    assert len(q) == 4


def test_the_first_request_goes_even_when_the_next_would_not_fit():
    q = queued(Item("big", size=40, deadline_ms=10_000), Item("next", deadline_ms=10_000))
    fits = lambda items, units, deadline: items <= 40  # noqa: E731
    assert names(q.cut(32, now=0.0, starvation_s=10, fits=fits)) == ["big"]


def test_a_request_that_would_miss_even_alone_in_this_batch_stays_queued_without_binding_it():
    q = queued(
        Item("hopeless", deadline_ms=50),
        Item("loose1", deadline_ms=10_000),
        Item("loose2", deadline_ms=10_000),
        Item("plain"),
    )
    start = 100  # every instance busy until then: "hopeless" (due at 50) cannot make it here
    fits = lambda items, units, deadline: start + 10 * items <= deadline  # noqa: E731
    assert names(q.cut(32, now=0.0, starvation_s=10, fits=fits)) == ["loose1", "loose2", "plain"]
    assert names(q) == ["hopeless"] and q.items == 1, "set aside, still queued, first in run order"
    assert names(q.cut(32, now=0.0, starvation_s=10)) == ["hopeless"]


def test_requests_that_miss_their_deadline_even_alone_are_taken_out():
    q = queued(
        Item("due-1020", deadline_ms=1_020),
        Item("due-1100", deadline_ms=1_100),
        Item("big-due-1040", size=2, units=2, deadline_ms=1_040),
        Item("no-deadline"),
        Item("high-due-1010", Priority.HIGH, deadline_ms=1_010),
    )
    late = q.unreachable(now_ms=1_000, cost=lambda items, units: 25.0 * items)
    assert sorted(names(late)) == ["big-due-1040", "due-1020", "high-due-1010"]
    assert names(q.cut(10, now=0.0, starvation_s=10)) == ["due-1100", "no-deadline"]


def test_nothing_is_taken_out_while_the_cost_is_unknown():
    q = queued(Item("due-1", deadline_ms=1))
    assert q.unreachable(now_ms=1_000, cost=lambda items, units: None) == []


items = st.builds(
    Item,
    name=st.uuids().map(str),
    priority=st.sampled_from(PRIORITIES),
    size=st.integers(1, 4),
    deadline_ms=st.none() | st.integers(0, 1_000),
)


@given(st.lists(items, max_size=40), st.integers(1, 16))
def test_cuts_run_each_priority_in_deadline_order_and_lose_nothing(pushed, max_items):
    q = queued(*pushed)
    taken = []
    while len(q):
        batch = q.cut(max_items, now=0.0, starvation_s=10)
        assert batch and (sum(i.size for i in batch) <= max_items or len(batch) == 1)
        taken += batch
    assert sorted(names(taken)) == sorted(names(pushed)) and q.items == 0
    for priority in PRIORITIES:
        keys = [
            (i.deadline_ms is None, i.deadline_ms or 0) for i in taken if i.priority == priority
        ]
        assert keys == sorted(keys)
