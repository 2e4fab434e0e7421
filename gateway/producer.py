"""The gateway's Kafka producer: publishes encoded requests and audit events, and turns a broker
that does not answer in time into 503 instead of buffering without limit."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import keys, topics
from schemas.codec import AvroCodec
from schemas.records import AuditEvent, InferenceRequest

from .errors import ServiceUnavailable

logger = logging.getLogger(__name__)


class RequestProducer:
    def __init__(self, bootstrap_servers: str, codec: AvroCodec, prefix: str,
                 linger_ms: int = 2, request_timeout_ms: int = 10_000) -> None:
        self._bootstrap = bootstrap_servers
        self._codec = codec
        self._prefix = prefix
        self._linger_ms = linger_ms
        self._timeout_s = request_timeout_ms / 1000.0
        self._closed = True

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, linger_ms=self._linger_ms, acks="all",
            request_timeout_ms=int(self._timeout_s * 1000),
        )
        await self._producer.start()
        self._closed = False

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._producer.stop()

    @property
    def is_connected(self) -> bool:
        return not self._closed and bool(self._producer.client.cluster.brokers())

    async def submit(self, request: InferenceRequest, accepted: AuditEvent) -> None:
        """Publish the request, then its ACCEPTED audit event; both acknowledged by the broker."""
        topic = topics.request_topic(self._prefix, request.task, request.priority)
        key = request.request_id.encode()
        try:
            async with asyncio.timeout(self._timeout_s):
                trace = request.trace.get("traceparent")
                headers = [(keys.HEADER_TRACEPARENT, trace.encode())] if trace else None
                sent = await self._producer.send(topic, self._codec.encode(request), key=key, headers=headers)
                audited = await self._producer.send(topics.audit_topic(self._prefix),
                                                    self._codec.encode(accepted), key=key)
                await asyncio.gather(sent, audited)
        except (KafkaError, TimeoutError) as exc:
            logger.warning("publishing %s to %s failed: %r", request.request_id, topic, exc)
            raise ServiceUnavailable("the message broker is not reachable; retry later",
                                     headers={"Retry-After": "1"}) from exc
