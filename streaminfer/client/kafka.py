"""For upstream producers and downstream consumers that talk to Kafka directly:
:class:`RequestProducer` builds and Avro-encodes ``InferenceRequest`` events and produces them to
their request topic, as the gateway does; :class:`ResultConsumer` reads a task's results topic
and waits for given request ids."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streaminfer.schemas import topics
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import RegistryUnavailable, SchemaError
from streaminfer.schemas.records import InferenceRequest, InferenceResult

from .errors import KAFKA_ERROR, ClientError
from .request_events import build_request
from .results import Result

__all__ = ["RequestProducer", "ResultConsumer"]

logger = logging.getLogger(__name__)

DECODE_RETRIES = 5
"""Registry look-ups tried for one result before it is skipped (the registry is away)."""


def _kafka_error(what: str, exc: BaseException) -> ClientError:
    return ClientError(f"{what}: {exc!r}", error_code=KAFKA_ERROR)


class RequestProducer:
    """Produces inference requests to ``<prefix>.requests.<task>.<priority>``, keyed by request_id,
    with its trace context (``traceparent``, ...) as headers; an async context manager.

    ``codec`` frames the events (default: single-object encoding; pass the deployment's codec,
    e.g. ``connectivity.avro_codec(settings)``, for a schema registry). ``owner`` is the events'
    ``client_id`` (whose requests and results these are; aiokafka's own ``client_id`` is a Kafka
    option like the others). ``kafka_options`` go to ``AIOKafkaProducer`` (``security_protocol``, ``ssl_context``,
    ``sasl_*``, ``linger_ms``, ...)."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        prefix: str = "streaminfer",
        codec: AvroCodec | None = None,
        owner: str | None = None,
        **kafka_options: Any,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._prefix = prefix
        self._codec = codec
        self._owner = owner
        self._options = {"acks": "all", "linger_ms": 2, **kafka_options}
        self._producer: AIOKafkaProducer | None = None
        self._closed = True

    @classmethod
    def from_settings(cls, settings: Any = None, **overrides: Any) -> RequestProducer:
        """A producer with the bootstrap servers, topic prefix, TLS/SASL options and registry of
        ``settings`` (default: the environment's ``STREAMINFER_*``)."""
        from ..connectivity import avro_codec, kafka_options
        from ..settings import Settings

        settings = settings or Settings()
        options = {
            "prefix": settings.topic_prefix,
            "codec": avro_codec(settings),
            **kafka_options(settings),
            **overrides,
        }
        return cls(settings.kafka_bootstrap_servers, **options)

    async def start(self) -> None:
        self._codec = self._codec or AvroCodec()
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **self._options)
        try:
            await producer.start()
            await self._codec.prepare_async()  # with a registry: register before the first encode
        except (KafkaError, OSError, RegistryUnavailable) as exc:
            await producer.stop()
            raise _kafka_error(f"cannot connect to Kafka at {self._bootstrap}", exc) from exc
        self._producer, self._closed = producer, False

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._producer.stop()

    async def __aenter__(self) -> RequestProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def build(self, task: str, inputs: Mapping[str, Any], **options: Any) -> InferenceRequest:
        """:func:`build_request`, owned by this producer's ``owner`` unless ``client_id`` is given."""
        options.setdefault("client_id", self._owner)
        return build_request(task, inputs, **options)

    async def send(
        self,
        task: str,
        inputs: Mapping[str, Any],
        *,
        priority: str | int = "normal",
        deadline_ms: int | None = None,
        parameters: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        model_version: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Build a request, produce it, and return its request_id once the broker acknowledged it.
        ``inputs`` maps input names to array-likes; a str or a list of str is a BYTES tensor."""
        request = self.build(
            task,
            inputs,
            priority=priority,
            deadline_ms=deadline_ms,
            parameters=parameters,
            request_id=request_id,
            model_version=model_version,
            traceparent=traceparent,
        )
        delivery = await self.produce(request)
        try:
            await delivery
        except KafkaError as exc:
            raise _kafka_error(f"producing {request.request_id}", exc) from exc
        return request.request_id

    async def produce(self, request: InferenceRequest) -> asyncio.Future:
        """Hand ``request`` to the producer; returns the future of its delivery (await it for the
        broker's acknowledgement). For load generators that keep many in flight."""
        if self._producer is None or self._closed:
            raise RuntimeError("the RequestProducer is not started")
        topic = topics.request_topic(self._prefix, request.task, request.priority)
        # the trace map's entries (traceparent, tracestate, baggage) as headers, as the gateway sends
        headers = [(name, str(value).encode()) for name, value in request.trace.items()] or None
        try:
            return await self._producer.send(
                topic, self._codec.encode(request), key=request.request_id.encode(), headers=headers
            )
        except KafkaError as exc:
            raise _kafka_error(f"producing {request.request_id}", exc) from exc


class ResultConsumer:
    """Reads ``<prefix>.results.<task>`` from the moment it starts (or as ``auto_offset_reset``
    says) without a consumer group, keeping the newest ``max_buffered`` results, so a result that
    arrives before :meth:`wait` asks for it is not missed; an async context manager.

    ``on_record`` is called with every decoded ``InferenceResult`` as it arrives (in the reading
    task; an exception there stops the consumer). ``kafka_options`` go to ``AIOKafkaConsumer``."""

    def __init__(
        self,
        bootstrap_servers: str,
        task: str,
        *,
        prefix: str = "streaminfer",
        codec: AvroCodec | None = None,
        max_buffered: int = 10_000,
        on_record: Callable[[InferenceResult], None] | None = None,
        **kafka_options: Any,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self.topic = topics.results_topic(prefix, task)
        self._codec = codec
        self._max_buffered = max(0, max_buffered)
        self._on_record = on_record
        self._options = {
            "auto_offset_reset": "latest",
            "fetch_max_wait_ms": 50,
            **kafka_options,
            "group_id": None,
            "enable_auto_commit": False,
        }
        self._seen: OrderedDict[str, InferenceResult] = OrderedDict()
        self._claimed: dict[str, InferenceResult] = {}
        """Results of ids a wait() is waiting for: kept however many others arrive meanwhile."""
        self._waiting: Counter[str] = Counter()
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task | None = None
        self._arrived: asyncio.Condition | None = None  # made in the running loop
        self._failure: BaseException | None = None
        self._wake: asyncio.Task | None = None
        self._closed = True

    @classmethod
    def from_settings(cls, task: str, settings: Any = None, **overrides: Any) -> ResultConsumer:
        """A consumer with the bootstrap servers, topic prefix, TLS/SASL options and registry of
        ``settings`` (default: the environment's ``STREAMINFER_*``)."""
        from ..connectivity import avro_codec, kafka_options
        from ..settings import Settings

        settings = settings or Settings()
        options = {
            "prefix": settings.topic_prefix,
            "codec": avro_codec(settings),
            **kafka_options(settings),
            "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
            **overrides,
        }
        return cls(settings.kafka_bootstrap_servers, task, **options)

    async def start(self) -> None:
        self._codec = self._codec or AvroCodec()
        self._arrived = asyncio.Condition()
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, **self._options)
        try:
            await consumer.start()
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            # NOTE: resolve where each partition starts now: positions are otherwise looked up at
            # the first fetch, and a result written in between would be skipped.
            for partition in partitions:
                await consumer.position(partition)
        except (KafkaError, OSError) as exc:
            await consumer.stop()
            raise _kafka_error(f"cannot read {self.topic} at {self._bootstrap}", exc) from exc
        except BaseException:
            await consumer.stop()
            raise
        self._consumer, self._closed = consumer, False
        self._reader = asyncio.create_task(self._read(), name=f"results-{self.topic}")
        self._reader.add_done_callback(self._reader_done)

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        for _ in range(20):  # the metadata may lag a topic created a moment ago
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            await consumer.topics()  # a metadata refresh
            await asyncio.sleep(0.1)
        raise ClientError(
            f"no topic {self.topic} (no worker has served the task yet?)", error_code=KAFKA_ERROR
        )

    @property
    def failure(self) -> BaseException | None:
        """Why reading stopped, when it failed (then :meth:`wait` raises it as a ClientError)."""
        return self._failure

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        await self._consumer.stop()

    async def __aenter__(self) -> ResultConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _reader_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._failure = task.exception()
        logger.error("reading %s failed: %r", self.topic, self._failure)
        # wake every waiter: they raise instead of waiting for results that cannot come
        self._wake = asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            got = False
            for messages in batches.values():
                for message in messages:
                    record = await self._decode(message)
                    if record is None:
                        continue
                    got = True
                    self._keep(record)
                    if self._on_record is not None:
                        self._on_record(record)
            if got:
                await self._notify()

    async def _decode(self, message: Any) -> InferenceResult | None:
        for attempt in range(DECODE_RETRIES):
            try:
                return await self._codec.decode_async(message.value, InferenceResult)
            except RegistryUnavailable as exc:
                logger.warning(
                    "schema registry unavailable decoding %s@%s: %r",
                    message.partition,
                    message.offset,
                    exc,
                )
                await asyncio.sleep(0.2 * 2**attempt)
            except (
                SchemaError
            ) as exc:  # not ours to fix: the worker dead-letters requests, not results
                logger.warning(
                    "undecodable result at %s %s@%s: %s",
                    self.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
                return None
        return None

    def _keep(self, record: InferenceResult) -> None:
        request_id = record.request_id
        if request_id in self._waiting:
            self._claimed.setdefault(request_id, record)
        if self._max_buffered and request_id not in self._seen:  # the first result of an id counts
            self._seen[request_id] = record
            while len(self._seen) > self._max_buffered:
                self._seen.popitem(last=False)

    def _found(self, request_id: str) -> InferenceResult | None:
        return self._claimed.get(request_id) or self._seen.get(request_id)

    async def wait(self, request_ids: Iterable[str], timeout: float) -> dict[str, Result]:
        """The results of ``request_ids`` that arrived since the consumer started, waiting up to
        ``timeout`` seconds for the missing ones; ids without a result by then are absent."""
        if self._closed or self._arrived is None:
            raise RuntimeError("the ResultConsumer is not started")
        ids = [request_ids] if isinstance(request_ids, str) else list(dict.fromkeys(request_ids))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        self._waiting.update(ids)
        for request_id in ids:  # arrived before this wait, still buffered: claim it
            record = self._seen.get(request_id)
            if record is not None:
                self._claimed.setdefault(request_id, record)
        try:
            async with self._arrived:
                while True:
                    if self._failure is not None:
                        raise _kafka_error(
                            f"reading {self.topic}", self._failure
                        ) from self._failure
                    if all(self._found(i) is not None for i in ids):
                        break
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
            return {
                i: Result.from_record(found) for i in ids if (found := self._found(i)) is not None
            }
        finally:
            self._waiting.subtract(ids)
            for request_id in ids:
                if self._waiting[request_id] <= 0:
                    del self._waiting[request_id]
                    self._claimed.pop(request_id, None)
