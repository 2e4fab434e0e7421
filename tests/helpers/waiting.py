"""Waiting in integration tests: for a probe to answer, for results to land in Redis."""

from __future__ import annotations

import asyncio
import time


async def until(probe, timeout_s: float, interval_s: float = 0.1):
    """``probe()``'s first truthy answer within ``timeout_s`` (its last answer when none was)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)


async def count_results(redis_url: str, prefix: str) -> int:
    """Results stored in Redis under ``prefix``."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        return len([k async for k in client.scan_iter(match=f"{prefix}:result:*", count=1000)])
    finally:
        await client.aclose()
