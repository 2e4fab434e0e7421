"""Deadline-aware micro-batcher: one per model, fed by the agents of all three priority topics.

A batch is cut only when a batch slot is free, so the requests that go are chosen as late as
possible (a high-priority or tight-deadline request arriving meanwhile still goes first; see
``queues.py`` for the order). An idle model instance runs what is queued at once; while every
instance is busy, the one batch more (``lookahead``: its Redis lookups overlap the compute)
gathers until it is full or its oldest request has waited ``max_batch_delay_ms``.

With a cost model (``costs.py``) and ``deadline_aware``, a batch stops growing before its
predicted completion would pass the earliest deadline in it, and a request that misses its
deadline even if run alone at once is handed to ``expire`` instead of taking model time.
Shaped after MLServer's ``batching/adaptive.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic

from streaminfer.schemas.topics import PRIORITIES

from .costs import BatchCost
from .errors import BatcherClosed
from .queues import Batchable, PriorityQueues, T

logger = logging.getLogger(__name__)


__all__ = ["Batchable", "InferenceBatcher"]


class InferenceBatcher(Generic[T]):
    """Collects requests and hands batches to ``run_batch``; ``instances + lookahead`` batches
    may be on their way at once."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[T]], Awaitable[None]],
        max_batch_size: int,
        max_batch_delay_ms: float,
        instances: int = 1,
        max_queued: int = 1024,
        starvation_ms: float = 2000.0,
        *,
        lookahead: int = 0,
        cost: BatchCost | None = None,
        deadline_aware: bool = True,
        expire: Callable[[list[T]], Awaitable[None]] | None = None,
    ) -> None:
        # NOTE: no queues, events or tasks here: they must be made inside the running loop (start()).
        self.name = name
        self._run_batch = run_batch
        self._max_items = max(1, max_batch_size)
        self._delay_s = max(0.0, max_batch_delay_ms) / 1000.0
        self._instances = max(1, instances)
        self._lookahead = max(0, lookahead)
        self._max_queued = max_queued
        self._starvation_s = starvation_ms / 1000.0
        self._cost = cost
        self._deadline_aware = deadline_aware and cost is not None
        self._expire = expire
        self._closed = True
        self._running: dict[asyncio.Task, float] = {}
        """batch on its way -> when it is predicted to finish (ms since the epoch)."""
        self._expiring: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._queues: PriorityQueues[T] = PriorityQueues(edf=self._deadline_aware)
        self._room = {p: asyncio.Semaphore(self._max_queued) for p in PRIORITIES}
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(self._instances + self._lookahead)
        self._closed = False
        self._shedding = False
        self._loop_task = asyncio.create_task(self._loop(), name=f"batcher:{self.name}")

    @property
    def queued(self) -> int:
        return len(self._queues)

    @property
    def backlogged(self) -> bool:
        """Whether enough is queued to fill a batch for every slot: the model has work in hand
        for at least one more full round, so new requests arriving a little later cost nothing."""
        return self._queues.items >= self._max_items * (self._instances + self._lookahead)

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting while its priority's queue is full (backpressure)."""
        if self._closed:
            raise BatcherClosed(f"batcher {self.name} is stopped")
        await self._room[item.priority].acquire()
        if self._closed or self._shedding:
            self._room[item.priority].release()
            raise BatcherClosed(f"batcher {self.name} is stopping")
        item.enqueued_at = time.monotonic()
        self._queues.push(item)
        self._changed.set()

    async def _loop(self) -> None:
        while True:
            while self._slots.locked():  # every slot busy: only shedding to do meanwhile
                await self._wait_change(self._shed_unreachable())
            await self._slots.acquire()
            batch = await self._gather()
            task = asyncio.create_task(self._run(batch), name=f"batch:{self.name}")
            # a look-ahead batch starts computing only when a running one ends
            self._running[task] = self._start_ms() + (self._predict(batch) or 0.0)
            task.add_done_callback(self._running.pop)

    async def _gather(self) -> list[T]:
        """Wait until a batch is due (a slot is held), shedding what cannot make its deadline."""
        while True:
            shed_at = self._shed_unreachable()
            oldest = self._queues.oldest()
            timeout = None
            if oldest is not None:
                now = time.monotonic()
                waited = now - oldest
                idle = len(self._running) < self._instances
                if idle or self._queues.items >= self._max_items or waited >= self._delay_s:
                    batch = self._cut(now)
                    if batch:
                        return batch
                    # everything queued would miss its deadline in this batch: look again as
                    # instances free up (a change) or as those requests become unreachable
                else:
                    timeout = self._delay_s - waited
            await self._wait_change(shed_at, timeout)

    async def _wait_change(self, shed_at: float | None, timeout: float | None = None) -> None:
        """Until something is queued or a batch ends, ``timeout`` passes, or (``shed_at``, ms
        since the epoch) a queued request becomes unreachable."""
        if shed_at is not None:
            until_shed = max(0.001, (shed_at - time.time() * 1000) / 1000)
            timeout = until_shed if timeout is None else min(timeout, until_shed)
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _predict(self, batch: Sequence[T]) -> float | None:
        if self._cost is None or not batch:
            return None
        return self._cost.predict_ms(sum(i.size for i in batch), sum(i.units for i in batch))

    def _start_ms(self) -> float:
        """When a batch cut now would start computing: at once with an instance idle, else when
        the first running batch is predicted to finish."""
        now = time.time() * 1000
        if len(self._running) < self._instances:
            return now
        return max(now, min(self._running.values()))

    def _cut(self, now: float) -> list[T]:
        fits = None
        if self._deadline_aware:
            start, cost = self._start_ms(), self._cost

            def fits(items: int, units: int, deadline: int | None) -> bool:
                predicted = cost.predict_ms(items, units)
                return deadline is None or predicted is None or start + predicted <= deadline

        batch = self._queues.cut(self._max_items, now, self._starvation_s, fits)
        for item in batch:
            self._room[item.priority].release()
        return batch

    def _shed_unreachable(self) -> float | None:
        """Hand what cannot make its deadline even if run at once to ``expire``; returns when the
        next queued request will be in that state (None: none will, or no shedding here)."""
        if not (self._deadline_aware and self._expire is not None):
            return None
        late = self._queues.unreachable(time.time() * 1000, self._cost.predict_ms)
        if late:
            for item in late:
                self._room[item.priority].release()
            task = asyncio.create_task(self._expire(late), name=f"expire:{self.name}")
            self._expiring.add(task)
            task.add_done_callback(self._expiring.discard)
        return self._queues.next_unreachable(self._cost.predict_ms)

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
        left = self._queues.clear()
        for item in left:
            self._room[item.priority].release()
        return left

    def resume(self) -> None:
        """Take requests again after :meth:`shed`."""
        self._shedding = False

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until nothing is queued or running (used on shutdown)."""
        deadline = time.monotonic() + timeout_s
        while (self.queued or self._running or self._expiring) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def stop(self) -> Sequence[T]:
        """Stop cutting batches, wait for running ones; return what was still queued."""
        if self._closed:
            return []
        self._closed = True
        self._loop_task.cancel()
        await asyncio.wait([self._loop_task])
        pending = [*self._running, *self._expiring]
        if pending:
            await asyncio.wait(pending)
        return self._queues.clear()

    async def __aenter__(self) -> InferenceBatcher[T]:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
