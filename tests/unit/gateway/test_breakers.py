"""The gateway's breakers in its real ResultStore and RequestProducer, over fakes of the Redis
and Kafka clients that fail: after N failures the dependency is not called any more and the
routes answer 503 SERVICE_UNAVAILABLE with Retry-After at once; the state shows on /metrics,
/ready and /admin/stats; a good probe after the reset time closes the breaker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError
from helpers.http import assert_error
from redis.exceptions import ConnectionError as RedisConnectionError

from streaminfer.gateway import metrics
from streaminfer.gateway.breakers import make_breakers
from streaminfer.gateway.errors import ServiceUnavailable
from streaminfer.gateway.producer import RequestProducer
from streaminfer.gateway.results import ResultStore
from streaminfer.schemas.codec import AvroCodec

from .conftest import MemoryStore


class FlakyRedis:
    """The two calls the routes below make; ``down``: they fail as redis-py does."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def _answer(self, value):
        self.calls += 1
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        return value

    def hgetall(self, key):
        return self._answer({b"status": b"queued", b"task": b"tiny", b"client_id": b""})

    def hget(self, key, field):
        return self._answer(None)

    async def ping(self):
        return await self._answer(True)


def store_with(redis, breakers) -> ResultStore:
    store = ResultStore("redis://127.0.0.1:1", AvroCodec(), "unit", 60)
    store.redis, store.breakers = redis, breakers
    return store


def gauge(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("inference_circuit_state", {"name": name})


async def test_the_store_stops_calling_redis_once_open_and_probes_after_the_reset():
    redis = FlakyRedis()
    store = store_with(redis, make_breakers(3, 0.2))
    for _ in range(3):
        with pytest.raises(ServiceUnavailable):
            await store.status("r1")
    assert redis.calls == 3 and gauge("redis") == 2
    with pytest.raises(ServiceUnavailable) as refused:
        await store.status("r1")
    assert redis.calls == 3, "open: Redis is not called"
    assert refused.value.details == {"circuit": "redis", "state": "open"}
    assert refused.value.headers["Retry-After"] == "1"
    await asyncio.sleep(0.25)
    redis.down = False
    assert (await store.status("r1"))["status"] == "queued"  # the probe
    assert gauge("redis") == 0


def test_routes_answer_503_with_retry_after_at_once_and_show_the_state(make_gateway):
    redis = FlakyRedis()
    breakers = make_breakers(2, 30.0)
    store = store_with(redis, breakers)
    client = make_gateway(store=store)
    client.app.state.breakers = breakers
    for _ in range(2):
        assert_error(client.get("/v1/results/r1"), 503, "SERVICE_UNAVAILABLE")
    refused = client.get("/v1/results/r1")
    assert_error(refused, 503, "SERVICE_UNAVAILABLE")
    assert 29 <= int(refused.headers["retry-after"]) <= 30
    assert refused.json()["details"]["circuit"] == "redis"
    assert redis.calls == 2
    assert 'inference_circuit_state{name="redis"} 2.0' in client.get("/metrics").text
    ready = client.get("/ready").json()
    assert (
        ready["circuits"]["redis"]["value"] == 2 and ready["circuits"]["kafka"]["state"] == "closed"
    )
    assert ready["checks"]["redis"] is False, "existing fields kept"


class NoLatencies:
    async def zrangebyscore(self, *args):
        return []


def test_admin_stats_shows_the_circuits(make_gateway):
    breakers = make_breakers(2, 30.0)
    client = make_gateway(store=MemoryStore())
    client.app.state.breakers = breakers
    client.store.redis = NoLatencies()
    for _ in range(2):
        with pytest.raises(KafkaConnectionError), breakers.guard("kafka"):
            raise KafkaConnectionError("down")
    stats = client.get("/admin/stats")
    assert stats.status_code == 200, stats.text
    assert stats.json()["circuits"]["kafka"]["state"] == "open"
    assert stats.json()["circuits"]["redis"]["state"] == "closed"
    assert "tiny" in stats.json()["tasks"], "existing fields kept"


class StuckProducer:
    """aiokafka's send() while the broker is away: waits for metadata until cancelled."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, *args, **kwargs):
        self.calls += 1
        await asyncio.sleep(3600)

    @property
    def client(self):
        raise AssertionError("unused")


async def test_the_producer_fails_fast_once_the_kafka_breaker_opens():
    from streaminfer.schemas.records import AuditEvent, AuditType, InferenceRequest, Priority

    producer = RequestProducer("127.0.0.1:1", AvroCodec(), "unit", request_timeout_ms=100)
    producer._producer = StuckProducer()
    producer.breakers = make_breakers(2, 30.0)
    producer._partition = lambda topic, key: 0
    request = InferenceRequest(
        request_id="r1",
        task="tiny",
        priority=Priority.NORMAL,
        inputs=[],
        parameters={},
        created_at=1,
        deadline_at=None,
    )
    accepted = AuditEvent(request_id="r1", task="tiny", type=AuditType.ACCEPTED, actor="gateway")
    loop = asyncio.get_running_loop()
    for _ in range(2):
        started = loop.time()
        with pytest.raises(ServiceUnavailable):
            await producer.submit(request, accepted)
        assert loop.time() - started >= 0.09, "closed: the timeout is waited out"
    started = loop.time()
    with pytest.raises(ServiceUnavailable) as refused:
        await producer.submit(request, accepted)
    assert loop.time() - started < 0.05, "open: at once"
    assert refused.value.details["circuit"] == "kafka" and producer._producer.calls == 2
    assert gauge("kafka") == 2
