"""The gateway's Kafka producer: publishes encoded requests and audit events, and turns a broker
that does not answer in time into 503 instead of buffering without limit; probes the broker for
``/ready``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from streaminfer.schemas import topics
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import AuditEvent, InferenceRequest

from . import spans
from .breakers import KAFKA, REGISTRY, guarded
from .errors import ServiceUnavailable

logger = logging.getLogger(__name__)

PARTITIONS_REFRESH_S = 5.0
"""How long the producer keeps a topic's partition list before reading it from its metadata again."""


class RequestProducer:
    breakers = None
    """The gateway's circuit breakers (set by the app): encodes go through ``registry``,
    publishes through ``kafka``."""

    def __init__(
        self,
        bootstrap_servers: str,
        codec: AvroCodec,
        prefix: str,
        linger_ms: int = 2,
        request_timeout_ms: int = 10_000,
        probe_timeout_s: float = 2.0,
        probe_cache_s: float = 1.0,
        kafka_options: dict | None = None,
    ) -> None:
        """``kafka_options``: security keyword arguments of aiokafka (TLS, SASL), from the shell."""
        self._kafka_options = dict(kafka_options or {})
        self._bootstrap = bootstrap_servers
        self._codec = codec
        self._prefix = prefix
        self._linger_ms = linger_ms
        self._timeout_s = request_timeout_ms / 1000.0
        self._probe_timeout_s = min(probe_timeout_s, self._timeout_s)
        self._probe_cache_s = probe_cache_s
        self._closed = True
        self._probe: asyncio.Task | None = None
        self._probed_at = -math.inf
        self._reachable = False
        self._partitions: dict[str, tuple[float, list[int]]] = {}
        """topic -> (when read, its partitions in order), for :meth:`_partition`."""

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            linger_ms=self._linger_ms,
            acks="all",
            request_timeout_ms=int(self._timeout_s * 1000),
            **self._kafka_options,
        )
        await self._producer.start()
        self._closed = False

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.wait([self._probe])
        await self._producer.stop()

    async def is_reachable(self) -> bool:
        """Whether a broker answers a metadata request within the probe timeout. The answer is
        kept ``probe_cache_s`` and concurrent callers share one probe, so readiness checks cost
        at most one request a second.

        NOTE: not the client's cached metadata (``cluster.brokers()``): it still names the
        broker while that is down or paused."""
        if self._closed:
            return False
        if time.monotonic() - self._probed_at < self._probe_cache_s:
            return self._reachable
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._check(), name="kafka-probe")
        # shield: a caller that goes away must not cancel the probe the others wait for
        return await asyncio.shield(self._probe)

    async def _check(self) -> bool:
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                await self._producer.client.fetch_all_metadata()
            reachable = True
        except (KafkaError, TimeoutError, OSError) as exc:
            logger.warning(
                "the broker did not answer a metadata request in %.1f s: %r",
                self._probe_timeout_s,
                exc,
            )
            reachable = False
        self._reachable, self._probed_at = reachable, time.monotonic()
        return reachable

    def _partition(self, topic: str, key: bytes) -> int | None:
        """The partition aiokafka's default partitioner picks for ``key`` (murmur2, as the Java
        client and the workers' producers: a request's audit events share one partition), from a
        partition list kept ``PARTITIONS_REFRESH_S``; None while the topic's metadata is unknown
        (aiokafka then waits for it and picks). Saves the two sets aiokafka builds per message."""
        now = time.monotonic()
        known = self._partitions.get(topic)
        if known is None or now - known[0] > PARTITIONS_REFRESH_S:
            partitions = self._producer.client.cluster.partitions_for_topic(topic)
            if not partitions:
                return None
            known = self._partitions[topic] = (now, sorted(partitions))
        partitions = known[1]
        return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]

    async def submit(self, request: InferenceRequest, accepted: AuditEvent) -> None:
        """Publish the request, then its ACCEPTED audit event; both acknowledged by the broker.

        A 503 from here may follow a delivered request: a failure raised by the first ``send()``
        (waiting for metadata or buffer space, or cancelled by our timeout there) appended
        nothing (aiokafka: cancelling ``send()`` itself stops the event), but once it returned,
        a timeout or a delivery error says nothing about whether the broker has the request."""
        topic = topics.request_topic(self._prefix, request.task, request.priority)
        key = request.request_id.encode()
        partition = self._partition(topic, key)
        try:
            with spans.producing(topic, request.request_id, partition) as headers:
                # the Avro trace map carries the produce span's context too, as the headers do
                carried = {k: v.decode() for k, v in headers}
                if carried != request.trace:
                    request = dataclasses.replace(request, trace={**request.trace, **carried})
                with guarded(self.breakers, REGISTRY):
                    value, accepted_value = (
                        self._codec.encode(request),
                        self._codec.encode(accepted),
                    )
                with guarded(self.breakers, KAFKA):
                    async with asyncio.timeout(self._timeout_s):
                        sent = await self._producer.send(
                            topic, value, key=key, headers=headers or None, partition=partition
                        )
                        audit = topics.audit_topic(self._prefix)
                        audited = await self._producer.send(
                            audit, accepted_value, key=key, partition=self._partition(audit, key)
                        )
                        await asyncio.gather(sent, audited)
        except (KafkaError, TimeoutError) as exc:
            logger.warning("publishing %s to %s failed: %r", request.request_id, topic, exc)
            raise ServiceUnavailable(
                "the message broker is not reachable; retry later", headers={"Retry-After": "1"}
            ) from exc
