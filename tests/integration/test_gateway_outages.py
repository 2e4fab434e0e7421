"""The gateway through outages, on real servers: Redis stopped under a gateway with auth on (an API
key) answers 503 with Retry-After on every route and 2xx once it is back; a paused broker turns
/ready 503 naming kafka, and 200 once resumed; Idempotency-Key claims in a real Redis stay bound
until the broker acknowledged the request."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from helpers.http import assert_error
from helpers.keys import create_api_key
from helpers.waiting import until

pytestmark = pytest.mark.integration

TASK = "tabular-classify"
ONLY = {"STREAMINFER_TASKS": TASK}


def features_body() -> dict:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return {
        "inputs": {"features": dict(zip(data.feature_names, map(float, data.data[0]), strict=True))}
    }


async def dump(redis_url: str, pattern: str) -> dict[bytes, bytes]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        return {key: await redis.dump(key) async for key in redis.scan_iter(match=pattern)}
    finally:
        await redis.aclose()


async def restore(redis_url: str, dumped: dict[bytes, bytes]) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        for key, value in dumped.items():
            await redis.restore(key, 0, value, replace=True)
    finally:
        await redis.aclose()


async def test_redis_outage_with_auth_on_is_503_with_retry_after_then_2xx(make_stack, own_redis):
    from streaminfer.embedded import redis_address

    stack = make_stack(redis_url=redis_address(own_redis), STREAMINFER_AUTH="apikey", **ONLY)
    stack.add_worker()
    url = stack.add_gateway()
    body = features_body()
    headers = {"X-API-Key": await create_api_key(stack.redis_url, stack.prefix, "alice")}
    admin = {"X-API-Key": await create_api_key(stack.redis_url, stack.prefix, "ops", admin=True)}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        before = await client.post(
            f"/v1/infer/{TASK}", params={"wait": 30}, json=body, headers=headers
        )
        assert before.status_code == 200, before.text
        request_id = before.json()["request_id"]
        # NOTE: the embedded Redis keeps nothing across a restart; a real one would keep the keys
        keys = await dump(stack.redis_url, f"{stack.prefix}:api*")

        own_redis._terminate(5.0)  # Redis goes away
        routes = [
            ("POST", f"/v1/infer/{TASK}", body, headers),
            ("GET", f"/v1/results/{request_id}", None, headers),
            ("DELETE", f"/v1/requests/{request_id}", None, headers),
            ("GET", "/v1/tasks", None, headers),
            ("GET", "/admin/stats", None, admin),
            (
                "POST",
                f"/v2/models/{TASK}/infer",
                {
                    "inputs": [
                        {
                            "name": "features",
                            "datatype": "FP32",
                            "shape": [1, 30],
                            "data": [0.0] * 30,
                        }
                    ]
                },
                headers,
            ),
            ("GET", f"/v2/models/{TASK}", None, headers),
            (
                "POST",
                f"/v1/infer/{TASK}",
                body,
                {"Authorization": f"Bearer {headers['X-API-Key']}"},
            ),
        ]
        for method, path, json_body, credentials in routes:
            started = time.monotonic()
            response = await client.request(method, path, json=json_body, headers=credentials)
            assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert int(response.headers["retry-after"]) >= 1, (method, path)
            assert time.monotonic() - started < 15, (method, path)
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False

        own_redis.restart()
        await restore(stack.redis_url, keys)

        async def accepted():
            response = await client.post(f"/v1/infer/{TASK}", json=body, headers=headers)
            return response if response.status_code == 202 else None

        assert await until(accepted, timeout_s=30), "Redis is back: submissions are accepted again"
        after = await client.post(
            f"/v1/infer/{TASK}", params={"wait": 30}, json=body, headers=headers
        )
        assert after.status_code == 200 and after.json()["status"] == "succeeded", after.text
        assert (
            await client.get(f"/v1/results/{after.json()['request_id']}", headers=headers)
        ).status_code == 200


async def test_ready_names_kafka_while_the_broker_is_paused(make_stack, own_kafka, redis_server):
    from streaminfer.embedded import bootstrap_address

    stack = make_stack(bootstrap=bootstrap_address(own_kafka), redis_url=redis_server, **ONLY)
    stack.add_worker()
    url = stack.add_gateway()  # waits for /ready 200
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.get("/ready")).json()["checks"]["kafka"] is True
        os.kill(own_kafka.proc.pid, signal.SIGSTOP)
        try:
            slowest = 0.0

            async def kafka_down():
                nonlocal slowest
                started = time.monotonic()
                response = await client.get("/ready")
                slowest = max(slowest, time.monotonic() - started)
                return response if response.json()["checks"]["kafka"] is False else None

            paused = await until(kafka_down, timeout_s=10)
            assert paused is not None, "/ready still reports kafka up while the broker is paused"
            assert paused.status_code == 503 and paused.headers["retry-after"]
            assert paused.json()["status"] == "not ready"
            assert slowest < 5, f"/ready took {slowest:.1f}s: the probe must be bounded"
            v2 = await client.get("/v2/health/ready")
            assert v2.status_code == 503 and v2.json() == {"ready": False}
        finally:
            os.kill(own_kafka.proc.pid, signal.SIGCONT)

        async def ready():
            response = await client.get("/ready")
            return response if response.status_code == 200 else None

        resumed = await until(ready, timeout_s=60)
        assert resumed is not None and resumed.json()["checks"]["kafka"] is True
        assert (await client.get("/v2/health/ready")).status_code == 200


async def test_idempotency_claims_stay_bound_until_the_publish_is_confirmed(redis_server):
    from redis.asyncio import Redis

    from streaminfer.gateway.results import ResultStore
    from streaminfer.schemas import keys
    from streaminfer.schemas.codec import AvroCodec

    store = ResultStore(redis_server, AvroCodec(), "t-claims-" + os.urandom(4).hex(), ttl_s=60)
    await store.start()
    try:
        first = await store.claim_idempotency("alice", "k1", "rid-1", "digest-a")
        assert (first.request_id, first.same_body, first.published) == ("rid-1", True, False)
        retry = await store.claim_idempotency("alice", "k1", "rid-2", "digest-a")
        assert (retry.request_id, retry.same_body, retry.published) == ("rid-1", True, False), (
            "unconfirmed: the retry gets the first id, to publish it again"
        )
        await store.confirm_idempotency("alice", "k1", "rid-1", "digest-a")
        confirmed = await store.claim_idempotency("alice", "k1", "rid-3", "digest-a")
        assert (confirmed.request_id, confirmed.published) == ("rid-1", True)
        assert not (await store.claim_idempotency("alice", "k1", "rid-4", "digest-b")).same_body
        redis_key = keys.idempotency_key(store._prefix, "alice", "k1")
        assert 0 < await store.redis.ttl(redis_key) <= 60, "confirming keeps the claim's expiry"
        await store.confirm_idempotency("bob", "never-claimed", "rid-5", "digest-a")
        assert not await store.redis.exists(
            keys.idempotency_key(store._prefix, "bob", "never-claimed")
        )

        await store.mark_queued("rid-1", "tiny", "alice")
        await store.redis.hset(keys.status_key(store._prefix, "rid-1"), "status", "running")
        await store.mark_queued("rid-1", "tiny", "alice")  # published again by a retry
        assert (await store.status("rid-1"))["status"] == "running"

        assert await store.served_tasks(["a", "b"]) == {"a", "b"}
        assert await store.served_tasks() == {"a", "b"}
        assert await store.redis.ttl(keys.served_tasks_key(store._prefix)) == -1, (
            "the record never expires"
        )
    finally:
        raw = Redis.from_url(redis_server)
        try:
            stale = [k async for k in raw.scan_iter(match=f"{store._prefix}:*")]
            if stale:
                await raw.delete(*stale)
        finally:
            await raw.aclose()
        await store.stop()


class Waiter:
    """A gateway ResultStore on ``own_redis`` with one ``?wait=`` on its way, and what a worker
    does when it answers (store the result, announce it)."""

    def __init__(self, own_redis, liveness_s: float | None = None) -> None:
        from streaminfer.embedded import redis_address
        from streaminfer.gateway.results import ResultStore
        from streaminfer.schemas.codec import AvroCodec

        self.url, self.codec = redis_address(own_redis), AvroCodec()
        self.store = ResultStore(self.url, self.codec, "t-wait-" + os.urandom(4).hex(), ttl_s=60)
        if liveness_s is not None:
            self.store.liveness_s = liveness_s

    async def subscribed(self, up: bool = True) -> bool:
        return self.store._subscribed.is_set() == up

    async def __aenter__(self) -> Waiter:
        await self.store.start()
        assert await until(self.subscribed, timeout_s=10)
        self.waiting = asyncio.create_task(self.store.wait("rid-1", 20.0))
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.store.stop()

    async def answer(self) -> None:
        """Store and announce the result at once (as the worker does), then expect the wait to
        end with it within 5 s, not after its whole 20 s."""
        from redis.asyncio import Redis

        from streaminfer.schemas import keys
        from streaminfer.schemas.records import InferenceResult, Status

        result = InferenceResult(
            request_id="rid-1", task=TASK, status=Status.SUCCEEDED, worker_id="w"
        )
        async with Redis.from_url(self.url) as redis:
            key = keys.result_key(self.store._prefix, "rid-1")
            await redis.hset(key, keys.RESULT_FIELD_AVRO, self.codec.encode(result))
            await redis.publish(keys.result_channel(self.store._prefix, "rid-1"), b"1")
        started = time.monotonic()
        found = await asyncio.wait_for(self.waiting, 25)
        assert found is not None and found.request_id == "rid-1"
        assert time.monotonic() - started < 5, (
            "found once subscribed again, not after the whole wait"
        )


async def test_a_result_stored_while_the_subscription_was_down_ends_the_wait_once_it_is_back(
    own_redis,
):
    """A worker may store (and announce) a result while the gateway's result subscription is
    still reconnecting after a Redis restart: nobody hears that announcement. The waiter must
    look again once subscribed, not wait out its whole ?wait= (seen: a 30 s wait timed out)."""
    async with Waiter(own_redis) as waiter:
        own_redis._terminate(5.0)
        assert await until(lambda: waiter.subscribed(False), timeout_s=10, interval_s=0.02)
        own_redis.restart()
        await waiter.answer()


async def test_a_subscription_that_dies_without_a_reset_is_noticed_and_the_wait_ends(own_redis):
    """A connection that dies silently (a failover, an idle drop on the way: frozen Redis here)
    never raises on a blocking read; the listener's PING finds it, it resubscribes once Redis
    answers, and a result stored meanwhile ends the wait."""
    async with Waiter(own_redis, liveness_s=0.6) as waiter:
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            assert await until(lambda: waiter.subscribed(False), timeout_s=5, interval_s=0.05), (
                "a frozen subscription is taken as lost"
            )
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        await waiter.answer()
