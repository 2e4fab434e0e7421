"""Reads results and request status from Redis, and waits for results without polling: one
pattern subscription per gateway process wakes every waiter whose result was stored."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from streaminfer.schemas import keys
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import SchemaError
from streaminfer.schemas.records import InferenceResult

from .breakers import REDIS, guarded
from .errors import ServiceUnavailable, reaching

logger = logging.getLogger(__name__)

FIELD_AVRO = keys.RESULT_FIELD_AVRO  # the worker's publisher writes the result hash
MAX_QUEUED_PER_WRITE = 256
"""Most requests whose queued status one pipeline writes."""
# Lua: a request's status as queued, with its task and owner, kept ``ttl`` seconds; one command
# where HSETNX, HSET and EXPIRE were three (the client's cost is per command). HSETNX: a request
# published again (an Idempotency-Key retry) keeps the state a worker may have moved it to.
_MARK_QUEUED = f"""
redis.call('HSETNX', KEYS[1], '{keys.STATUS_FIELD}', '{keys.RequestState.QUEUED}')
redis.call('HSET', KEYS[1], 'task', ARGV[1], 'client_id', ARGV[2])
return redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """What a client's Idempotency-Key is bound to."""

    request_id: str
    same_body: bool
    """False: the key was used with another body (409)."""
    published: bool
    """The broker acknowledged the request; False while unconfirmed (in flight, or timed out)."""


class ResultStore:
    breakers = None
    """The gateway's circuit breakers (set by the app): calls go through ``redis``."""
    liveness_s = 10.0
    """A result subscription silent this long (its PING unanswered) is taken as lost."""

    def __init__(self, redis_url: str, codec: AvroCodec, prefix: str, ttl_s: int) -> None:
        self._redis_url = redis_url
        self._codec = codec
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._closed = True

    async def start(self) -> None:
        # NOTE: a blocking pool queues callers past max_connections; the default pool raises
        # MaxConnectionsError at 100 concurrent calls, which a burst of waiters reaches.
        pool = BlockingConnectionPool.from_url(
            self._redis_url,
            max_connections=256,
            timeout=5,
            socket_connect_timeout=2,
            socket_timeout=5,
        )
        self.redis = Redis.from_pool(pool)  # owns the pool: aclose() disconnects it
        self._waiters: dict[str, set[asyncio.Future]] = defaultdict(set)
        self._queued: list[tuple[str, str, str | None, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._closed = False
        self._listener = asyncio.create_task(self._listen(), name="result-listener")
        self._subscribed = asyncio.Event()

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._listener.cancel()
        await asyncio.wait([self._listener])
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait([self._writer])
        for futures in self._waiters.values():
            for fut in futures:
                fut.cancel()
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def _call(self, coro):
        try:
            with guarded(self.breakers, REDIS), reaching("result store"):
                return await coro
        finally:
            if hasattr(coro, "close"):
                coro.close()  # never awaited when the breaker refused the call; a no-op otherwise

    async def live_workers(self) -> dict[str, list[str]]:
        """worker_id -> tasks, from the workers' heartbeats: the members of the workers' index
        not long expired, then their heartbeat keys (whose own TTL says who is alive). Two round
        trips of the fleet's size; never a SCAN of the keyspace, whatever else it holds."""
        index = keys.workers_key(self._prefix)
        since = int(time.time() * 1000) - keys.WORKER_INDEX_GRACE_MS
        with guarded(self.breakers, REDIS), reaching("result store"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(index, "-inf", f"({since}")
                pipe.zrangebyscore(index, since, "+inf")
                _, members = await pipe.execute()
            ids = [m.decode() if isinstance(m, bytes) else m for m in members]
            values = (
                await self.redis.mget([keys.worker_key(self._prefix, w) for w in ids])
                if ids
                else []
            )
        workers = {}
        for value in values:
            if value:
                beat = keys.Heartbeat.decode(value)
                workers[beat.worker_id] = beat.tasks
        return workers

    async def served_tasks(self, seen: Iterable[str] = ()) -> set[str]:
        """Every task some worker has served: records ``seen`` (tasks of live heartbeats) and
        returns the whole record, in one round trip. The record never expires."""
        key = keys.served_tasks_key(self._prefix)
        seen = sorted(set(seen))
        async with self.redis.pipeline(transaction=False) as pipe:
            if seen:
                pipe.sadd(key, *seen)
            pipe.smembers(key)
            replies = await self._call(pipe.execute())
        return {t.decode() if isinstance(t, bytes) else t for t in replies[-1]}

    async def claim_idempotency(
        self, client_id: str | None, key: str, request_id: str, body_digest: str
    ) -> IdempotencyClaim:
        """Bind ``key`` to ``request_id`` unless it is bound already; returns the binding."""
        redis_key = keys.idempotency_key(self._prefix, client_id, key)
        claim = json.dumps({"request_id": request_id, "body": body_digest, "published": False})
        if await self._call(self.redis.set(redis_key, claim, nx=True, ex=self._ttl_s)):
            return IdempotencyClaim(request_id, same_body=True, published=False)
        bound = await self._call(self.redis.get(redis_key))
        if bound is None:  # expired between the two calls: claim again
            return await self.claim_idempotency(client_id, key, request_id, body_digest)
        bound = json.loads(bound)
        # a claim written before the "published" field existed was released on any failure,
        # so one that is still there was published
        return IdempotencyClaim(
            bound["request_id"],
            same_body=bound["body"] == body_digest,
            published=bound.get("published", True),
        )

    async def confirm_idempotency(
        self, client_id: str | None, key: str, request_id: str, body_digest: str
    ) -> None:
        """The claim's request was acknowledged by the broker: later retries need not publish it."""
        claim = json.dumps({"request_id": request_id, "body": body_digest, "published": True})
        # xx: never re-create a claim that expired meanwhile; keepttl: the claim's own expiry
        await self._call(
            self.redis.set(
                keys.idempotency_key(self._prefix, client_id, key), claim, xx=True, keepttl=True
            )
        )

    async def mark_queued(self, request_id: str, task: str, client_id: str | None) -> None:
        """Store the request's status as queued, with its task and owner; returns once Redis
        has it. The statuses of requests submitted meanwhile go in the same pipeline: one round
        trip (and one pass through the client's pool) for all of them, the gateway's largest
        saving per submission (measured: about a third of its CPU went into these writes)."""
        with guarded(self.breakers, REDIS):
            await self._queue_status(request_id, task, client_id)

    async def _queue_status(self, request_id: str, task: str, client_id: str | None) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._queued.append((request_id, task, client_id, fut))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_queued(), name="status-writer")
            self._writer.add_done_callback(self._writer_done)
        with reaching("result store"):
            await fut

    async def _write_queued(self) -> None:
        """Write the queued statuses gathered so far, and again those gathered while it wrote,
        until none are left."""
        while self._queued:
            batch = self._queued[:MAX_QUEUED_PER_WRITE]
            del self._queued[:MAX_QUEUED_PER_WRITE]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for request_id, task, client_id, _ in batch:
                        pipe.eval(
                            _MARK_QUEUED,
                            1,
                            keys.status_key(self._prefix, request_id),
                            task,
                            client_id or "",
                            self._ttl_s,
                        )
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            except BaseException:  # stopped (or a bug) mid-write: nobody may wait on it any longer
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(ConnectionError("the result store is closing"))
                raise
            else:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    def _writer_done(self, task: asyncio.Task) -> None:
        """The writer finished, failed or was stopped: nobody may wait on it any longer."""
        self._writer = None
        failed = None if task.cancelled() else task.exception()
        if failed is None and not task.cancelled() and self._queued and not self._closed:
            # queued after its last look (a done-callback runs a loop turn later): write those too
            self._writer = asyncio.create_task(self._write_queued(), name="status-writer")
            self._writer.add_done_callback(self._writer_done)
            return
        queued, self._queued = self._queued, []
        for *_, fut in queued:
            if not fut.done():
                fut.set_exception(failed or ConnectionError("the result store is closing"))

    async def status(self, request_id: str) -> dict[str, str]:
        raw = await self._call(self.redis.hgetall(keys.status_key(self._prefix, request_id)))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def result(self, request_id: str) -> InferenceResult | None:
        avro = await self._call(
            self.redis.hget(keys.result_key(self._prefix, request_id), FIELD_AVRO)
        )
        return None if avro is None else self._codec.decode(avro, InferenceResult)

    async def cancel(self, request_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.cancel_key(self._prefix, request_id), b"1", ex=self._ttl_s)
            # only while the status is there: after it expired, HSET would re-create it without a TTL
            pipe.eval(
                keys.HSET_IF_EXISTS,
                1,
                keys.status_key(self._prefix, request_id),
                keys.STATUS_FIELD,
                keys.RequestState.CANCELLING.value,
            )
            await self._call(pipe.execute())

    async def recent_latencies(self, task: str, priority: str, since_ms: int) -> list[float]:
        """End-to-end latencies (ms) of the task's results at ``priority`` (a topic suffix)
        completed since ``since_ms``, as the workers record them for /admin/stats."""
        members = await self.redis.zrangebyscore(
            keys.latency_key(self._prefix, task, priority), since_ms, "+inf"
        )
        return [keys.decode_latency(m) for m in members]

    async def purge_results(self, completed_before_ms: int, limit: int) -> tuple[int, int]:
        """Delete stored results (and their status) completed before ``completed_before_ms``, or
        unreadable, looking at ``limit`` results at most; returns (looked at, keys deleted)."""
        # NOTE: a codec without the registry: a purge never waits on registry look-ups, and a
        # result it cannot read is purged
        codec = AvroCodec()
        scanned = purged = 0
        async for key in self.redis.scan_iter(match=keys.result_key(self._prefix, "*"), count=500):
            if scanned >= limit:
                break
            scanned += 1
            avro = await self.redis.hget(key, FIELD_AVRO)
            try:
                result = codec.decode(avro, InferenceResult) if avro else None
            except SchemaError:
                result = None
            if result is None or result.completed_at < completed_before_ms:
                request_id = keys.request_id_of_result_key(self._prefix, key)
                status = (
                    [keys.status_key(self._prefix, request_id)] if request_id is not None else []
                )
                purged += await self.redis.delete(key, *status)
        return scanned, purged

    async def delete(self, request_id: str) -> int:
        return await self._call(
            self.redis.delete(
                keys.result_key(self._prefix, request_id), keys.status_key(self._prefix, request_id)
            )
        )

    async def wait(self, request_id: str, timeout_s: float) -> InferenceResult | None:
        """The result once stored, or None after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        looked, retries = False, 0
        while True:
            fut = loop.create_future()
            self._waiters[request_id].add(fut)
            try:
                failed = False
                try:
                    result = await self.result(request_id)  # stored before we listened?
                except ServiceUnavailable:
                    if not looked or self._closed:
                        raise
                    # woken as Redis came back: a pooled connection may still be the old one's,
                    # or Redis still loading; look again, backing off (and the breaker opens)
                    result, failed = None, True
                    fut.cancel()
                    backoff_s = min(1.0, 0.1 * 2**retries) * (0.5 + random.random())
                    await asyncio.sleep(max(0.0, min(backoff_s, deadline - loop.time())))
                    retries += 1
                looked = True
                remaining = deadline - loop.time()
                if remaining <= 0:  # the last look says what there is (or why not: a 503)
                    return await self.result(request_id) if failed else result
                if result is not None:
                    return result
                if fut.cancelled():
                    continue
                try:
                    await asyncio.wait_for(fut, remaining)
                except TimeoutError:
                    return await self.result(request_id)
                # notified, or woken by a resubscription (a notification may have been lost
                # while the subscription was down): look again
            finally:
                waiters = self._waiters.get(request_id)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[request_id]

    def _wake_all(self) -> None:
        for futures in list(self._waiters.values()):
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    async def _listen(self) -> None:
        pattern = keys.result_channel(self._prefix, "*")
        prefix_len = len(pattern) - 1
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(pattern)
                rejoined = not self._subscribed.is_set()
                self._subscribed.set()
                heard = loop.time()
                while True:
                    # NOTE: not listen(), which blocks without a timeout: a connection that dies
                    # without a reset (a failover, an idle drop on the way) would never raise, and
                    # every later ?wait= would run its whole length. Silence gets a PING.
                    message = await pubsub.get_message(timeout=self.liveness_s / 2)
                    if message is None:
                        if loop.time() - heard > self.liveness_s:
                            raise RedisConnectionError(
                                f"no answer on the result subscription for {self.liveness_s:.0f} s"
                            )
                        await pubsub.ping()
                        continue
                    heard = loop.time()
                    if message.get("type") == "psubscribe" and rejoined:
                        # subscribed (confirmed) again: results stored while we were away were
                        # announced to nobody, so every waiter looks again (before, each waited
                        # out its whole ?wait=)
                        rejoined = False
                        self._wake_all()
                    if message.get("type") != "pmessage":
                        continue
                    request_id = message["channel"][prefix_len:].decode()
                    for fut in self._waiters.get(request_id, ()):
                        if not fut.done():
                            fut.set_result(None)
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                logger.warning("result subscription lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()
