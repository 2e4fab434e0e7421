"""Each write of a worker failing once, and for a while, on the real broker and Redis: the
worker's real publisher, with a fault injected at the write (the Redis store, the produce to
the results, audit or dead-letter topic), under a RequestProcessor fed by the test. Nothing is
lost, each request has one result on its topic, every event is acked in order, none stalls.
Also: a dead letter past the producer's size limit, and the commit failing while the broker
is paused under a real worker process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import numpy as np
import pytest
from aiokafka.errors import KafkaTimeoutError
from helpers.kafka import read_records
from helpers.worker_fakes import TASK, FakeModel, FakeRepository
from redis.exceptions import ConnectionError as RedisConnectionError

from streaminfer.kafka_admin import ensure_topics
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import (
    DeadLetter,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
)
from streaminfer.schemas.topics import (
    all_topics,
    audit_topic,
    dlq_topic,
    request_topic,
    results_topic,
)
from streaminfer.streams.processor import RequestProcessor
from streaminfer.streams.publisher import ResultPublisher
from streaminfer.streams.requests import SourceEvent

pytestmark = pytest.mark.integration

CODEC = AvroCodec()


class Fault:
    """Makes ``fail()`` true once, or during ``for_s`` seconds from the first time it is asked."""

    def __init__(self, once: bool, for_s: float) -> None:
        self.once, self.for_s = once, for_s
        self.fired = 0
        self._since: float | None = None

    def fail(self) -> bool:
        now = time.monotonic()
        self._since = self._since or now
        if (self.once and not self.fired) or (not self.once and now - self._since < self.for_s):
            self.fired += 1
            return True
        return False


async def started_publisher(kafka_server: str, redis_server: str) -> tuple[str, ResultPublisher]:
    """A fresh prefix with its topics (3 partitions), and a started worker publisher on it."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_server, [*all_topics(prefix, [TASK])], partitions=3)
    publisher = ResultPublisher(
        kafka_server, redis_server, CODEC, prefix, result_ttl_s=600, request_timeout_ms=3000
    )
    await publisher.start()
    return prefix, publisher


def inject(publisher: ResultPublisher, write: str, fault: Fault, prefix: str) -> None:
    """Fail ``write`` of the real publisher (Redis store, or the produce to one topic)."""
    if write == "redis-store":
        original = publisher.store_results

        async def store_results(results):
            if fault.fail():
                raise RedisConnectionError("injected: Redis store fails")
            return await original(results)

        publisher.store_results = store_results
        return
    topic = {
        "results-produce": results_topic(prefix, TASK),
        "audit-produce": audit_topic(prefix),
        "dead-letter-produce": dlq_topic(prefix),
    }[write]
    send = publisher.producer.send

    async def failing_send(to, *args, **kwargs):
        if to == topic and fault.fail():
            raise KafkaTimeoutError(f"injected: produce to {to} fails")
        return await send(to, *args, **kwargs)

    publisher.producer.send = failing_send


def events(prefix: str, count: int) -> tuple[list[SourceEvent], list[str], list[int]]:
    """``count`` valid requests on 3 partitions, each followed by an undecodable event."""
    topic = request_topic(prefix, TASK, Priority.NORMAL)
    out, ids, junk = [], [], []
    offsets = [0, 0, 0]
    for i in range(count):
        p = i % 3
        request = InferenceRequest(
            request_id=str(uuid.uuid4()),
            task=TASK,
            inputs=[Tensor.from_numpy("x", np.array([[i, 1.0]], dtype=np.float32))],
        )
        out.append(
            SourceEvent(topic, p, offsets[p], request.request_id.encode(), CODEC.encode(request))
        )
        ids.append(request.request_id)
        out.append(SourceEvent(topic, p, offsets[p] + 1, b"junk", b"not avro %d" % i))
        junk.append((p, offsets[p] + 1))
        offsets[p] += 2
    return out, ids, junk


@pytest.mark.parametrize(
    "write", ["redis-store", "results-produce", "audit-produce", "dead-letter-produce"]
)
@pytest.mark.parametrize("once", [True, False], ids=["once", "for-3s"])
async def test_a_failing_write_loses_nothing_and_stalls_nothing(
    kafka_server, redis_server, write, once
):
    prefix, publisher = await started_publisher(kafka_server, redis_server)
    fault = Fault(once, for_s=3.0)
    inject(publisher, write, fault, prefix)
    processor = RequestProcessor(
        repository=FakeRepository(FakeModel()),
        publisher=publisher,
        codec=CODEC,
        prefix=prefix,
        worker_id="w-faults",
        tasks=[TASK],
        retry_backoff_s=0.001,
    )
    sources, ids, junk = events(prefix, 60)
    acked: list[tuple[int, int]] = []
    started = time.monotonic()
    await processor.start()
    try:
        for source in sources:

            async def ack(at=(source.partition, source.offset)):
                acked.append(at)

            await processor.handle(source, ack)
        while len(acked) < len(sources) and time.monotonic() - started < 60:
            await asyncio.sleep(0.05)
    finally:
        await processor.stop()
        await publisher.stop()
    took = time.monotonic() - started
    assert fault.fired, "the fault fired"
    assert len(acked) == len(sources), f"{len(sources) - len(acked)} events never acked"
    for p in range(3):
        mine = [o for pp, o in acked if pp == p]
        assert mine == sorted(mine) == list(range(len(mine))), f"partition {p} acked out of order"
    wanted = {i.encode() for i in ids}
    results = await read_records(
        kafka_server,
        results_topic(prefix, TASK),
        InferenceResult,
        wanted,
        lambda g: len(g) >= len(wanted),
        timeout_s=30,
    )
    assert set(results) == set(ids), f"{len(set(ids) - set(results))} results not on their topic"
    for rid, copies in results.items():
        assert len({(c.worker_id, c.completed_at) for c in copies}) == 1, f"{rid}: several results"
        assert copies[0].status is Status.SUCCEEDED
    letters = await read_records(
        kafka_server,
        dlq_topic(prefix),
        DeadLetter,
        None,
        lambda g: sum(map(len, g.values())) >= len(junk),
        timeout_s=30,
    )
    sources_seen = sorted((lt.partition, lt.offset) for group in letters.values() for lt in group)
    assert sources_seen == sorted(junk), "one dead letter per undecodable event"
    print(
        f"\n{write} failing {'once' if once else 'for 3 s'}: fired {fault.fired}x, "
        f"{len(ids)} results and {len(junk)} dead letters, all acked in {took:.1f}s"
    )


async def test_a_dead_letter_past_the_producer_limit_is_cut_to_fit_and_never_blocks(
    kafka_server, redis_server
):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_server, [*all_topics(prefix, [TASK])], partitions=1)
    limit = 64 * 1024
    publisher = ResultPublisher(
        kafka_server, redis_server, CODEC, prefix, result_ttl_s=600, max_request_size=limit
    )
    await publisher.start()
    processor = RequestProcessor(
        repository=FakeRepository(FakeModel()),
        publisher=publisher,
        codec=CODEC,
        prefix=prefix,
        worker_id="w-big",
        tasks=[TASK],
    )
    payload = os.urandom(
        limit - 300
    )  # fits as a request; with the letter's ~200 bytes it would not
    acked = []
    await processor.start()
    try:

        async def ack():
            acked.append(0)

        await processor.handle(
            SourceEvent(request_topic(prefix, TASK, Priority.NORMAL), 0, 0, b"big", payload), ack
        )
        deadline = time.monotonic() + 20
        while not acked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await processor.stop()
        await publisher.stop()
    assert acked == [0], "the event was answered"
    letters = await read_records(
        kafka_server, dlq_topic(prefix), DeadLetter, None, lambda g: bool(g), timeout_s=20
    )
    (letter,) = [lt for group in letters.values() for lt in group]
    import hashlib

    assert letter.truncated and 0 < len(letter.payload) < len(payload)
    assert payload.startswith(letter.payload), "the head of the payload, verbatim"
    assert letter.payload_length == len(payload)
    assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()


@pytest.mark.slow
async def test_commits_failing_while_the_broker_is_paused_lose_nothing(
    make_stack, own_kafka, redis_server
):
    from helpers.kafka import produce_requests, read_results

    from streaminfer.embedded import bootstrap_address

    stack = make_stack(
        bootstrap=bootstrap_address(own_kafka),
        redis_url=redis_server,
        STREAMINFER_TASKS="text-embedding",
        STREAMINFER_KAFKA_REQUEST_TIMEOUT_MS="2000",
    )
    worker = stack.add_worker()
    ids = await produce_requests(stack.bootstrap, stack.prefix, 400)
    await asyncio.sleep(2.0)  # the worker is mid-stream
    os.kill(own_kafka.proc.pid, signal.SIGSTOP)  # commits, fetches and produces all fail
    try:
        await asyncio.sleep(5.0)
    finally:
        os.kill(own_kafka.proc.pid, signal.SIGCONT)
    results = await read_results(stack.bootstrap, stack.prefix, ids, timeout_s=180)
    assert set(results) == set(ids)
    for rid, copies in results.items():
        assert len({(c.worker_id, c.completed_at) for c in copies}) == 1, rid
        assert copies[0].status is Status.SUCCEEDED
    assert worker.poll() is None, "the worker rode out the pause"
