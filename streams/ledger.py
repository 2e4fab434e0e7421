"""The ack ledger: per partition, an event is acknowledged only once it and every event before it
on that partition are answered, so a commit never passes an unanswered event.

faust commits the first consecutive run of acked offsets, and its own gap check lets one
unacked offset right after the committed one (or any, while nothing is committed yet) be passed.
Answers arrive in any order here (rejections at once, several batches and their background
writes, priorities reordering requests), so the ledger holds an answered event until all the
earlier ones of its partition are answered, then acks the run in offset order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

logger = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[object]]
Release = Callable[[], None]


class _State(Enum):
    PENDING = 0
    ANSWERED = 1
    RELEASED = 2


@dataclass(eq=False, slots=True)
class _Partition:
    key: tuple[str, int]
    entries: deque[Entry] = field(default_factory=deque)
    broken: bool = False
    """An event was given up: nothing after it may be acked until the partition is re-read."""
    forgotten: bool = False
    """Dropped by a reset: its entries' answers no longer ack anything."""


@dataclass(eq=False, slots=True)
class Entry:
    """One event taken from a partition; answer it (or give it up) exactly once."""

    offset: int
    ack: Ack
    release: Release
    part: _Partition
    state: _State = _State.PENDING


class AckLedger:
    """Tracks every event a worker holds, per (topic, partition), in the order they were taken."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._acking = asyncio.Lock()  # FIFO: runs are acked in the order they were popped

    def take(self, topic: str, partition: int, offset: int, ack: Ack, release: Release) -> Entry:
        """Register an event as it is delivered (faust delivers a partition in offset order)."""
        key = (topic, partition)
        part = self._partitions.get(key)
        if part is None:
            part = self._partitions[key] = _Partition(key)
        entry = Entry(offset, ack, release, part)
        part.entries.append(entry)
        return entry

    async def answer(self, entry: Entry) -> None:
        """Its outcome is written: ack it and every answered event after it that now can be."""
        if entry.state is not _State.PENDING:
            return
        entry.state = _State.ANSWERED
        if (
            entry.part.forgotten
        ):  # by reset(): the answer is in Redis, found as a duplicate when the
            return  # event is redelivered
        run = self._settle(entry.part)
        if run:
            async with self._acking:
                for done in run:
                    await done.ack()

    def give_up(self, entry: Entry) -> None:
        """Leave it unacknowledged (shutdown, rebalance): it is redelivered from the committed
        offset, and so is everything after it on its partition; what comes before it is still
        acked as it is answered."""
        if entry.state is not _State.PENDING:
            return
        entry.state = _State.RELEASED
        entry.release()
        if not entry.part.forgotten:
            entry.part.broken = True
            self._settle(entry.part)

    @property
    def held(self) -> int:
        """Events taken and not yet acked or given up."""
        return sum(len(p.entries) for p in self._partitions.values())

    def unanswered(self, topic: str, partition: int) -> list[int]:
        """Offsets of the partition still waiting for an answer (for tests and logs)."""
        part = self._partitions.get((topic, partition))
        return [e.offset for e in part.entries if e.state is _State.PENDING] if part else []

    def reset(self) -> int:
        """After a rebalance: give up every event still held and forget every partition (faust
        re-reads them from the committed offsets). Returns how many were given up."""
        held = [e for p in self._partitions.values() for e in p.entries]
        for part in self._partitions.values():
            part.forgotten = True
        self._partitions.clear()
        for entry in held:
            if entry.state is not _State.RELEASED:
                entry.state = _State.RELEASED
                entry.release()
        return len(held)

    def _settle(self, part: _Partition) -> list[Entry]:
        """Pop the run of answered events at the head (to be acked, in order). Behind a given-up
        event, an answered one is released rather than acked: acking it would let faust commit
        past the given-up one. The partition is forgotten once nothing in it waits."""
        run = []
        while part.entries and part.entries[0].state is _State.ANSWERED:
            run.append(part.entries.popleft())
        if part.broken:
            behind = False
            for e in part.entries:
                if e.state is _State.RELEASED:
                    behind = True
                elif behind and e.state is _State.ANSWERED:
                    e.state = _State.RELEASED
                    e.release()
            if all(e.state is _State.RELEASED for e in part.entries):
                self._forget(part)
        elif not part.entries:
            self._forget(part)
        return run

    def _forget(self, part: _Partition) -> None:
        part.forgotten = True
        if self._partitions.get(part.key) is part:
            del self._partitions[part.key]
