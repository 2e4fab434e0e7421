"""Writes what the worker decides to Kafka (results, audit, dead letters) and to Redis.

Redis layout (keys from ``schemas.keys``): the result key is a hash with ``avro`` (the encoded
InferenceResult) and ``published`` (set once it is on the results topic). The stored result
is what makes a redelivered request a DUPLICATE; the flag tells whether a failure came between
storing and publishing, in which case the stored result is published again. A dead-lettered
event leaves a marker under its topic, partition and offset, so a redelivery is not
dead-lettered twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from redis.asyncio import BlockingConnectionPool, Redis

from streaminfer.schemas import keys, topics
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.collections import CollectionStore
from streaminfer.schemas.records import AuditEvent, DeadLetter

from . import metrics
from .dead_letters import fit_dead_letter

logger = logging.getLogger(__name__)

LATENCY_WINDOW_MS = 5 * 60_000
FIELD_AVRO = keys.RESULT_FIELD_AVRO
FIELD_PUBLISHED = keys.RESULT_FIELD_PUBLISHED


# KEYS: result hash, status hash; ARGV: avro, ttl, client ("" = anonymous). The owner is the first
# client to claim a request_id (the gateway at submit, or the first outcome of a Kafka-direct one);
# an event naming another client's request_id stores nothing.
_STORE_OWNED = """
local owner = redis.call('HGET', KEYS[2], 'client_id')
if owner and owner ~= ARGV[3] then return {-1, false, false} end
local won = redis.call('HSETNX', KEYS[1], 'avro', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if not owner then
  redis.call('HSET', KEYS[2], 'client_id', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
local held = redis.call('HMGET', KEYS[1], 'avro', 'published')
return {won, held[1], held[2]}
"""

# aiokafka's default max_request_size: the largest record the producer sends.
MAX_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredResult:
    avro: bytes
    published: bool
    won: bool = False
    """Stored by the call that returned it (False: a result was there before)."""


@dataclass(frozen=True, slots=True)
class Latency:
    priority: str
    total_ms: float
    completed_at: int


@dataclass(frozen=True, slots=True)
class Publication:
    """A stored result on its way to its results topic."""

    task: str
    request_id: str
    avro: bytes
    headers: list[tuple[str, bytes]] | None = None
    """Its Kafka headers: the trace context (``spans.result_headers``)."""
    latency: Latency | None = None
    """Recorded for /admin/stats when this worker produced the result."""


@dataclass(frozen=True, slots=True)
class Prior:
    stored: StoredResult | None
    cancelled: bool
    cached: bytes | None
    """An encoded InferenceResult of identical inputs on the same model version."""


class ResultPublisher:
    """Owns the worker's Kafka producer and Redis client."""

    def __init__(
        self,
        bootstrap_servers: str,
        redis_url: str,
        codec: AvroCodec,
        prefix: str,
        result_ttl_s: int,
        linger_ms: int = 2,
        request_timeout_ms: int = 10_000,
        max_request_size: int = MAX_REQUEST_BYTES,
        kafka_options: dict | None = None,
    ) -> None:
        self._kafka_options = dict(
            kafka_options or {}
        )  # TLS/SASL keyword arguments, from the shell
        self._bootstrap = bootstrap_servers
        self._redis_url = redis_url
        self._codec = codec
        self._prefix = prefix
        self._ttl_s = result_ttl_s
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._max_request_size = max_request_size
        self._closed = True

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            linger_ms=self._linger_ms,
            acks="all",
            request_timeout_ms=self._request_timeout_ms,
            max_batch_size=1 << 20,
            max_request_size=self._max_request_size,
            **self._kafka_options,
        )
        await self.producer.start()
        pool = BlockingConnectionPool.from_url(
            self._redis_url,
            max_connections=64,
            timeout=10,
            socket_connect_timeout=2,
            socket_timeout=10,
        )
        self.redis = Redis.from_pool(pool)  # owns the pool: aclose() disconnects it
        self._store_owned = self.redis.register_script(_STORE_OWNED)
        self.collections = CollectionStore(self.redis, self._prefix)
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
    async def lookup(
        self, request_ids: Sequence[str], cache_keys: Sequence[str | None]
    ) -> list[Prior]:
        """What Redis knows of each request before its batch runs, in one round trip: a stored
        result (a redelivery), a cancellation, and a content-cache entry for its inputs."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, cache in zip(request_ids, cache_keys, strict=True):
                pipe.hmget(keys.result_key(self._prefix, rid), FIELD_AVRO, FIELD_PUBLISHED)
                pipe.exists(keys.cancel_key(self._prefix, rid))
                pipe.get(cache) if cache else pipe.echo(b"")
            rows = await pipe.execute()
        priors = []
        for (avro, published), cancelled, cached in zip(
            rows[0::3], rows[1::3], rows[2::3], strict=True
        ):
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

    async def mark_running(
        self, requests: Sequence[tuple[str, str | None]], worker_id: str
    ) -> None:
        """``(request_id, client_id)`` pairs: running, and whose (Kafka-direct requests included)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, client_id in requests:
                key = keys.status_key(self._prefix, rid)
                pipe.hset(
                    key,
                    mapping={
                        keys.STATUS_FIELD: keys.RequestState.RUNNING.value,
                        "worker_id": worker_id,
                    },
                )
                pipe.hsetnx(key, "client_id", client_id or "")  # the first owner stays the owner
                pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def heartbeat(
        self,
        worker_id: str,
        tasks: Sequence[str],
        ttl_s: float,
        service: Mapping[str, dict] | None = None,
    ) -> None:
        """Tell gateways this worker is alive, which tasks it serves and (``service``: task ->
        fit, instances) what their batches cost it."""
        payload = keys.Heartbeat(worker_id, list(tasks)).encode()
        ttl_ms = int(ttl_s * 1000)
        now = int(time.time() * 1000)
        index = keys.workers_key(self._prefix)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.worker_key(self._prefix, worker_id), payload, px=ttl_ms)
            # the live workers' index gateways read (never a SCAN of the keyspace); members of
            # heartbeats long expired are dropped here too, so it stays as small as the fleet
            pipe.zadd(index, {worker_id: now + ttl_ms})
            pipe.zremrangebyscore(index, "-inf", now - keys.WORKER_INDEX_GRACE_MS)
            if (
                tasks
            ):  # gateways refuse a task no worker has ever served (requests would only queue)
                pipe.sadd(keys.served_tasks_key(self._prefix), *tasks)
            for task, figures in (service or {}).items():
                key = keys.service_key(self._prefix, task)
                pipe.hset(key, worker_id, keys.encode_service(figures, now))
                pipe.pexpire(key, keys.WORKER_INDEX_GRACE_MS)
            await pipe.execute()

    async def forget_worker(self, worker_id: str, tasks: Sequence[str] = ()) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.worker_key(self._prefix, worker_id))
            pipe.zrem(keys.workers_key(self._prefix), worker_id)
            for task in tasks:
                pipe.hdel(keys.service_key(self._prefix, task), worker_id)
            await pipe.execute()

    # --- writes ---
    async def store_results(
        self, results: Sequence[tuple[str, bytes, str | None]]
    ) -> list[StoredResult | None]:
        """Store each ``(request_id, avro, client_id)`` unless a result for that request is there
        already, and record the client as the request's owner if it has none. Returns, per
        request, the result stored now (``won``: by this call) and whether it is flagged
        published (that flag, not the hash's existence, says it is on its topic); None where the
        request_id belongs to another client (nothing is written)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, avro, client_id in results:
                await self._store_owned(
                    keys=[keys.result_key(self._prefix, rid), keys.status_key(self._prefix, rid)],
                    args=[avro, self._ttl_s, client_id or ""],
                    client=pipe,
                )
            replies = await pipe.execute()
        stored: list[StoredResult | None] = []
        for (_rid, avro, _client), (won, held, published) in zip(results, replies, strict=True):
            if won == -1:
                stored.append(None)
            else:  # held is None only if the key expired in between: ours is then the one to publish
                stored.append(
                    StoredResult(held if held is not None else avro, published == b"1", won == 1)
                )
        return stored

    async def publish_results(self, items: Sequence[Publication]) -> None:
        """Produce stored results to their results topics, then flag them published, wake the
        gateway's waiters and record the latencies of those that carry one."""
        if not items:
            return
        await self._send_all(
            (topics.results_topic(self._prefix, p.task), p.request_id.encode(), p.avro, p.headers)
            for p in items
        )
        # one round trip: the published flags, the waiters' wake-ups and /admin/stats' latencies
        async with self.redis.pipeline(transaction=False) as pipe:
            self._flag_published(pipe, [p.request_id for p in items])
            self._record_latencies(pipe, [p for p in items if p.latency is not None])
            await pipe.execute()

    def _flag_published(self, pipe, request_ids: Sequence[str]) -> None:
        # NOTE: HSET only on hashes still there: a result or status that expired since it was
        # stored would otherwise come back as a one-field hash without a TTL, kept for ever.
        for rid in request_ids:
            pipe.eval(
                keys.HSET_IF_EXISTS, 1, keys.result_key(self._prefix, rid), FIELD_PUBLISHED, b"1"
            )
            pipe.eval(
                keys.HSET_IF_EXISTS,
                1,
                keys.status_key(self._prefix, rid),
                keys.STATUS_FIELD,
                keys.RequestState.DONE.value,
            )
            pipe.expire(keys.status_key(self._prefix, rid), self._ttl_s)
            pipe.publish(keys.result_channel(self._prefix, rid), b"1")

    def _record_latencies(self, pipe, items: Sequence[Publication]) -> None:
        """Recent completions per task and priority, for the gateway's /admin/stats."""
        if not items:
            return
        now = max(p.latency.completed_at for p in items)
        touched = set()
        for p in items:
            key = keys.latency_key(self._prefix, p.task, p.latency.priority)
            pipe.zadd(
                key, {keys.encode_latency(p.request_id, p.latency.total_ms): p.latency.completed_at}
            )
            touched.add(key)
        for key in touched:
            pipe.zremrangebyscore(key, 0, now - LATENCY_WINDOW_MS)
            pipe.pexpire(key, LATENCY_WINDOW_MS)

    async def audit(self, events: Iterable[AuditEvent]) -> None:
        topic = topics.audit_topic(self._prefix)
        await self._send_all(
            (topic, e.request_id.encode(), self._codec.encode(e), None) for e in events
        )

    async def claim_dead_letters(self, letters: Sequence[DeadLetter]) -> list[tuple[int, bool]]:
        """Per letter, the ``at`` its event's dead letter carries (the first claim's) and whether it
        is on the DLQ already. A letter produced again after a crash is then the same letter."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for letter in letters:
                key = keys.dead_letter_key(
                    self._prefix, letter.source_topic, letter.partition, letter.offset
                )
                pipe.hsetnx(key, "at", letter.at)
                pipe.expire(key, self._ttl_s)
                pipe.hmget(key, "at", "done")
            replies = await pipe.execute()
        return [
            (int(at) if at is not None else letter.at, done == b"1")
            for letter, (at, done) in zip(letters, replies[2::3], strict=True)
        ]

    async def dead_letter(self, letter: DeadLetter, error_type: str) -> DeadLetter:
        """Produce ``letter`` (its payload cut to fit the producer's limit, never blocking on
        size), then mark its event dead-lettered (see :meth:`claim_dead_letters`). Returns the
        letter as produced."""
        topic = topics.dlq_topic(self._prefix)
        headers = [(keys.HEADER_ERROR_TYPE, error_type.encode())]
        limit = self._max_request_size
        while True:
            letter = fit_dead_letter(letter, self._codec, limit, headers)
            try:
                await self.producer.send_and_wait(
                    topic, self._codec.encode(letter), key=letter.key, headers=headers
                )
                break
            except MessageSizeTooLargeError:  # the broker's limit is below ours: halve and retry
                if not letter.payload:
                    raise
                limit = min(limit, len(letter.payload)) // 2
                logger.warning(
                    "dead letter of %s[%d]@%d too large for the broker; cutting it to %d bytes",
                    letter.source_topic,
                    letter.partition,
                    letter.offset,
                    limit,
                )
        metrics.DEAD_LETTERS.inc()
        await self.redis.hset(
            keys.dead_letter_key(
                self._prefix, letter.source_topic, letter.partition, letter.offset
            ),
            "done",
            b"1",
        )
        return letter

    async def _send_all(self, messages: Iterable[tuple[str, bytes, bytes, list | None]]) -> None:
        futures = [
            await self.producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in messages
        ]
        if futures:
            await asyncio.gather(*futures)
