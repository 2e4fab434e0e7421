"""Which tasks some worker has ever served, so the gateway refuses a task no worker has taken up
(a task dropped into the repository after the workers started) instead of queueing it forever.

A task once served stays accepted while its workers are down: Kafka holds its requests across
worker restarts. The record is a Redis set fed from the workers' heartbeats, read by every gateway.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Protocol


class HeartbeatStore(Protocol):
    async def live_workers(self) -> dict[str, list[str]]: ...

    async def served_tasks(self, seen: Iterable[str] = ()) -> set[str]: ...


class ServedTasks:
    """Tasks ever served, as this gateway has seen them: in memory once seen (the record only
    grows), otherwise looked up in Redis at most once per ``refresh_s``."""

    def __init__(self, store: HeartbeatStore, refresh_s: float = 1.0) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._known: set[str] = set()
        self._looked_at = -math.inf
        self._lock: asyncio.Lock | None = None

    async def is_served(self, task: str) -> bool:
        """Whether some worker has ever served ``task``; no Redis call for a task seen before,
        nor for an unseen one looked up less than ``refresh_s`` ago."""
        if task in self._known:
            return True
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one look-up at a time; those waiting read its answer
            if task not in self._known and time.monotonic() - self._looked_at >= self._refresh_s:
                await self.refresh()
        return task in self._known

    async def refresh(self) -> None:
        """Record the tasks of the live heartbeats and read back everything ever recorded."""
        workers = await self._store.live_workers()
        live = {task for tasks in workers.values() for task in tasks}
        self._known |= live | await self._store.served_tasks(live)
        self._looked_at = time.monotonic()

    async def observe(self, workers: dict[str, list[str]]) -> None:
        """Heartbeats read for another purpose (``/ready``): record tasks not yet known."""
        new = {task for tasks in workers.values() for task in tasks} - self._known
        if new:
            self._known |= await self._store.served_tasks(new) | new
