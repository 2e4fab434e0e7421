"""The producer's broker probe behind ``/ready``: a real metadata request with a bounded wait,
cached briefly and shared by concurrent callers, instead of the cached metadata (which says
"connected" while the broker is paused)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError

import streaminfer.gateway.producer as producer_module
from streaminfer.gateway.producer import RequestProducer


class FakeClient:
    cluster = SimpleNamespace(brokers=lambda: ["broker-1"])  # cached metadata: always "connected"

    def __init__(self) -> None:
        self.calls = 0
        self.answer: str = "ok"  # ok | hang | refuse

    async def fetch_all_metadata(self):
        self.calls += 1
        if self.answer == "hang":  # a paused broker: the connection stays open, nothing comes back
            await asyncio.sleep(3600)
        if self.answer == "refuse":
            raise KafkaConnectionError("Unable to connect to node 1")
        return object()


class FakeKafkaProducer:
    def __init__(self, **config) -> None:
        self.client = FakeClient()

    async def start(self):
        pass

    async def stop(self):
        pass


@pytest.fixture
async def producer(monkeypatch):
    monkeypatch.setattr(producer_module, "AIOKafkaProducer", FakeKafkaProducer)
    made = RequestProducer(
        "127.0.0.1:9092", codec=None, prefix="unit", probe_timeout_s=0.2, probe_cache_s=0.3
    )
    await made.start()
    yield made
    await made.stop()


async def test_a_paused_broker_is_not_reachable_within_the_probe_timeout(producer):
    client = producer._producer.client
    assert await producer.is_reachable()
    client.answer = "hang"
    await asyncio.sleep(0.31)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await producer.is_reachable()
    assert loop.time() - started < 1.0
    client.answer = "ok"
    await asyncio.sleep(0.31)
    assert await producer.is_reachable()


async def test_a_refused_connection_is_not_reachable(producer):
    producer._producer.client.answer = "refuse"
    assert not await producer.is_reachable()


async def test_the_answer_is_cached_and_concurrent_callers_share_one_probe(producer):
    client = producer._producer.client
    client.answer = "hang"
    answers = await asyncio.gather(*(producer.is_reachable() for _ in range(20)))
    assert answers == [False] * 20 and client.calls == 1
    client.answer = "ok"
    assert not await producer.is_reachable(), "within probe_cache_s: the cached answer"
    assert client.calls == 1
    await asyncio.sleep(0.31)
    assert await producer.is_reachable() and client.calls == 2


async def test_a_stopped_producer_is_not_reachable(producer):
    await producer.stop()
    await producer.stop()  # safe twice
    assert not await producer.is_reachable()
