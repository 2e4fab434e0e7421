"""The real wire format: what the codec writes with a registry is byte for byte Confluent's
(magic 0, 4-byte big-endian schema id, Avro body), and payloads cross both ways with
confluent-kafka's own AvroSerializer/AvroDeserializer and SchemaRegistryClient, through the fake
registry on a socket, under each subject naming strategy (the same subjects as theirs)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from helpers.registry import RegistryState, fake_registry

from streaminfer.schemas.codec import AvroCodec, plain_schema
from streaminfer.schemas.errors import DecodeError, UnknownSchema
from streaminfer.schemas.records import (
    DataType,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
    Timings,
)
from streaminfer.schemas.registry import RegistryClient, record_topics

schema_registry = pytest.importorskip("confluent_kafka.schema_registry")
avro = pytest.importorskip("confluent_kafka.schema_registry.avro")
serialization = pytest.importorskip("confluent_kafka.serialization")

PREFIX = "wire"
TASK = "text-embedding"
TOPIC = f"{PREFIX}.requests.{TASK}.high"
STRATEGIES = {
    "record": schema_registry.record_subject_name_strategy,
    "topic": schema_registry.topic_subject_name_strategy,
    "topic_record": schema_registry.topic_record_subject_name_strategy,
}
PLAIN = AvroCodec()


@pytest.fixture
def registry() -> Iterator[tuple[str, RegistryState]]:
    # An id with four distinct bytes shows the byte order; confluent-kafka's own client checks
    # the fake answers as it checks a real registry's.
    with fake_registry(first_id=0x01020304) as served:
        yield served


def _codec(url: str, strategy: str = "record") -> AvroCodec:
    topics = record_topics(PREFIX, [TASK])
    return AvroCodec(
        registry=RegistryClient(
            url, subject_strategy=strategy, topics=lambda name: topics.get(name, [])
        )
    )


def _request() -> InferenceRequest:
    return InferenceRequest(
        "r-42",
        TASK,
        [Tensor("text", DataType.BYTES, [2], [b"hello", "wörld".encode()])],
        priority=Priority.HIGH,
        created_at=1_764_000_000_123,
        deadline_at=1_764_000_002_623,
        parameters={"k": "v"},
        client_id="alice",
    )


def _result() -> InferenceResult:
    return InferenceResult(
        "r-42",
        TASK,
        Status.SUCCEEDED,
        "w1",
        model_name="minilm",
        model_version="3",
        outputs=[Tensor.from_numpy("embedding", np.array([[0.5, -1.25, 3.0]], dtype=np.float32))],
        timings=Timings(1.0, 2.0, 3.0),
        batch_size=7,
        created_at=1_764_000_000_123,
        completed_at=1_764_000_000_456,
    )


def _ms(value: Any) -> Any:
    """confluent's deserializer applies logical types: timestamps back to epoch ms."""
    if isinstance(value, datetime.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {key: _ms(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_ms(item) for item in value]
    return value


def test_our_framing_is_byte_for_byte_confluents(registry) -> None:
    url, state = registry
    with _codec(url) as codec:
        for record in (_request(), _result()):
            data = codec.encode(record)
            schema = plain_schema(codec.schema(type(record)))
            schema_id = state.subjects[type(record).AVRO_NAME][0]
            body = BytesIO()
            schemaless_writer(body, parse_schema(schema), record.to_avro())
            assert data == b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
            assert data[:5] == b"\x00\x01\x02\x03" + bytes([data[4]]) and data[4] >= 0x04
            # The registered text is our schema, as JSON any Avro library reads.
            assert json.loads(state.schemas[schema_id]) == schema
            # And the body is the same Avro as in single-object framing.
            assert data[5:] == PLAIN.encode(record)[10:]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_confluents_serializer_writes_what_we_decode(registry, strategy: str) -> None:
    url, state = registry
    client = schema_registry.SchemaRegistryClient({"url": url})
    serializer = avro.AvroSerializer(
        client,
        json.dumps(plain_schema(PLAIN.schema(InferenceRequest))),
        conf={"subject.name.strategy": STRATEGIES[strategy]},
    )
    context = serialization.SerializationContext(TOPIC, serialization.MessageField.VALUE)
    data = serializer(_request().to_avro(), context)
    (subject,) = state.subjects
    with _codec(url, strategy) as codec:
        assert codec.decode(data, InferenceRequest) == _request()
        assert state.calls[-1].startswith("GET /schemas/ids/")  # looked up by its id
        ours = codec.encode(_request())
    assert ours == data  # the same bytes, the same id
    # Our strategy named their subject (plus the task's other request topics).
    assert subject in state.subjects and len(state.subjects) == {"record": 1}.get(strategy, 3)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_confluents_deserializer_reads_what_we_write(registry, strategy: str) -> None:
    url, _state = registry
    client = schema_registry.SchemaRegistryClient({"url": url})
    deserializer = avro.AvroDeserializer(client)
    context = serialization.SerializationContext(TOPIC, serialization.MessageField.VALUE)
    with _codec(url, strategy) as codec:
        for record in (_request(), _result()):
            decoded = deserializer(codec.encode(record), context)
            assert _ms(decoded) == record.to_avro()
            assert type(record).from_avro(_ms(decoded)) == record


def test_a_newer_producer_schema_is_resolved_against_ours(registry) -> None:
    """A real producer that added a field (with a default) still reaches us, by id."""
    url, _state = registry
    newer = plain_schema(PLAIN.schema(InferenceRequest))
    newer["fields"] = [*newer["fields"], {"name": "tenant", "type": "string", "default": "none"}]
    serializer = avro.AvroSerializer(
        schema_registry.SchemaRegistryClient({"url": url}), json.dumps(newer)
    )
    context = serialization.SerializationContext(TOPIC, serialization.MessageField.VALUE)
    data = serializer({**_request().to_avro(), "tenant": "acme"}, context)
    with _codec(url) as codec:
        assert codec.decode(data, InferenceRequest) == _request()
        written = BytesIO(data[5:])
        assert schemaless_reader(written, parse_schema(newer))["tenant"] == "acme"


def test_hostile_confluent_frames(registry) -> None:
    url, _state = registry
    with _codec(url) as codec:
        good = codec.encode(_request())
        with pytest.raises(UnknownSchema):  # an id the registry does not know
            codec.decode(b"\x00\xff\xff\xff\xff" + good[5:], InferenceRequest)
        for bad in (
            b"\x00",
            b"\x00\x01\x02",
            good[:5],
            good[:-1],
            good + b"\x00",
            b"\x01" + good[1:],
        ):
            with pytest.raises(DecodeError):
                codec.decode(bad, InferenceRequest)
