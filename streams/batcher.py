"""Priority-aware micro-batcher: one per model, fed by the agents of all three priority topics.

A batch goes to the model when it holds ``max_batch_size`` items or its oldest item has waited
``max_batch_delay_ms`` (and a model instance is free); while the model runs, the next batch
gathers. Requests stay in per-priority queues until a batch is cut, so a high-priority request
that arrives while a batch gathers still goes ahead of waiting low-priority ones.
Shaped after MLServer's ``batching/adaptive.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from schemas.records import Priority
from schemas.topics import PRIORITIES

from .errors import BatcherClosed

logger = logging.getLogger(__name__)


class Batchable(Protocol):
    size: int
    """Items this request carries (its first dimension)."""
    priority: Priority
    enqueued_at: float
    """``time.monotonic()`` when it entered the batcher."""


T = TypeVar("T", bound=Batchable)


def pick_batch(queues: dict[Priority, deque], max_items: int, now: float, starvation_s: float) -> list:
    """Cut one batch from the queues: high before normal before low, except that a queue whose
    head has waited past ``starvation_s`` goes first (the starvation guard). A request is never
    split; the first one is taken even when larger than ``max_items``."""
    order = sorted(
        PRIORITIES,
        key=lambda p: (not (queues[p] and now - queues[p][0].enqueued_at > starvation_s), PRIORITIES.index(p)),
    )
    batch: list = []
    room = max_items
    for priority in order:
        queue = queues[priority]
        while queue and (queue[0].size <= room or not batch):
            item = queue.popleft()
            batch.append(item)
            room -= item.size
        if room <= 0 or (queue and queue[0].size > room):
            break
    return batch


class InferenceBatcher(Generic[T]):
    """Collects requests and hands batches to ``run_batch``; ``instances`` batches may run at once."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[T]], Awaitable[None]],
        max_batch_size: int,
        max_batch_delay_ms: float,
        instances: int = 1,
        max_queued: int = 1024,
        starvation_ms: float = 2000.0,
    ) -> None:
        # NOTE: no queues, events or tasks here: they must be made inside the running loop (start()).
        self.name = name
        self._run_batch = run_batch
        self._max_items = max(1, max_batch_size)
        self._delay_s = max(0.0, max_batch_delay_ms) / 1000.0
        self._instances = max(1, instances)
        self._max_queued = max_queued
        self._starvation_s = starvation_ms / 1000.0
        self._closed = True
        self._running: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._queues: dict[Priority, deque[T]] = {p: deque() for p in PRIORITIES}
        self._room = {p: asyncio.Semaphore(self._max_queued) for p in PRIORITIES}
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(self._instances)
        self._closed = False
        self._shedding = False
        self._loop_task = asyncio.create_task(self._loop(), name=f"batcher:{self.name}")

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def backlogged(self) -> bool:
        """Whether enough is queued to fill a batch for every slot: the model has work in hand
        for at least one more full round, so new requests arriving a little later cost nothing."""
        return sum(i.size for q in self._queues.values() for i in q) >= self._max_items * self._instances

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting while its priority's queue is full (backpressure)."""
        if self._closed:
            raise BatcherClosed(f"batcher {self.name} is stopped")
        await self._room[item.priority].acquire()
        if self._closed or self._shedding:
            self._room[item.priority].release()
            raise BatcherClosed(f"batcher {self.name} is stopping")
        item.enqueued_at = time.monotonic()
        self._queues[item.priority].append(item)
        self._changed.set()

    async def _loop(self) -> None:
        while True:
            batch = await self._gather()
            await self._slots.acquire()
            task = asyncio.create_task(self._run(batch), name=f"batch:{self.name}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self) -> list[T]:
        while True:
            now = time.monotonic()
            heads = [q[0].enqueued_at for q in self._queues.values() if q]
            if heads:
                waited = now - min(heads)
                full = sum(i.size for q in self._queues.values() for i in q) >= self._max_items
                if full or (waited >= self._delay_s and not self._slots.locked()):
                    return self._cut(now)
                timeout = max(self._delay_s - waited, 0.0) if not full else None
                if waited >= self._delay_s:
                    timeout = 0.001  # due, but every instance busy: poll for a free slot
            else:
                timeout = None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def _cut(self, now: float) -> list[T]:
        batch = pick_batch(self._queues, self._max_items, now, self._starvation_s)
        for item in batch:
            self._room[item.priority].release()
        return batch

    async def _run(self, batch: list[T]) -> None:
        try:
            await self._run_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception:  # run_batch reports per request; this is a bug guard, not flow control
            logger.exception("batch of %d on %s failed unexpectedly", len(batch), self.name)
        finally:
            self._slots.release()
            self._changed.set()

    def shed(self) -> list[T]:
        """Stop taking requests and hand back those queued but not started (running batches go on)."""
        self._shedding = True
        left = [item for q in self._queues.values() for item in q]
        for q in self._queues.values():
            q.clear()
        for item in left:
            self._room[item.priority].release()
        return left

    def resume(self) -> None:
        """Take requests again after :meth:`shed`."""
        self._shedding = False

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until nothing is queued or running (used on shutdown)."""
        deadline = time.monotonic() + timeout_s
        while (self.queued or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def stop(self) -> Sequence[T]:
        """Stop cutting batches, wait for running ones; return what was still queued."""
        if self._closed:
            return []
        self._closed = True
        self._loop_task.cancel()
        await asyncio.wait([self._loop_task])
        if self._running:
            await asyncio.wait(list(self._running))
        left = [item for q in self._queues.values() for item in q]
        for q in self._queues.values():
            q.clear()
        return left

    async def __aenter__(self) -> InferenceBatcher[T]:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
