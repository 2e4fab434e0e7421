"""The micro-batcher: size and delay triggers, dispatch when idle, deadline-aware cuts and early
shedding, backpressure."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers.batch_items import Item

from streaminfer.schemas.records import Priority
from streaminfer.streams.batcher import InferenceBatcher
from streaminfer.streams.costs import BatchCost
from streaminfer.streams.errors import BatcherClosed


async def run_batcher(
    max_batch_size: int,
    delay_ms: float,
    items: list[Item],
    model_s: float = 0.0,
    instances: int = 1,
):
    batches: list[list[str]] = []

    async def run(batch):
        batches.append([i.name for i in batch])
        await asyncio.sleep(model_s)

    async with InferenceBatcher(
        "test", run, max_batch_size, delay_ms, instances=instances
    ) as batcher:
        for item in items:
            await batcher.put(item)
        await batcher.drain(5)
    return batches


async def test_full_batch_goes_without_waiting_for_the_delay():
    start = time.monotonic()
    batches = await run_batcher(4, 5_000, [Item(str(i)) for i in range(4)])
    assert batches == [["0", "1", "2", "3"]]
    assert time.monotonic() - start < 2.0


async def test_an_idle_instance_runs_a_partial_batch_at_once():
    start = time.monotonic()
    batches = await run_batcher(32, 5_000, [Item("a")])
    assert batches == [["a"]]
    assert time.monotonic() - start < 1.0, "the delay gathers only while instances are busy"


async def test_while_every_instance_is_busy_the_lookahead_batch_gathers_for_the_delay():
    cut_at: list[tuple[list[str], float]] = []
    release = asyncio.Event()

    async def run(batch):
        cut_at.append(([i.name for i in batch], time.monotonic()))
        await release.wait()

    async with InferenceBatcher(
        "test", run, max_batch_size=32, max_batch_delay_ms=100, lookahead=1
    ) as batcher:
        await batcher.put(Item("first"))
        await asyncio.sleep(0.02)
        queued = time.monotonic()
        await batcher.put(Item("a"))
        await asyncio.sleep(0.03)
        await batcher.put(Item("b"))
        await asyncio.sleep(0.2)
        release.set()
        await batcher.drain(5)
    assert [names for names, _ in cut_at] == [["first"], ["a", "b"]]
    assert cut_at[1][1] - queued >= 0.1, "cut only once its oldest request waited the delay"


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
        for i in range(3):  # one runs, two queue (nothing is cut before a slot is free)
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
        for name in ("running", "queued0", "queued1", "queued2"):
            await batcher.put(Item(name))
        await asyncio.sleep(0.05)
        shed = batcher.shed()
        assert [i.name for i in shed] == ["queued0", "queued1", "queued2"]
        with pytest.raises(BatcherClosed):
            await batcher.put(Item("late"))
        gate.set()
        await batcher.drain(2)
        assert started == ["running"], "what was shed never runs"
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

    async with InferenceBatcher(
        "test", run, max_batch_size=2, max_batch_delay_ms=1, instances=2
    ) as batcher:
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


def trained(ms_per_item: float) -> BatchCost:
    cost = BatchCost(refit_s=0)
    for items in (1, 2, 4, 8):
        cost.observe(items, items, ms_per_item * items)
    return cost


async def batches_after_a_blocker(
    cost: BatchCost, deadlines_from_now: list[int | None]
) -> list[list[str]]:
    """The batches a one-instance batcher cuts when ``i0``, ``i1``, ... (deadlines in ms from
    now) queue while a first batch holds the instance, after it ends."""
    batches: list[list[str]] = []
    gate = asyncio.Event()

    async def run(batch):
        batches.append([i.name for i in batch])
        await gate.wait()

    async with InferenceBatcher("test", run, 32, 1, cost=cost) as batcher:
        await batcher.put(Item("blocker"))
        await asyncio.sleep(0.02)
        now = int(time.time() * 1000)
        for k, due in enumerate(deadlines_from_now):
            await batcher.put(Item(f"i{k}", deadline_ms=None if due is None else now + due))
        gate.set()
        await batcher.drain(5)
    return batches[1:]


async def test_a_batch_is_cut_at_the_largest_size_that_meets_its_earliest_deadline():
    # items predicted at 100 ms each: 4 fit in time for i0
    batches = await batches_after_a_blocker(trained(100.0), [500] + [10_500] * 19)
    assert batches[0] == ["i0", "i1", "i2", "i3"]
    assert batches[1] == [f"i{k}" for k in range(4, 20)], (
        "without the tight one, the rest fit in one"
    )


async def test_a_request_that_cannot_make_its_deadline_is_expired_without_running():
    ran: list[str] = []
    expired: list[str] = []

    async def run(batch):
        ran.extend(i.name for i in batch)

    async def expire(items):
        expired.extend(i.name for i in items)

    now = int(time.time() * 1000)
    async with InferenceBatcher("test", run, 32, 1, cost=trained(50.0), expire=expire) as batcher:
        await batcher.put(Item("hopeless", deadline_ms=now + 20))  # one item takes ~50 ms
        await batcher.put(Item("fine", deadline_ms=now + 5_000))
        await batcher.put(Item("no-deadline"))
        await batcher.drain(2)
    assert expired == ["hopeless"] and sorted(ran) == ["fine", "no-deadline"]


async def test_fifo_runs_what_is_due_in_arrival_order_and_expires_nothing_early():
    ran: list[str] = []

    async def run(batch):
        ran.extend(i.name for i in batch)

    async def expire(items):
        raise AssertionError("FIFO sheds nothing")

    gate = asyncio.Event()

    async def blocked(batch):
        await run(batch)
        await gate.wait()

    now = int(time.time() * 1000)
    async with InferenceBatcher(
        "test", blocked, 32, 1, cost=trained(50.0), expire=expire, deadline_aware=False
    ) as batcher:
        await batcher.put(Item("blocker"))
        await asyncio.sleep(0.02)
        await batcher.put(Item("loose", deadline_ms=now + 5_000))
        await batcher.put(Item("hopeless", deadline_ms=now + 20))
        gate.set()
        await batcher.drain(2)
    assert ran == ["blocker", "loose", "hopeless"]


async def test_while_the_instance_is_busy_a_request_that_would_miss_waits_aside_then_is_shed():
    ran: list[str] = []
    expired: list[tuple[str, float]] = []
    gate = asyncio.Event()

    async def run(batch):
        ran.extend(i.name for i in batch)
        await gate.wait()

    async def expire(items):
        expired.extend((i.name, time.monotonic()) for i in items)

    async with InferenceBatcher(
        "test", run, 32, 1, lookahead=1, cost=trained(100.0), expire=expire
    ) as batcher:
        await batcher.put(Item("blocker"))  # predicted to take 100 ms; held much longer
        await asyncio.sleep(0.02)
        put_at, now = time.monotonic(), int(time.time() * 1000)
        await batcher.put(Item("tight", deadline_ms=now + 150))  # alone after the blocker: ~+200 ms
        await batcher.put(Item("loose", deadline_ms=now + 60_000))
        try:
            await asyncio.sleep(0.3)
            assert ran == ["blocker", "loose"], "the look-ahead batch goes without the tight one"
            assert [name for name, _ in expired] == ["tight"]
            assert expired[0][1] - put_at < 0.2, (
                "shed once it could not make it even if run at once"
            )
        finally:
            gate.set()
        await batcher.drain(2)
    assert ran == ["blocker", "loose"]
