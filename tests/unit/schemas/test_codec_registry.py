"""AvroCodec with a schema registry: outages stay retriable (never a DecodeError), registry
calls run off the event loop, and failed look-ups are remembered within bounds."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from streaminfer.schemas import codec as codec_module
from streaminfer.schemas.codec import CONFLUENT_MAGIC, AvroCodec, plain_schema
from streaminfer.schemas.errors import DecodeError, RegistryUnavailable, SchemaError, UnknownSchema
from streaminfer.schemas.records import (
    AuditEvent,
    AuditType,
    DataType,
    DeadLetter,
    InferenceRequest,
    Tensor,
)
from streaminfer.schemas.registry import RegistryClient

URL = "http://registry.test"
PLAIN = AvroCodec()  # single-object, no registry


class FakeRegistry:
    """Just enough of the Confluent Schema Registry REST API, behind an httpx.MockTransport;
    `down` refuses every connection, `delay_s` answers slowly."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.down = False
        self.delay_s = 0.0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        self.threads.add(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "POST":
            schema = json.loads(request.content)["schema"]
            for schema_id, known in self.schemas.items():
                if known == schema:
                    return httpx.Response(200, json={"id": schema_id})
            schema_id = len(self.schemas) + 100
            self.schemas[schema_id] = schema
            return httpx.Response(200, json={"id": schema_id})
        schema_id = int(request.url.path.rsplit("/", 1)[1])
        if schema_id not in self.schemas:
            return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
        return httpx.Response(200, json={"schema": self.schemas[schema_id]})

    def add(self, schema: dict) -> int:
        schema_id = len(self.schemas) + 100
        self.schemas[schema_id] = json.dumps(schema)
        return schema_id


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def make_codec(registry: FakeRegistry) -> Iterator[Any]:
    clients: list[httpx.Client] = []

    def make() -> AvroCodec:
        clients.append(httpx.Client(transport=httpx.MockTransport(registry)))
        return AvroCodec(registry=RegistryClient(URL, client=clients[-1]))

    yield make
    for client in clients:
        client.close()


def _request() -> InferenceRequest:
    return InferenceRequest(
        "r1", "text-embedding", [Tensor("text", DataType.BYTES, [1], [b"hi"])], created_at=5
    )


def _framed(schema_id: int, record: Any = None) -> bytes:
    """A Confluent-framed event claiming `schema_id`, with a body of our current schema."""
    body = PLAIN.encode(record or _request())[10:]
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + body


def _ours(registry: FakeRegistry) -> int:
    return registry.add(plain_schema(PLAIN.schema(InferenceRequest)))


def _advance(codec: AvroCodec, seconds: float) -> None:
    failures = codec._registry_failures
    now = failures._clock() + seconds
    failures._clock = lambda: now


# -- outages -------------------------------------------------------------------------------------


async def test_outage_is_retriable_from_every_entry_point(
    registry: FakeRegistry, make_codec: Any
) -> None:
    registry.down = True
    codec = make_codec()
    data = _framed(7)
    attempts: list[Any] = [
        lambda: codec.decode(data, InferenceRequest),
        lambda: codec.encode(_request()),
    ]
    for attempt in attempts:
        with pytest.raises(RegistryUnavailable) as info:
            attempt()
        assert info.value.retriable is True and not isinstance(info.value, DecodeError)
    for coroutine in (
        codec.decode_async(_framed(8), InferenceRequest),
        codec.prepare_async(),
    ):
        with pytest.raises(RegistryUnavailable) as info:
            await coroutine
        assert info.value.retriable is True and not isinstance(info.value, DecodeError)


async def test_recovery_after_an_outage(registry: FakeRegistry, make_codec: Any) -> None:
    schema_id = _ours(registry)
    codec = make_codec()
    registry.down = True
    with pytest.raises(RegistryUnavailable):
        await codec.decode_async(_framed(schema_id), InferenceRequest)
    calls = len(registry.calls)
    # Within the short back-off, the same id is answered at once, without a call.
    with pytest.raises(RegistryUnavailable, match="remembered"):
        await codec.decode_async(_framed(schema_id), InferenceRequest)
    with pytest.raises(RegistryUnavailable):
        codec.decode(_framed(schema_id), InferenceRequest)
    assert len(registry.calls) == calls
    registry.down = False
    _advance(codec, 1.5)
    assert await codec.decode_async(_framed(schema_id), InferenceRequest) == _request()
    assert codec.decode(_framed(schema_id), InferenceRequest) == _request()
    assert len(registry.calls) == calls + 1  # fetched once, then cached


async def test_an_outage_is_never_dead_lettered_whatever_the_client_raises(
    make_codec: Any, registry: FakeRegistry
) -> None:
    codec = make_codec()

    def broken(*args: object) -> dict:
        raise RuntimeError("a bug or an error httpx does not wrap")

    codec._registry.schema_by_id = broken  # type: ignore[union-attr]
    codec._registry.register = broken  # type: ignore[union-attr]
    with pytest.raises(RegistryUnavailable):
        codec.decode(_framed(9), InferenceRequest)
    with pytest.raises(RegistryUnavailable):
        await codec.prepare_async()


# -- the failure memory ----------------------------------------------------------------------------


async def test_unknown_ids_are_remembered_within_bounds(
    registry: FakeRegistry, make_codec: Any
) -> None:
    codec = make_codec()
    for schema_id in range(1, 10_001):  # a flood of garbage, each with its own id
        with pytest.raises(UnknownSchema):
            codec.decode(_framed(schema_id), InferenceRequest)
    assert len(registry.calls) == 10_000
    assert len(codec._registry_failures) <= 1024
    # The latest ids are remembered: no new calls, sync or async, no thread either.
    for schema_id in range(10_000 - 500, 10_001):
        with pytest.raises(UnknownSchema):
            codec.decode(_framed(schema_id), InferenceRequest)
        with pytest.raises(UnknownSchema):
            await codec.decode_async(_framed(schema_id), InferenceRequest)
    assert len(registry.calls) == 10_000
    assert isinstance(UnknownSchema("x"), SchemaError) and not UnknownSchema.retriable
    _advance(codec, 61)  # past the TTL: asked again
    with pytest.raises(UnknownSchema):
        codec.decode(_framed(10_000), InferenceRequest)
    assert len(registry.calls) == 10_001


async def test_unusable_registry_schemas_are_unknown_and_remembered(
    registry: FakeRegistry, make_codec: Any
) -> None:
    schema_id = registry.add({"type": "record", "name": "x.Bad", "fields": [{"name": "a"}]})
    codec = make_codec()
    for _ in range(3):
        with pytest.raises(UnknownSchema, match="not usable"):
            await codec.decode_async(_framed(schema_id), InferenceRequest)
    assert len(registry.calls) == 1


# -- off the event loop ----------------------------------------------------------------------------


async def test_decode_async_does_not_block_the_event_loop(
    registry: FakeRegistry, make_codec: Any
) -> None:
    schema_id = _ours(registry)
    codec = make_codec()
    registry.delay_s = 0.3
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert await codec.decode_async(_framed(schema_id), InferenceRequest) == _request()
    finally:
        ticker.cancel()
        await asyncio.wait([ticker])
    assert ticks >= 10  # the loop kept running while the registry answered
    assert threading.get_ident() not in registry.threads


async def test_decode_async_stays_inline_when_no_call_is_needed(
    registry: FakeRegistry, make_codec: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema_id = _ours(registry)
    codec = make_codec()
    await codec.decode_async(_framed(schema_id), InferenceRequest)  # fetched, cached
    hops: list[object] = []

    async def counting_to_thread(*args: object) -> None:
        hops.append(args)

    monkeypatch.setattr(codec_module.asyncio, "to_thread", counting_to_thread)
    plain = PLAIN.encode(_request())
    for data in (_framed(schema_id), plain, b"", b"\x00\x00", b"garbage"):
        sync: Any
        try:
            sync = codec.decode(data, InferenceRequest)
        except DecodeError as exc:
            sync = type(exc)
        try:
            got: Any = await codec.decode_async(data, InferenceRequest)
        except DecodeError as exc:
            got = type(exc)
        assert got == sync
    assert hops == []


async def test_decode_async_answers_like_decode(registry: FakeRegistry, make_codec: Any) -> None:
    audit_id = registry.add(plain_schema(PLAIN.schema(AuditEvent)))
    codec = make_codec()
    audit = _framed(audit_id, AuditEvent("r", "t", AuditType.ACCEPTED, "g"))
    for data, error in [(audit, DecodeError), (_framed(4242), UnknownSchema)]:
        with pytest.raises(error) as sync:
            codec.decode(data, InferenceRequest)
        with pytest.raises(error) as asynchronous:
            await codec.decode_async(data, InferenceRequest)
        assert type(sync.value) is type(asynchronous.value)
    with pytest.raises(TypeError):
        await codec.decode_async(audit, dict)


# -- prepare_async ----------------------------------------------------------------------------------


async def test_prepare_async_registers_everything_so_encode_never_calls(
    registry: FakeRegistry, make_codec: Any
) -> None:
    codec = make_codec()
    await codec.prepare_async()
    assert len(registry.calls) == 7 and all(c.startswith("POST /subjects/") for c in registry.calls)
    assert threading.get_ident() not in registry.threads
    registry.down = True
    data = codec.encode(_request())
    codec.encode(DeadLetter("t", 0, 1, b"x", "UNDECODABLE", "m"))
    assert codec.decode(data, InferenceRequest) == _request()  # our own id: known
    await codec.prepare_async()  # done already: no call
    assert len(registry.calls) == 7


async def test_prepare_async_without_registry_is_a_no_op() -> None:
    codec = AvroCodec()
    await codec.prepare_async()
    assert codec.encode(_request())[:2] == b"\xc3\x01"
