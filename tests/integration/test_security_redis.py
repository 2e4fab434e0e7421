"""Security review findings checked against the real redis-server: no hash comes back without a
TTL after it expired (cancel, the published flag)."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from gateway.results import ResultStore
from schemas import keys
from schemas.codec import AvroCodec
from streams.publisher import ResultPublisher

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
    assert await redis.exists(keys.result_key(prefix, expired), keys.status_key(prefix, expired)) == 0
    assert await redis.hget(keys.result_key(prefix, live), keys.RESULT_FIELD_PUBLISHED) == b"1"
    assert await redis.hget(keys.status_key(prefix, live), "status") == b"done"
    assert await redis.ttl(keys.result_key(prefix, live)) > 0
    assert await redis.ttl(keys.status_key(prefix, live)) > 0


async def test_the_rate_limit_holds_across_gateways_whose_clocks_disagree(redis, monkeypatch):
    """Two gateways sharing a bucket, one of them an hour ahead: the bucket refills by Redis'
    clock, so the fast clock grants nothing extra (finding 7)."""
    import time

    from gateway.apikeys import Principal
    from gateway.auth import RateLimiter
    from gateway.errors import TooManyRequests

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
