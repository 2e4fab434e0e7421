"""``streaminfer tail results|audit|dlq``: Avro events decoded to JSON lines."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import json
import sys
import uuid

from aiokafka import AIOKafkaConsumer

from streaminfer.schemas import topics
from streaminfer.schemas.errors import SchemaError
from streaminfer.schemas.records import AuditEvent, DeadLetter, InferenceResult

from .connectivity import avro_codec, kafka_options
from .settings import Settings


def to_jsonable(value):
    if dataclasses.is_dataclass(value):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def _topics(
    settings: Settings, stream: str, task: str | None
) -> tuple[list[str] | None, str | None, type]:
    prefix = settings.topic_prefix
    if stream == "results":
        if task:
            return [topics.results_topic(prefix, task)], None, InferenceResult
        return None, f"^{prefix}\\.results\\..*", InferenceResult
    if stream == "audit":
        return [topics.audit_topic(prefix)], None, AuditEvent
    return [topics.dlq_topic(prefix)], None, DeadLetter


async def tail(
    settings: Settings,
    stream: str,
    *,
    task: str | None = None,
    request_id: str | None = None,
    from_beginning: bool = False,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    out=sys.stdout,
) -> int:
    names, pattern, record_type = _topics(settings, stream, task)
    codec = avro_codec(settings)
    consumer = AIOKafkaConsumer(
        *(names or ()),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"streaminfer-tail-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **kafka_options(settings),
    )
    if pattern:
        consumer.subscribe(pattern=pattern)
    await consumer.start()
    printed = 0
    loop = asyncio.get_running_loop()
    last = loop.time()
    try:
        while max_messages is None or printed < max_messages:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches and idle_timeout_s is not None and loop.time() - last > idle_timeout_s:
                break
            for records in batches.values():
                last = loop.time()
                for message in records:
                    try:
                        record = to_jsonable(codec.decode(message.value, record_type))
                    except SchemaError as exc:
                        record = {"undecodable": str(exc)}
                    if task and record.get("task", task) != task:
                        continue
                    if (
                        request_id
                        and record.get("request_id") != request_id
                        and message.key != request_id.encode()
                    ):
                        continue
                    record["_kafka"] = {
                        "topic": message.topic,
                        "partition": message.partition,
                        "offset": message.offset,
                    }
                    print(json.dumps(record), file=out, flush=True)
                    printed += 1
    finally:
        await consumer.stop()
    return 0
