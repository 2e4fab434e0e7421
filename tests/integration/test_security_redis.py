"""Security review findings checked against the real redis-server: no hash comes back without a
TTL after it expired (cancel, the published flag); the rate limit by Redis' clock; the live
workers read from a small index, never by scanning the keyspace."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio import Redis

from streaminfer.gateway.results import ResultStore
from streaminfer.schemas import keys
from streaminfer.schemas.codec import AvroCodec
from streaminfer.streams.publisher import ResultPublisher

pytestmark = pytest.mark.integration

CODEC = AvroCodec()


@pytest.fixture
async def redis(redis_server):
    client = Redis.from_url(redis_server)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server):
    store = ResultStore(redis_server, CODEC, f"t{uuid.uuid4().hex[:8]}", ttl_s=600)
    await store.start()
    yield store
    await store.stop()


async def test_cancel_after_the_status_expired_leaves_no_key_without_ttl(store, redis):
    rid = str(uuid.uuid4())
    await store.mark_queued(rid, "tiny", "alice")
    await redis.delete(keys.status_key(store._prefix, rid))  # as if its TTL ran out
    await store.cancel(rid)
    assert await redis.exists(keys.status_key(store._prefix, rid)) == 0
    assert await redis.ttl(keys.cancel_key(store._prefix, rid)) > 0


async def test_cancel_of_a_live_request_keeps_its_ttl(store, redis):
    rid = str(uuid.uuid4())
    await store.mark_queued(rid, "tiny", "alice")
    await store.cancel(rid)
    assert (await store.status(rid))["status"] == "cancelling"
    assert await redis.ttl(keys.status_key(store._prefix, rid)) > 0


async def test_the_published_flag_after_expiry_leaves_no_key_without_ttl(redis_server, redis):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    publisher = ResultPublisher("unused:9092", redis_server, CODEC, prefix, result_ttl_s=600)
    publisher.redis = redis  # only its Redis writes are under test: no broker
    live, expired = str(uuid.uuid4()), str(uuid.uuid4())
    for rid in (live, expired):
        await redis.hset(keys.result_key(prefix, rid), keys.RESULT_FIELD_AVRO, b"x")
        await redis.expire(keys.result_key(prefix, rid), 600)
        await redis.hset(keys.status_key(prefix, rid), "status", "running")
        await redis.expire(keys.status_key(prefix, rid), 600)
    await redis.delete(keys.result_key(prefix, expired), keys.status_key(prefix, expired))
    async with redis.pipeline(transaction=False) as pipe:
        publisher._flag_published(pipe, [live, expired])
        await pipe.execute()
    assert (
        await redis.exists(keys.result_key(prefix, expired), keys.status_key(prefix, expired)) == 0
    )
    assert await redis.hget(keys.result_key(prefix, live), keys.RESULT_FIELD_PUBLISHED) == b"1"
    assert await redis.hget(keys.status_key(prefix, live), "status") == b"done"
    assert await redis.ttl(keys.result_key(prefix, live)) > 0
    assert await redis.ttl(keys.status_key(prefix, live)) > 0


async def test_the_rate_limit_holds_across_gateways_whose_clocks_disagree(redis, monkeypatch):
    """Two gateways sharing a bucket, one of them an hour ahead: the bucket refills by Redis'
    clock, so the fast clock grants nothing extra (finding 7)."""
    from streaminfer.gateway.apikeys import Principal
    from streaminfer.gateway.errors import TooManyRequests
    from streaminfer.gateway.limits import RateLimiter

    principal = Principal(f"c{uuid.uuid4().hex[:8]}", frozenset())
    limiter = RateLimiter(redis, f"t{uuid.uuid4().hex[:8]}", per_s=0.01, burst=2)
    real = time.time
    await limiter.check(principal)
    await limiter.check(principal)  # the burst is spent
    for skew_s in (3600, -3600, 10**6):
        monkeypatch.setattr(time, "time", lambda skew_s=skew_s: real() + skew_s)
        with pytest.raises(TooManyRequests) as refused:
            await limiter.check(principal)
        assert int(refused.value.headers["Retry-After"]) >= 1
    monkeypatch.setattr(time, "time", real)
    with pytest.raises(TooManyRequests):
        await limiter.check(principal)


async def test_live_workers_come_from_the_index_never_a_scan(store, redis, monkeypatch):
    """/ready and /admin/stats read the workers' sorted set and their heartbeat keys; a keyspace
    full of results costs them nothing (finding 2)."""
    publisher = ResultPublisher(
        "unused:9092", store._redis_url, CODEC, store._prefix, result_ttl_s=600
    )
    publisher.redis = redis

    async def no_scan(*args, **kwargs):
        raise AssertionError("live_workers scanned the keyspace")

    monkeypatch.setattr(store.redis, "scan_iter", no_scan)
    monkeypatch.setattr(store.redis, "scan", no_scan)
    await publisher.heartbeat("w-live", ["tiny"], ttl_s=30)
    await publisher.heartbeat("w-gone", ["tiny", "other"], ttl_s=30)
    await publisher.heartbeat("w-expiring", ["other"], ttl_s=0.05)
    assert set(await store.live_workers()) == {"w-live", "w-gone", "w-expiring"}
    await publisher.forget_worker("w-gone")
    await asyncio.sleep(0.2)  # w-expiring's heartbeat runs out
    assert await store.live_workers() == {"w-live": ["tiny"]}
    index = keys.workers_key(store._prefix)
    assert set(await redis.zrange(index, 0, -1)) == {
        b"w-live",
        b"w-expiring",
    }  # w-gone removed at once
    assert await redis.smembers(keys.served_tasks_key(store._prefix)) == {b"tiny", b"other"}


async def test_index_members_long_expired_are_dropped(store, redis):
    publisher = ResultPublisher(
        "unused:9092", store._redis_url, CODEC, store._prefix, result_ttl_s=600
    )
    publisher.redis = redis
    index = keys.workers_key(store._prefix)
    long_ago = int(time.time() * 1000) - keys.WORKER_INDEX_GRACE_MS - 1000
    await redis.zadd(index, {"w-dead": long_ago})  # a worker killed before it could forget itself
    await publisher.heartbeat("w-live", ["tiny"], ttl_s=30)
    assert await store.live_workers() == {"w-live": ["tiny"]}
    assert await redis.zrange(index, 0, -1) == [b"w-live"]
