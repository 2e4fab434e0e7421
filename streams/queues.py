"""The requests a model's batcher holds, one queue per priority, and how a batch is cut from them.

Within a priority, requests with a deadline go earliest deadline first, before those without
one, which go in arrival order (``edf=False``: every request in arrival order, the FIFO
baseline). Across priorities high goes before normal before low, except that a queue whose
oldest request has waited past the starvation bound goes first.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from streaminfer.schemas.records import Priority
from streaminfer.schemas.topics import PRIORITIES


class Batchable(Protocol):
    size: int
    """Items this request carries (its first dimension)."""
    units: int
    """How large its inputs are (text bytes, tensor elements): the batch cost's second term."""
    priority: Priority
    deadline_ms: int | None
    """When its result is due (ms since the epoch); None = no deadline."""
    enqueued_at: float
    """``time.monotonic()`` when it entered the batcher."""


T = TypeVar("T", bound=Batchable)

Fits = Callable[[int, int, int | None], bool]
"""(items, units, earliest deadline in ms) of a batch -> whether it completes in time."""
Cost = Callable[[int, int], float | None]
"""(items, units) -> predicted compute ms of such a batch; None = not known yet."""


class _Queue(Generic[T]):
    """One priority's requests: a heap in run order, and the same requests by arrival (the
    starvation guard looks at the oldest)."""

    def __init__(self, edf: bool) -> None:
        self._edf = edf
        self._heap: list[tuple[int, int, int, T]] = []
        self._arrived: OrderedDict[int, T] = OrderedDict()

    def push(self, item: T, seq: int) -> None:
        if not self._edf:
            key = (0, 0)
        elif item.deadline_ms is None:
            key = (1, 0)  # after every request with a deadline
        else:
            key = (0, item.deadline_ms)
        heapq.heappush(self._heap, (*key, seq, item))
        self._arrived[seq] = item

    def head(self) -> T:
        return self._heap[0][3]

    def pop(self) -> T:
        *_, seq, item = heapq.heappop(self._heap)
        del self._arrived[seq]
        return item

    def set_aside(self) -> tuple:
        """Take the head out of the run order only (it stays queued): see :meth:`put_back`."""
        return heapq.heappop(self._heap)

    def put_back(self, entries: list[tuple]) -> None:
        for entry in entries:
            heapq.heappush(self._heap, entry)

    def oldest(self) -> float:
        return next(iter(self._arrived.values())).enqueued_at

    def clear(self) -> list[T]:
        left = list(self._arrived.values())
        self._heap.clear()
        self._arrived.clear()
        return left

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[T]:
        return iter(self._arrived.values())


class PriorityQueues(Generic[T]):
    def __init__(self, edf: bool = True) -> None:
        self.edf = edf
        self._queues: dict[Priority, _Queue[T]] = {p: _Queue(edf) for p in PRIORITIES}
        self._seq = itertools.count()
        self.items = 0
        """Items queued (the sum of their sizes)."""

    def push(self, item: T) -> None:
        self._queues[item.priority].push(item, next(self._seq))
        self.items += item.size

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __iter__(self) -> Iterator[T]:
        return (item for q in self._queues.values() for item in q)

    def oldest(self) -> float | None:
        """When the request queued longest entered (``time.monotonic()``); None when empty."""
        heads = [q.oldest() for q in self._queues.values() if q]
        return min(heads) if heads else None

    def clear(self) -> list[T]:
        left = [item for q in self._queues.values() for item in q.clear()]
        self.items = 0
        return left

    def _pop(self, queue: _Queue[T]) -> T:
        item = queue.pop()
        self.items -= item.size
        return item

    def unreachable(self, now_ms: float, cost: Cost) -> list[T]:
        """Take out the requests that miss their deadline even if run alone at once. Only the
        heads need looking at: a queue runs in deadline order (without ``edf``: nothing is taken)."""
        late: list[T] = []
        if not self.edf:
            return late
        for queue in self._queues.values():
            while queue and (head := queue.head()).deadline_ms is not None:
                predicted = cost(head.size, head.units)
                if predicted is None or now_ms + predicted <= head.deadline_ms:
                    break
                late.append(self._pop(queue))
        return late

    def next_unreachable(self, cost: Cost) -> float | None:
        """When (ms since the epoch) the first queued request becomes unreachable by
        :meth:`unreachable`'s rule; None when none will (no deadlines, cost unknown, FIFO)."""
        if not self.edf:
            return None
        times = []
        for queue in self._queues.values():
            if queue and (head := queue.head()).deadline_ms is not None:
                predicted = cost(head.size, head.units)
                if predicted is not None:
                    times.append(head.deadline_ms - predicted)
        return min(times) if times else None

    def cut(
        self, max_items: int, now: float, starvation_s: float, fits: Fits | None = None
    ) -> list[T]:
        """Cut one batch: priorities in order (a starving one first), each queue in its run order.
        A request is never split, and the first one is taken even when larger than ``max_items``.
        With ``fits``, the batch stops growing before it would finish past the earliest deadline
        in it, and a request that would miss its deadline even alone in this batch stays queued
        (without setting the batch's deadline): the next batch may start sooner, and once it
        cannot make it even if run at once, :meth:`unreachable` takes it out."""
        order = sorted(
            PRIORITIES,
            key=lambda p: (
                not (self._queues[p] and now - self._queues[p].oldest() > starvation_s),
                PRIORITIES.index(p),
            ),
        )
        batch: list[T] = []
        aside: dict[Priority, list[tuple]] = {}
        room, units, earliest = max_items, 0, None
        try:
            for priority in order:
                queue = self._queues[priority]
                while queue:
                    head = queue.head()
                    if batch and head.size > room:
                        return batch
                    if (
                        fits is not None
                        and head.deadline_ms is not None
                        and not fits(head.size, head.units, head.deadline_ms)
                    ):
                        aside.setdefault(priority, []).append(queue.set_aside())
                        continue
                    deadline = _earliest(earliest, head.deadline_ms)
                    if (
                        batch
                        and fits is not None
                        and not fits(max_items - room + head.size, units + head.units, deadline)
                    ):
                        return batch
                    batch.append(self._pop(queue))
                    room, units, earliest = room - head.size, units + head.units, deadline
                    if room <= 0:
                        return batch
            return batch
        finally:
            for priority, entries in aside.items():
                self._queues[priority].put_back(entries)


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
