"""What serving a task costs the live workers, as their heartbeats report it (each one's
batch-cost fit and instances, ``keys.service_key``), and how long a backlog takes to drain:
lag × smoothed per-item service time ÷ live instances, the signal an autoscaler scales on
(a backlog of image requests costs more than one of the same count of tabular ones)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from redis.asyncio import Redis

from streaminfer.schemas import keys

logger = logging.getLogger(__name__)


async def read_service(redis: Redis, prefix: str, tasks: Sequence[str]) -> dict[str, dict]:
    """task -> ``{"live_instances", "service_ms_per_item", "workers": {worker_id: fit}}`` from
    the entries of live workers (one round trip for all tasks). A task no live worker serves
    has 0 live instances and no service time."""
    tasks = list(tasks)
    async with redis.pipeline(transaction=False) as pipe:
        for task in tasks:
            pipe.hgetall(keys.service_key(prefix, task))
        replies = await pipe.execute()
    fresh = time.time() * 1000 - keys.SERVICE_STALE_MS
    found = {}
    for task, entries in zip(tasks, replies, strict=True):
        workers = {}
        for worker, value in entries.items():
            try:
                figures = keys.decode_service(value)
                if float(figures["at"]) >= fresh and int(figures["instances"]) >= 1:
                    workers[worker.decode() if isinstance(worker, bytes) else worker] = figures
            except (ValueError, KeyError, TypeError) as exc:  # a foreign or old entry: not counted
                logger.debug("service entry of %s for %s unreadable: %r", worker, task, exc)
        live = sum(int(w["instances"]) for w in workers.values())
        timed = [
            (w["service_ms_per_item"], int(w["instances"]))
            for w in workers.values()
            if isinstance(w.get("service_ms_per_item"), int | float)
        ]
        per_item = sum(ms * n for ms, n in timed) / sum(n for _, n in timed) if timed else None
        found[task] = {"live_instances": live, "service_ms_per_item": per_item, "workers": workers}
    return found


def drain_seconds(lag: int, service: dict | None) -> float:
    """Seconds the live instances take to work off ``lag`` requests; 0 without a backlog, NaN
    while nobody can say (no live worker, or none has timed a batch yet)."""
    if lag <= 0:
        return 0.0
    if not service or not service["live_instances"] or service["service_ms_per_item"] is None:
        return math.nan
    return lag * service["service_ms_per_item"] / 1000.0 / service["live_instances"]
