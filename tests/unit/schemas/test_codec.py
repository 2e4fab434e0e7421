"""The .avsc contract, the codec's framings, schema evolution and the error tree."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form
from helpers.registry import RegistryState, fake_registry

from streaminfer.bench.codec import codec_roundtrips_per_second, typical_request
from streaminfer.schemas.binary import _write_long
from streaminfer.schemas.codec import (
    CONFLUENT_MAGIC,
    SCHEMA_DIR,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    load_schemas,
)
from streaminfer.schemas.errors import (
    DecodeError,
    EncodeError,
    RegistryUnavailable,
    SchemaError,
    UnknownSchema,
)
from streaminfer.schemas.records import AVRO_TYPES as PYTHON_TYPES
from streaminfer.schemas.records import (
    AuditEvent,
    AuditType,
    DataType,
    DeadLetter,
    Error,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
    Timings,
)

NS = "io.streaminfer.v1"
TS = {"type": "long", "logicalType": "timestamp-millis"}


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


def _raw(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{NS}.{name}.avsc").read_text())


def _request() -> InferenceRequest:
    return InferenceRequest(
        "0b7d3c52-5a5e-4d1b-9c53-8b8d0e3f6a11",
        "text-embedding",
        [Tensor("text", DataType.BYTES, [2], [b"hello", "wörld".encode()])],
        model_version="1",
        priority=Priority.HIGH,
        parameters={"cache": "false"},
        created_at=1_714_564_800_123,
        deadline_at=1_714_564_830_123,
        idempotency_key="idem-1",
        client_id="alice",
        trace={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )


def _records() -> list[Any]:
    return [
        _request(),
        InferenceRequest("r2", "t", []),
        InferenceResult(
            "r1",
            "image-classify",
            Status.SUCCEEDED,
            "worker-1",
            model_name="digits",
            model_version="1",
            outputs=[
                Tensor("label", DataType.INT64, [1], (7).to_bytes(8, "little")),
                Tensor("probabilities", DataType.FP32, [1, 10], b"\x00" * 40),
            ],
            timings=Timings(1.5, 2.25, 4.0),
            batch_size=8,
        ),
        InferenceResult(
            "r1", "t", Status.FAILED, "w", error=Error("MODEL_ERROR", "boom", True), attempts=3
        ),
        AuditEvent("r1", "t", AuditType.CACHE_HIT, "worker-1", input_digest="ab" * 32),
        DeadLetter("si.requests.t.high", 3, 2**40, b"\xc3\x01junk", "UNDECODABLE", "bad", key=b"k"),
        DeadLetter("si.requests.t.high", 0, 0, b"", "UNKNOWN_SCHEMA", "?"),
        DeadLetter("t", 1, 2, b"h", "E", "m", truncated=True, payload_length=9, payload_sha256="a"),
        Tensor("x", DataType.FP16, [2], b"\x00\x3c\x00\x40"),
        Error("E", "m"),
        Timings(),
    ]


def test_load_schemas() -> None:
    schemas = load_schemas()
    assert set(schemas) == {
        f"{NS}.{n}"
        for n in (
            "Tensor",
            "InferenceRequest",
            "InferenceResult",
            "AuditEvent",
            "DeadLetter",
            "Error",
            "Timings",
            "SimilarItem",
        )
    }
    assert schemas[f"{NS}.InferenceResult"]["fields"][5]["type"]["items"]["name"] == f"{NS}.Tensor"


# -- round trips and framing --------------------------------------------------------------------


@pytest.mark.parametrize("record", _records(), ids=lambda r: type(r).__name__)
def test_round_trip(codec: AvroCodec, record: Any) -> None:
    data = codec.encode(record)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert codec.decode(data, type(record)) == record
    assert codec.decode(bytearray(data), type(record)) == record
    assert codec.decode(memoryview(data), type(record)) == record


def test_single_object_header_is_crc64_of_canonical_form(codec: AvroCodec) -> None:
    schema = load_schema(str(SCHEMA_DIR / f"{NS}.InferenceRequest.avsc"))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    assert codec.encode(_request())[:10] == SINGLE_OBJECT_MAGIC + fp
    assert codec.fingerprint(InferenceRequest) == fp


@pytest.mark.parametrize("record", _records(), ids=lambda r: type(r).__name__)
def test_body_is_byte_identical_to_fastavro(codec: AvroCodec, record: Any) -> None:
    out = BytesIO()
    schemaless_writer(out, codec.schema(type(record)), record.to_avro())
    assert codec.encode(record)[10:] == out.getvalue()


def test_upstream_producer_with_only_fastavro_and_the_avsc_files(codec: AvroCodec) -> None:
    """What a producer in any language does: load the .avsc, frame, write; we decode."""
    schema = load_schema(str(SCHEMA_DIR / f"{NS}.InferenceRequest.avsc"))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    out = BytesIO()
    out.write(b"\xc3\x01" + fp)
    schemaless_writer(
        out,
        schema,
        {
            "request_id": "up-1",
            "task": "tabular-classify",
            "model_version": None,
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [1, 30], "data": b"\x00" * 120}
            ],
            "created_at": 1_714_564_800_000,
            "deadline_at": None,
            "idempotency_key": None,
            "client_id": "producer-7",
            # priority, parameters and trace left to their schema defaults
        },
    )
    request = codec.decode(out.getvalue(), InferenceRequest)
    assert request.request_id == "up-1" and request.client_id == "producer-7"
    assert request.priority is Priority.NORMAL and request.parameters == {} and request.trace == {}
    assert request.inputs[0].to_numpy().shape == (1, 30)


def test_downstream_consumer_with_only_fastavro(codec: AvroCodec) -> None:
    result = _records()[2]
    data = codec.encode(result)
    writer = load_schema(str(SCHEMA_DIR / f"{NS}.InferenceResult.avsc"))
    d = schemaless_reader(BytesIO(data[10:]), writer, None)
    assert d["status"] == "SUCCEEDED"
    assert InferenceResult.from_avro(d) == result  # fastavro gives datetimes; we give ms


def test_confluent_framing_without_registry_assumes_our_schema(codec: AvroCodec) -> None:
    body = codec.encode(_request())[10:]
    framed = CONFLUENT_MAGIC + (42).to_bytes(4, "big") + body
    assert codec.decode(framed, InferenceRequest) == _request()


# -- schema evolution ------------------------------------------------------------------------------


def _with_tenant() -> dict:
    newer = _raw("InferenceRequest")
    newer["fields"].append({"name": "tenant", "type": "string", "default": ""})
    return newer


def _producer_schema(raw: dict, directory: Path) -> tuple[dict, bytes]:
    """Parse `raw` the way a producer holding our .avsc files would: references to our
    other types are inlined at first use, which the fingerprint covers."""
    for path in SCHEMA_DIR.glob("*.avsc"):
        (directory / path.name).write_text(path.read_text())
    (directory / f"{NS}.{raw['name']}.avsc").write_text(json.dumps(raw))
    parsed = load_schema(str(directory / f"{NS}.{raw['name']}.avsc"))
    return parsed, bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def test_newer_reader_reads_current_writer(codec: AvroCodec) -> None:
    data = codec.encode(_request())
    named: dict = {}
    parse_schema(_raw("Tensor"), named)
    reader = parse_schema(_with_tenant(), named)
    d = schemaless_reader(BytesIO(data[10:]), codec.schema(InferenceRequest), reader)
    assert d["tenant"] == "" and d["request_id"] == _request().request_id


def test_current_reader_reads_older_writer_once_registered(tmp_path: Path) -> None:
    codec = AvroCodec()
    older = _raw("InferenceRequest")
    older["fields"] = [f for f in older["fields"] if f["name"] != "trace"]
    older_parsed, fp = _producer_schema(copy.deepcopy(older), tmp_path)
    d = _request().to_avro()
    del d["trace"]
    out = BytesIO()
    schemaless_writer(out, older_parsed, d)
    data = SINGLE_OBJECT_MAGIC + fp + out.getvalue()

    with pytest.raises(UnknownSchema) as info:
        codec.decode(data, InferenceRequest)
    assert info.value.code == "UNKNOWN_SCHEMA"

    codec.register_writer_schema(older)  # names io.streaminfer.v1.Tensor by reference
    request = codec.decode(data, InferenceRequest)
    assert request.trace == {}
    assert request.inputs == _request().inputs and request.client_id == "alice"


def test_current_reader_reads_newer_writer_once_registered(tmp_path: Path) -> None:
    codec = AvroCodec()
    newer = _with_tenant()
    codec.register_writer_schema(newer)
    parsed, fp = _producer_schema(newer, tmp_path)
    out = BytesIO()
    schemaless_writer(out, parsed, {**_request().to_avro(), "tenant": "acme"})
    assert codec.decode(SINGLE_OBJECT_MAGIC + fp + out.getvalue(), InferenceRequest) == _request()


# The DeadLetter before `truncated`, `payload_length` and `payload_sha256`, as it was written.
_DEAD_LETTER_V1 = {
    "type": "record",
    "name": "DeadLetter",
    "namespace": NS,
    "fields": [
        {"name": "source_topic", "type": "string"},
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        {"name": "key", "type": ["null", "bytes"], "default": None},
        {"name": "payload", "type": "bytes"},
        {"name": "error_code", "type": "string"},
        {"name": "error_message", "type": "string"},
        {"name": "at", "type": TS},
    ],
}
_V1_LETTER = {
    "source_topic": "si.requests.t.normal",
    "partition": 2,
    "offset": 41,
    "key": b"k",
    "payload": b"\xc3\x01junk",
    "error_code": "UNDECODABLE",
    "error_message": "bad",
    "at": 1_714_564_800_123,
}


def _v1_dead_letter(d: dict = _V1_LETTER) -> bytes:
    """What a producer of the previous version wrote: its own fingerprint in the header."""
    schema = parse_schema(_DEAD_LETTER_V1)
    out = BytesIO()
    out.write(
        SINGLE_OBJECT_MAGIC
        + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    )
    schemaless_writer(out, schema, d)
    return out.getvalue()


def test_dead_letter_of_the_previous_version_decodes_with_the_defaults(codec: AvroCodec) -> None:
    data = _v1_dead_letter()
    assert data[2:10] != codec.fingerprint(DeadLetter)  # another version: fastavro resolves it
    letter = codec.decode(data, DeadLetter)
    assert letter == DeadLetter(
        "si.requests.t.normal", 2, 41, b"\xc3\x01junk", "UNDECODABLE", "bad", key=b"k",
        at=1_714_564_800_123,
    )  # fmt: skip
    assert (letter.truncated, letter.payload_length, letter.payload_sha256) == (False, None, None)


def test_reader_of_the_previous_version_reads_a_new_dead_letter(codec: AvroCodec) -> None:
    letter = DeadLetter(
        "t", 1, 2, b"head", "UNDECODABLE", "m", truncated=True, payload_length=9,
        payload_sha256="ab" * 32, at=5,
    )  # fmt: skip
    data = codec.encode(letter)
    d = schemaless_reader(
        BytesIO(data[10:]), codec.schema(DeadLetter), parse_schema(_DEAD_LETTER_V1)
    )
    assert set(d) == {f["name"] for f in _DEAD_LETTER_V1["fields"]}  # the additions ignored
    assert d["payload"] == b"head" and d["offset"] == 2 and d["error_code"] == "UNDECODABLE"


def test_every_history_file_is_an_accepted_older_version(codec: AvroCodec) -> None:
    paths = sorted((SCHEMA_DIR / "history").glob("*.avsc"))
    assert paths
    for path in paths:
        older = load_schema(str(path))  # self-contained: loads without the other files
        name = older["name"]
        assert path.name.startswith(f"{name}.v") and name in load_schemas()
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(older), "CRC-64-AVRO"))
        assert fp != codec.fingerprint(name)
        with pytest.raises(DecodeError) as info:  # known, though the body is empty
            codec.decode(SINGLE_OBJECT_MAGIC + fp, PYTHON_TYPES[name])
        assert not isinstance(info.value, UnknownSchema)


def test_register_writer_schema_refuses_strangers(codec: AvroCodec) -> None:
    with pytest.raises(SchemaError):
        codec.register_writer_schema({"type": "record", "name": "x.Other", "fields": []})
    with pytest.raises(SchemaError):
        codec.register_writer_schema({"type": "record", "name": "x.Bad", "fields": [{"name": "a"}]})


def test_schema_dir_that_does_not_mirror_the_classes_is_refused(tmp_path: Path) -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / f"{NS}.InferenceRequest.avsc").write_text(json.dumps(_with_tenant()))
    with pytest.raises(SchemaError):
        AvroCodec(schema_dir=tmp_path)


# -- decode errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc3",
        b"\xc3\x01\x00\x01",
        b"\x00\x00\x00",
        b'{"request_id": 1}',
        b"\x01\x02\x03\x04\x05\x06",
    ],
)
def test_garbage_is_undecodable(codec: AvroCodec, data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(data, InferenceRequest)
    assert info.value.code in ("UNDECODABLE", "UNKNOWN_SCHEMA")


def test_wrong_input_types_are_undecodable(codec: AvroCodec) -> None:
    with pytest.raises(DecodeError):
        codec.decode(None, InferenceRequest)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        codec.decode("text", InferenceRequest)  # type: ignore[arg-type]


def test_truncated_and_padded_encodings_are_undecodable(codec: AvroCodec) -> None:
    data = codec.encode(_request())
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:cut], InferenceRequest)
    with pytest.raises(DecodeError, match="left after"):
        codec.decode(data + b"\x00", InferenceRequest)


def test_unknown_fingerprint(codec: AvroCodec) -> None:
    data = codec.encode(_request())
    with pytest.raises(UnknownSchema):
        codec.decode(data[:2] + b"\xff" * 8 + data[10:], InferenceRequest)


def test_event_of_another_type_is_undecodable_not_unknown(codec: AvroCodec) -> None:
    data = codec.encode(AuditEvent("r", "t", AuditType.ACCEPTED, "g"))
    with pytest.raises(DecodeError) as info:
        codec.decode(data, InferenceRequest)
    assert not isinstance(info.value, UnknownSchema)


def _overflowing(data: bytes, value: int) -> bytes:
    """`data` with the varint of `value` replaced by a 10-byte one beyond int64."""
    encoded = _write_long(value)
    assert data.count(encoded) == 1
    return data.replace(encoded, b"\xff" * 9 + b"\x7f")  # 70 bits


def test_longs_beyond_int64_are_undecodable(codec: AvroCodec) -> None:
    data = _overflowing(codec.encode(_request()), _request().created_at)
    with pytest.raises(DecodeError, match="beyond int64"):
        codec.decode(data, InferenceRequest)


def test_out_of_range_integers_are_undecodable_through_schema_resolution(
    tmp_path: Path,
) -> None:
    """fastavro's reader would wrap them silently; the codec checks the body first."""
    codec = AvroCodec()
    older = _raw("InferenceRequest")
    older["fields"] = [f for f in older["fields"] if f["name"] != "trace"]
    parsed, fp = _producer_schema(copy.deepcopy(older), tmp_path)
    codec.register_writer_schema(older)
    d = _request().to_avro()
    del d["trace"]
    out = BytesIO()
    schemaless_writer(out, parsed, d)
    data = SINGLE_OBJECT_MAGIC + fp + out.getvalue()
    assert codec.decode(data, InferenceRequest).created_at == _request().created_at
    with pytest.raises(DecodeError, match="beyond int64"):
        codec.decode(_overflowing(data, _request().created_at), InferenceRequest)
    # A run of continuation bytes is refused at its 10th byte, not read to the end.
    with pytest.raises(DecodeError):
        codec.decode(
            data.replace(_write_long(_request().created_at), b"\x80" * 2_000_000), InferenceRequest
        )

    # The previous DeadLetter's int `partition` (history schema, fastavro path) beyond int32:
    letter = _v1_dead_letter({**_V1_LETTER, "partition": 2**31 - 1})
    with pytest.raises(DecodeError, match="int overflow"):
        codec.decode(letter.replace(_write_long(2**31 - 1), _write_long(2**31)), DeadLetter)


def test_decode_wraps_the_underlying_exception(codec: AvroCodec) -> None:
    data = codec.encode(_request())
    with pytest.raises(DecodeError) as info:
        codec.decode(data[:20], InferenceRequest)
    assert info.value.__cause__ is not None


# -- encode errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        InferenceRequest(None, "t", []),  # type: ignore[arg-type]
        InferenceRequest("r", "t", [], priority="urgent"),  # type: ignore[arg-type]
        InferenceRequest("r", "t", [Tensor("x", DataType.FP32, [1], "text")]),  # type: ignore[arg-type]
        InferenceRequest("r", "t", [], parameters={"a": 1}),  # type: ignore[dict-item]
        InferenceResult("r", "t", Status.SUCCEEDED, "w", batch_size=2**31),
        DeadLetter("t", 0, 2**63, b"", "E", "m"),
        AuditEvent("r", "t", AuditType.ACCEPTED, "g", at=1.5),  # type: ignore[arg-type]
    ],
)
def test_unencodable_records(codec: AvroCodec, record: Any) -> None:
    with pytest.raises(EncodeError) as info:
        codec.encode(record)
    assert info.value.code == "UNENCODABLE" and info.value.__cause__ is not None


def test_encode_refuses_foreign_objects(codec: AvroCodec) -> None:
    with pytest.raises(TypeError):
        codec.encode({"request_id": "r"})


# -- Confluent framing with a registry ------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[tuple[str, RegistryState]]:
    with fake_registry(first_id=100) as served:
        yield served


def test_confluent_framing_with_registry(registry: tuple[str, RegistryState]) -> None:
    url, handler = registry
    with AvroCodec(registry_url=url) as producer, AvroCodec(registry_url=url) as consumer:
        first = producer.encode(_request())
        second = producer.encode(_request())
        assert first == second and first[:1] == CONFLUENT_MAGIC
        schema_id = int.from_bytes(first[1:5], "big")
        assert handler.subjects == {f"{NS}.InferenceRequest": [schema_id]}  # RecordNameStrategy
        registered = json.loads(handler.schemas[schema_id])
        assert (
            registered["name"] == f"{NS}.InferenceRequest" and "__fastavro_parsed" not in registered
        )
        assert handler.calls == [f"POST /subjects/{NS}.InferenceRequest/versions"]  # cached

        assert consumer.decode(first, InferenceRequest) == _request()
        assert consumer.decode(second, InferenceRequest) == _request()
        assert handler.calls[1:] == [f"GET /schemas/ids/{schema_id}"]  # fetched once
        assert producer.decode(first, InferenceRequest) == _request()  # its own id: no fetch
        assert len(handler.calls) == 2

        # Decoders accept both framings whatever they write.
        assert consumer.decode(AvroCodec().encode(_request()), InferenceRequest) == _request()

        with pytest.raises(UnknownSchema):
            consumer.decode(
                CONFLUENT_MAGIC + (9999).to_bytes(4, "big") + first[5:], InferenceRequest
            )
        audit = producer.encode(AuditEvent("r", "t", AuditType.ACCEPTED, "g"))
        with pytest.raises(DecodeError):
            consumer.decode(audit[:5] + first[5:], InferenceRequest)


def test_unreachable_registry_is_retriable() -> None:
    with AvroCodec(registry_url="http://127.0.0.1:9", registry_timeout_s=0.5) as codec:
        with pytest.raises(RegistryUnavailable) as info:
            codec.encode(_request())
        assert info.value.retriable is True
        assert not isinstance(info.value, DecodeError)  # a worker must not dead-letter for it
        with pytest.raises(RegistryUnavailable):
            codec.decode(CONFLUENT_MAGIC + b"\x00\x00\x00\x07" + b"\x00", InferenceRequest)


# -- schema look-up and performance ------------------------------------------------------------------


def test_schema_lookup(codec: AvroCodec) -> None:
    assert codec.schema(InferenceRequest)["name"] == f"{NS}.InferenceRequest"
    assert codec.schema(f"{NS}.DeadLetter") is codec.schema(DeadLetter)
    with pytest.raises(TypeError):
        codec.schema(dict)


def test_codec_is_fast_enough_to_not_be_the_bottleneck(codec: AvroCodec) -> None:
    # A loose floor (the target is well over 50,000/s) so a loaded CI box does not flake.
    assert codec_roundtrips_per_second(n=3000, codec=codec) > 5_000
    assert codec.decode(codec.encode(typical_request()), InferenceRequest).task == "text-embedding"
