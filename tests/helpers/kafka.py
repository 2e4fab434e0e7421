"""Plain aiokafka helpers for integration tests: read a topic until enough has been seen."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer


async def collect(bootstrap: str, topic: str, until: Callable[[list], bool], timeout_s: float = 60.0) -> list:
    """Every message on ``topic`` from the beginning, read until ``until(messages)`` or the timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"test-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    messages: list = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not until(messages) and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                messages.extend(records)
    finally:
        await consumer.stop()
    return messages
