"""Plain aiokafka helpers for integration tests: read a topic until enough has been seen."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer


async def collect(
    bootstrap: str, topic: str, until: Callable[[list], bool], timeout_s: float = 60.0
) -> list:
    """Every message on ``topic`` from the beginning, read until ``until(messages)`` or the timeout."""
    # NOTE: no consumer group: it commits nothing, and joining one costs 5 s per call on Tansu
    # (the group's initial rebalance delay); without one every partition is read from the start
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
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


async def produce_requests(
    bootstrap: str,
    prefix: str,
    count: int,
    task: str = "text-embedding",
    priority=None,
    texts: list[str] | None = None,
    **fields,
) -> list[str]:
    """Write ``count`` valid text requests straight to the request topic; returns their ids."""
    import numpy as np
    from aiokafka import AIOKafkaProducer

    from streaminfer.schemas.codec import AvroCodec
    from streaminfer.schemas.records import InferenceRequest, Priority, Tensor
    from streaminfer.schemas.topics import request_topic

    codec = AvroCodec()
    priority = priority or Priority.NORMAL
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    ids = []
    try:
        futures = []
        for i in range(count):
            text = texts[i % len(texts)] if texts else f"request {i} {uuid.uuid4().hex[:6]}"
            request = InferenceRequest(
                request_id=str(uuid.uuid4()),
                task=task,
                priority=priority,
                inputs=[Tensor.from_numpy("text", np.array([text], dtype=object))],
                **fields,
            )
            ids.append(request.request_id)
            futures.append(
                await producer.send(
                    request_topic(prefix, task, priority),
                    codec.encode(request),
                    key=request.request_id.encode(),
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return ids


async def read_records(
    bootstrap: str,
    topic: str,
    record_type,
    keys: set[bytes] | None,
    until: Callable[[dict], bool],
    timeout_s: float = 120.0,
) -> dict[str, list]:
    """Decoded records of ``topic`` grouped by key (only ``keys`` when given), read until
    ``until(grouped)`` or the timeout."""
    from streaminfer.schemas.codec import AvroCodec

    codec = AvroCodec()
    grouped: dict[str, list] = {}

    def done(messages: list) -> bool:
        for message in messages[done.seen :]:
            if keys is None or message.key in keys:
                grouped.setdefault(message.key.decode(), []).append(
                    codec.decode(message.value, record_type)
                )
        done.seen = len(messages)
        return until(grouped)

    done.seen = 0
    await collect(bootstrap, topic, done, timeout_s)
    return grouped


async def read_results(
    bootstrap: str,
    prefix: str,
    ids: list[str],
    task: str = "text-embedding",
    timeout_s: float = 120.0,
) -> dict[str, list]:
    """Every result on the task's results topic for ``ids``, waiting until each has one."""
    from streaminfer.schemas.records import InferenceResult
    from streaminfer.schemas.topics import results_topic

    wanted = {i.encode() for i in ids}
    return await read_records(
        bootstrap,
        results_topic(prefix, task),
        InferenceResult,
        wanted,
        lambda grouped: len(grouped) >= len(wanted),
        timeout_s,
    )
