"""Load through Kafka as an upstream producer and a downstream consumer see it: Avro requests
written straight to the request topics, results read from the results topic."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tqdm import tqdm

from schemas import topics
from schemas.codec import AvroCodec
from schemas.records import InferenceRequest, InferenceResult, Priority, Tensor

from ..settings import Settings
from .figures import NO_CACHE, TASK


async def drive_kafka(bootstrap: str, prefix: str, texts: list[str], concurrency: int, desc: str
                      ) -> tuple[list[float], float, list[int]]:
    codec = AvroCodec()
    results_topic = topics.results_topic(prefix, TASK)
    consumer = AIOKafkaConsumer(results_topic, bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=Settings().kafka_fetch_max_wait_ms, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    latencies: list[float] = []
    batch_sizes: list[int] = []
    window = asyncio.Semaphore(concurrency)
    done = asyncio.Event()
    progress = tqdm(total=len(texts), desc=desc, unit="req", leave=False)

    async def receive():
        while len(latencies) < len(texts):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for message in records:
                    rid = message.key.decode()
                    if rid in sent:
                        result = codec.decode(message.value, InferenceResult)
                        latencies.append(time.perf_counter() - sent.pop(rid))
                        batch_sizes.append(result.batch_size)
                        window.release()
                        progress.update()
        done.set()

    receiver = asyncio.create_task(receive())
    start = time.perf_counter()
    try:
        for text in texts:
            await window.acquire()
            request = InferenceRequest(request_id=str(uuid.uuid4()), task=TASK, priority=Priority.NORMAL,
                                       inputs=[Tensor.from_numpy("text", np.array([text], dtype=object))],
                                       parameters=NO_CACHE)
            sent[request.request_id] = time.perf_counter()
            await producer.send(topics.request_topic(prefix, TASK, Priority.NORMAL), codec.encode(request),
                                key=request.request_id.encode())
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - start
    finally:
        receiver.cancel()
        progress.close()
        await producer.stop()
        await consumer.stop()
    return latencies, elapsed, batch_sizes


async def drive_priority_burst(bootstrap: str, prefix: str, texts: list[str], mix: tuple[float, float, float],
                               seed: int = 1) -> dict[str, list[float]]:
    """Write every request at once (a backlog: saturation), priorities drawn by ``mix``
    (high, normal, low); return each priority's queueing times (created -> batch start), ms."""
    codec = AvroCodec()
    rng = np.random.default_rng(seed)
    levels = [Priority.HIGH, Priority.NORMAL, Priority.LOW]
    drawn = rng.choice(3, size=len(texts), p=list(mix))
    priority_of: dict[str, str] = {}
    consumer = AIOKafkaConsumer(topics.results_topic(prefix, TASK), bootstrap_servers=bootstrap,
                                group_id=f"bench-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                                fetch_max_wait_ms=Settings().kafka_fetch_max_wait_ms, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    queued: dict[str, list[float]] = {p.topic_suffix: [] for p in levels}
    try:
        futures = []
        for text, level in zip(texts, drawn, strict=True):
            priority = levels[level]
            request = InferenceRequest(request_id=str(uuid.uuid4()), task=TASK, priority=priority,
                                       inputs=[Tensor.from_numpy("text", np.array([text], dtype=object))],
                                       parameters=NO_CACHE)
            priority_of[request.request_id] = priority.topic_suffix
            futures.append(await producer.send(topics.request_topic(prefix, TASK, priority), codec.encode(request),
                                               key=request.request_id.encode()))
        await asyncio.gather(*futures)
        with tqdm(total=len(texts), desc="priority burst", unit="req", leave=False) as progress:
            seen = 0
            while seen < len(texts):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for message in records:
                        level = priority_of.pop(message.key.decode(), None)
                        if level is not None:
                            queued[level].append(codec.decode(message.value, InferenceResult).timings.queued_ms)
                            seen += 1
                            progress.update()
    finally:
        await producer.stop()
        await consumer.stop()
    return queued
