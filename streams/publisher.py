"""Writes what the worker decides to Kafka (results, audit, dead letters) and to Redis.

Redis layout (keys from ``schemas.keys``): the result key is a hash with ``avro`` (the encoded
InferenceResult) and ``published`` (set once it is on the results topic). The stored result
is what makes a redelivered request a DUPLICATE; the flag tells whether a crash came between
storing and publishing, in which case the stored result is published again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from redis.asyncio import BlockingConnectionPool, Redis

from schemas import keys, topics
from schemas.codec import AvroCodec
from schemas.records import AuditEvent, DeadLetter, InferenceResult

from . import metrics

logger = logging.getLogger(__name__)

LATENCY_WINDOW_MS = 5 * 60_000
FIELD_AVRO = keys.RESULT_FIELD_AVRO
FIELD_PUBLISHED = keys.RESULT_FIELD_PUBLISHED


@dataclass(frozen=True, slots=True)
class StoredResult:
    avro: bytes
    published: bool


@dataclass(frozen=True, slots=True)
class Prior:
    stored: StoredResult | None
    cancelled: bool
    cached: bytes | None
    """An encoded InferenceResult of identical inputs on the same model version."""


class ResultPublisher:
    """Owns the worker's Kafka producer and Redis client."""

    def __init__(
        self, bootstrap_servers: str, redis_url: str, codec: AvroCodec, prefix: str,
        result_ttl_s: int, linger_ms: int = 2, request_timeout_ms: int = 10_000,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._redis_url = redis_url
        self._codec = codec
        self._prefix = prefix
        self._ttl_s = result_ttl_s
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._closed = True

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, linger_ms=self._linger_ms, acks="all",
            request_timeout_ms=self._request_timeout_ms, max_batch_size=1 << 20,
        )
        await self.producer.start()
        pool = BlockingConnectionPool.from_url(self._redis_url, max_connections=64, timeout=10,
                                               socket_connect_timeout=2, socket_timeout=10)
        self.redis = Redis.from_pool(pool)  # owns the pool: aclose() disconnects it
        self._closed = False

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.producer.stop()  # flushes what is pending
        finally:
            await self.redis.aclose()

    async def __aenter__(self) -> ResultPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- reads ---
    async def lookup(self, request_ids: Sequence[str], cache_keys: Sequence[str | None]) -> list[Prior]:
        """What Redis knows of each request before its batch runs, in one round trip: a stored
        result (a redelivery), a cancellation, and a content-cache entry for its inputs."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, cache in zip(request_ids, cache_keys, strict=True):
                pipe.hmget(keys.result_key(self._prefix, rid), FIELD_AVRO, FIELD_PUBLISHED)
                pipe.exists(keys.cancel_key(self._prefix, rid))
                pipe.get(cache) if cache else pipe.echo(b"")
            rows = await pipe.execute()
        priors = []
        for (avro, published), cancelled, cached in zip(rows[0::3], rows[1::3], rows[2::3], strict=True):
            stored = StoredResult(avro, published == b"1") if avro is not None else None
            priors.append(Prior(stored, bool(cancelled), cached or None))
        return priors

    def cache_key(self, task: str, version: str, digest: str) -> str:
        return keys.cache_key(self._prefix, task, version, digest)

    async def store_cache(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Content-cache entries ``(key, encoded result)``, kept as long as results."""
        if not entries:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, avro in entries:
                pipe.set(key, avro, ex=self._ttl_s)
            await pipe.execute()

    async def mark_running(self, requests: Sequence[tuple[str, str | None]], worker_id: str) -> None:
        """``(request_id, client_id)`` pairs: running, and whose (Kafka-direct requests included)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, client_id in requests:
                key = keys.status_key(self._prefix, rid)
                fields = {"status": "running", "worker_id": worker_id}
                if client_id:
                    fields["client_id"] = client_id
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def heartbeat(self, worker_id: str, tasks: Sequence[str], ttl_s: float) -> None:
        """Tell gateways this worker is alive and which tasks it serves."""
        payload = json.dumps({"worker_id": worker_id, "tasks": list(tasks)})
        await self.redis.set(keys.worker_key(self._prefix, worker_id), payload, px=int(ttl_s * 1000))

    async def forget_worker(self, worker_id: str) -> None:
        await self.redis.delete(keys.worker_key(self._prefix, worker_id))

    # --- writes ---
    async def store_and_publish(self, results: Sequence[InferenceResult],
                                traceparents: dict[str, str] | None = None,
                                priorities: dict[str, str] | None = None) -> list[bool]:
        """Store each result in Redis unless one is there already, publish the new ones to their
        results topic, then mark them published and notify waiters. Returns, per result, whether
        it was new (False: a result for that request existed, nothing was written)."""
        encoded = [self._codec.encode(r) for r in results]
        async with self.redis.pipeline(transaction=False) as pipe:
            for result, avro in zip(results, encoded, strict=True):
                key = keys.result_key(self._prefix, result.request_id)
                pipe.hsetnx(key, FIELD_AVRO, avro)
                pipe.expire(key, self._ttl_s)
            replies = await pipe.execute()
        is_new = [bool(n) for n in replies[0::2]]
        fresh = [(r, a) for r, a, new in zip(results, encoded, is_new, strict=True) if new]
        if fresh:
            await self._produce_results([(r.task, r.request_id, a) for r, a in fresh], traceparents or {})
            # one round trip: the published flags, the waiters' wake-ups and /admin/stats' latencies
            async with self.redis.pipeline(transaction=False) as pipe:
                self._flag_published(pipe, [r.request_id for r, _ in fresh])
                self._record_latencies(pipe, [r for r, _ in fresh], priorities or {})
                await pipe.execute()
        for result, _ in fresh:
            metrics.REQUESTS.labels(result.task, result.status.value.lower()).inc()
            metrics.REQUEST_SECONDS.labels(result.task).observe(
                max(0, result.completed_at - result.created_at) / 1000.0)
        return is_new

    async def republish(self, items: Iterable[tuple[str, str, bytes]]) -> None:
        """Produce stored results ``(task, request_id, avro)`` that a crash left unpublished, then
        flag them published and wake the gateway's waiters."""
        items = list(items)
        if not items:
            return
        await self._produce_results(items, {})
        async with self.redis.pipeline(transaction=False) as pipe:
            self._flag_published(pipe, [rid for _task, rid, _avro in items])
            await pipe.execute()

    async def _produce_results(self, items: Sequence[tuple[str, str, bytes]], traceparents: dict[str, str]) -> None:
        """Encoded results ``(task, request_id, avro)`` to their results topics, with the request's
        W3C ``traceparent`` as a header when it had one."""
        await self._send_all(
            (topics.results_topic(self._prefix, task), rid.encode(), avro,
             [(keys.HEADER_TRACEPARENT, traceparents[rid].encode())] if rid in traceparents else None)
            for task, rid, avro in items
        )

    def _flag_published(self, pipe, request_ids: Sequence[str]) -> None:
        for rid in request_ids:
            pipe.hset(keys.result_key(self._prefix, rid), FIELD_PUBLISHED, b"1")
            pipe.hset(keys.status_key(self._prefix, rid), "status", "done")
            pipe.expire(keys.status_key(self._prefix, rid), self._ttl_s)
            pipe.publish(keys.result_channel(self._prefix, rid), b"1")

    def _record_latencies(self, pipe, results: Sequence[InferenceResult], priorities: dict[str, str]) -> None:
        """Recent completions per task and priority, for the gateway's /admin/stats."""
        now = results[-1].completed_at
        touched = set()
        for r in results:
            key = keys.latency_key(self._prefix, r.task, priorities.get(r.request_id, "normal"))
            pipe.zadd(key, {f"{r.request_id}:{r.timings.total_ms:.1f}": r.completed_at})
            touched.add(key)
        for key in touched:
            pipe.zremrangebyscore(key, 0, now - LATENCY_WINDOW_MS)
            pipe.pexpire(key, LATENCY_WINDOW_MS)

    async def audit(self, events: Iterable[AuditEvent]) -> None:
        topic = topics.audit_topic(self._prefix)
        await self._send_all((topic, e.request_id.encode(), self._codec.encode(e), None) for e in events)

    async def dead_letter(self, letter: DeadLetter, error_type: str) -> None:
        metrics.DEAD_LETTERS.inc()
        await self.producer.send_and_wait(
            topics.dlq_topic(self._prefix), self._codec.encode(letter), key=letter.key,
            headers=[(keys.HEADER_ERROR_TYPE, error_type.encode())],
        )

    async def _send_all(self, messages: Iterable[tuple[str, bytes, bytes, list | None]]) -> None:
        futures = [await self.producer.send(topic, value, key=key, headers=headers)
                   for topic, key, value, headers in messages]
        if futures:
            await asyncio.gather(*futures)
