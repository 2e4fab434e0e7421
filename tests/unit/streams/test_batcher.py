"""The micro-batcher: size and delay triggers, priorities, the starvation guard, backpressure."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import pytest

from schemas.records import Priority
from streams.batcher import InferenceBatcher, pick_batch
from streams.errors import BatcherClosed


@dataclass
class Item:
    name: str
    priority: Priority = Priority.NORMAL
    size: int = 1
    enqueued_at: float = 0.0


def queues(**items: list[Item]) -> dict[Priority, deque]:
    q = {p: deque() for p in Priority}
    for item in (i for group in items.values() for i in group):
        q[item.priority].append(item)
    return q


def test_pick_batch_takes_high_before_normal_before_low():
    q = queues(all=[Item("l1", Priority.LOW), Item("n1"), Item("h1", Priority.HIGH), Item("n2")])
    batch = pick_batch(q, max_items=3, now=0.0, starvation_s=10)
    assert [i.name for i in batch] == ["h1", "n1", "n2"]
    assert [i.name for i in q[Priority.LOW]] == ["l1"]


def test_pick_batch_starvation_guard_promotes_a_waiting_low():
    q = queues(all=[Item("l1", Priority.LOW, enqueued_at=0.0), Item("h1", Priority.HIGH, enqueued_at=9.5),
                    Item("h2", Priority.HIGH, enqueued_at=9.6)])
    batch = pick_batch(q, max_items=2, now=10.0, starvation_s=5.0)
    assert [i.name for i in batch] == ["l1", "h1"]


def test_pick_batch_never_splits_a_request_and_counts_items():
    q = queues(all=[Item("a", size=3), Item("b", size=3), Item("c", size=1)])
    batch = pick_batch(q, max_items=4, now=0.0, starvation_s=10)
    assert [i.name for i in batch] == ["a"]  # b does not fit; c must not jump ahead of b
    assert [i.name for i in q[Priority.NORMAL]] == ["b", "c"]


async def run_batcher(max_batch_size: int, delay_ms: float, items: list[Item], model_s: float = 0.0,
                      instances: int = 1):
    batches: list[list[str]] = []

    async def run(batch):
        batches.append([i.name for i in batch])
        await asyncio.sleep(model_s)

    async with InferenceBatcher("test", run, max_batch_size, delay_ms, instances=instances) as batcher:
        for item in items:
            await batcher.put(item)
        await batcher.drain(5)
    return batches


async def test_full_batch_goes_without_waiting_for_the_delay():
    start = time.monotonic()
    batches = await run_batcher(4, 5_000, [Item(str(i)) for i in range(4)])
    assert batches == [["0", "1", "2", "3"]]
    assert time.monotonic() - start < 2.0


async def test_partial_batch_goes_after_the_delay():
    start = time.monotonic()
    batches = await run_batcher(32, 50, [Item("a"), Item("b")])
    assert batches == [["a", "b"]]
    assert time.monotonic() - start >= 0.05


async def test_next_batch_gathers_while_the_model_runs():
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def run(batch):
        batches.append([i.name for i in batch])
        await release.wait()

    async with InferenceBatcher("test", run, max_batch_size=8, max_batch_delay_ms=1) as batcher:
        await batcher.put(Item("first"))
        await asyncio.sleep(0.05)  # first batch is running, blocked
        for i in range(5):
            await batcher.put(Item(f"next{i}"))
        await asyncio.sleep(0.05)
        assert batches == [["first"]]  # one instance: the rest waits, gathering
        release.set()
        await batcher.drain(5)
    assert batches == [["first"], [f"next{i}" for i in range(5)]]


async def test_put_waits_when_the_priority_queue_is_full():
    gate = asyncio.Event()

    async def run(batch):
        await gate.wait()

    batcher = InferenceBatcher("test", run, max_batch_size=1, max_batch_delay_ms=0, max_queued=2)
    await batcher.start()
    try:
        for i in range(4):  # one runs, one batch is cut and waits for the model, two queue
            await batcher.put(Item(str(i)))
        await asyncio.sleep(0.02)
        blocked = asyncio.create_task(batcher.put(Item("blocked")))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        high = asyncio.create_task(batcher.put(Item("high", Priority.HIGH)))
        await asyncio.sleep(0.01)
        assert high.done(), "a full normal queue does not block high priority"
        gate.set()
        await asyncio.wait_for(blocked, 2)
    finally:
        gate.set()
        await batcher.stop()


async def test_put_after_stop_raises():
    async def run(batch):
        pass

    batcher = InferenceBatcher("test", run, 4, 1)
    await batcher.start()
    await batcher.stop()
    await batcher.stop()  # safe twice
    with pytest.raises(BatcherClosed):
        await batcher.put(Item("late"))


async def test_shed_hands_back_queued_requests_and_refuses_new_ones():
    gate = asyncio.Event()
    started: list[str] = []

    async def run(batch):
        started.extend(i.name for i in batch)
        await gate.wait()

    batcher = InferenceBatcher("test", run, max_batch_size=1, max_batch_delay_ms=0)
    await batcher.start()
    try:
        for name in ("running", "cut", "queued1", "queued2"):
            await batcher.put(Item(name))
        await asyncio.sleep(0.05)
        shed = batcher.shed()
        assert [i.name for i in shed] == ["queued1", "queued2"]
        with pytest.raises(BatcherClosed):
            await batcher.put(Item("late"))
        gate.set()
        await batcher.drain(2)
        assert started == ["running", "cut"], "what was shed never runs"
        batcher.resume()  # a rebalance ends: requests are taken again
        await batcher.put(Item("after"))
        await batcher.drain(2)
        assert started[-1] == "after"
    finally:
        gate.set()
        await batcher.stop()


async def test_backlogged_once_a_full_batch_waits_for_every_slot():
    release = asyncio.Event()

    async def run(batch):
        await release.wait()

    async with InferenceBatcher("test", run, max_batch_size=2, max_batch_delay_ms=1, instances=2) as batcher:
        for i in range(4):  # two batches of 2 cut and running (both slots held)
            await batcher.put(Item(f"running{i}"))
        await asyncio.sleep(0.05)
        assert batcher.queued == 0 and not batcher.backlogged
        await batcher.put(Item("q0", size=2))
        assert not batcher.backlogged  # 2 items queued: one slot's batch, not both
        await batcher.put(Item("q1", size=1))
        await batcher.put(Item("q2", size=1))
        assert batcher.backlogged  # 4 items = max_batch_size x instances
        release.set()
        await batcher.drain(5)
        assert not batcher.backlogged
