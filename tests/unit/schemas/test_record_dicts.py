"""The records against their `.avsc` files, and the dict conversion derived from both."""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, datetime
from io import BytesIO
from typing import ClassVar

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import load_schema

from streaminfer.schemas.codec import SCHEMA_DIR
from streaminfer.schemas.record_dicts import avro_fields, bind_dicts
from streaminfer.schemas.records import (
    AVRO_TYPES,
    RECORD_TYPES,
    AuditEvent,
    AuditType,
    DeadLetter,
    Error,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
    Timings,
)

RECORDS = {
    path.name.removesuffix(".avsc"): json.loads(path.read_text())
    for path in sorted(SCHEMA_DIR.glob("*.avsc"))
    if json.loads(path.read_text())["type"] == "record"
}
MIRRORED = [name for name in RECORDS if name in AVRO_TYPES]


def _optional(avro_type: object) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


def test_every_record_but_similar_item_has_a_class():
    # SimilarItem stays a dict inside InferenceResult.similar (schemas/records.py says so)
    assert sorted(set(RECORDS) - set(MIRRORED)) == ["io.streaminfer.v1.SimilarItem"]
    assert {record_type.AVRO_NAME for record_type in (Tensor, *RECORD_TYPES)} == set(MIRRORED)


@pytest.mark.parametrize("name", MIRRORED)
def test_fields_mirror_the_schema(name):
    record_type = AVRO_TYPES[name]
    hints = typing.get_type_hints(record_type)
    class_fields = {f.name: f for f in dataclasses.fields(record_type) if f.init}
    schema_fields = {f["name"]: f for f in RECORDS[name]["fields"]}
    assert set(class_fields) == set(schema_fields)
    for field_name, schema_field in schema_fields.items():
        may_be_none = type(None) in typing.get_args(hints[field_name])
        assert may_be_none == _optional(schema_field["type"]), field_name
        if "default" in schema_field:  # what from_avro falls back on when the field is absent
            field = class_fields[field_name]
            default = (
                field.default
                if field.default_factory is dataclasses.MISSING
                else field.default_factory()
            )
            assert default == schema_field["default"], field_name
    assert avro_fields(name) == RECORDS[name]["fields"]


def _records() -> list[object]:
    tensor = Tensor("x", "FP32", [1, 2], b"\0" * 8)
    return [
        Error("E", "message", True),
        Timings(1.0, 2.5, 3.5, 0.25, "cache"),
        InferenceRequest(
            "r",
            "t",
            [tensor],
            "2",
            Priority.HIGH,
            {"a": "b"},
            1_700_000_000_123,
            1_700_000_001_000,
            "idem",
            "client",
            {"traceparent": "00-x"},
        ),
        InferenceRequest("r", "t", []),
        InferenceResult(
            "r",
            "t",
            Status.FAILED,
            "w",
            "m",
            "1",
            [tensor],
            Error("E", "m"),
            Timings(1.0, 2.0, 3.0),
            4,
            2,
            1_000,
            2_000,
            [{"id": "i", "score": 0.5, "metadata": "{}"}],
        ),
        InferenceResult("r", "t", Status.SUCCEEDED, "w"),
        AuditEvent("r", "t", AuditType.DEAD_LETTERED, "w", input_digest="ab", details={"k": "v"}),
        DeadLetter(
            "t",
            1,
            2,
            b"payload",
            "UNDECODABLE",
            "m",
            key=b"k",
            truncated=True,
            payload_length=100,
            payload_sha256="ff",
        ),
    ]


@pytest.mark.parametrize("record", _records(), ids=lambda r: type(r).__name__)
def test_round_trips_through_fastavro_with_logical_types(record):
    schema = load_schema(str(SCHEMA_DIR / f"{record.AVRO_NAME}.avsc"))
    out = BytesIO()
    schemaless_writer(out, schema, record.to_avro())
    out.seek(0)
    read = schemaless_reader(out, schema, None)  # timestamps come back as datetimes
    assert type(record).from_avro(read) == record
    assert type(record).from_avro(record.to_avro()) == record


def test_enums_and_timestamps_are_converted_back():
    at = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    request = InferenceRequest.from_avro(
        {
            "request_id": "r",
            "task": "t",
            "inputs": [],
            "priority": "HIGH",
            "created_at": at,
            "deadline_at": None,
        }
    )
    assert request.priority is Priority.HIGH
    assert request.created_at == int(at.timestamp() * 1000) and request.deadline_at is None
    result = InferenceResult("r", "t", Status.SUCCEEDED, "w").to_avro()
    assert result["timings"] == Timings().to_avro() and result["error"] is None
    assert InferenceResult.from_avro({**result, "status": "EXPIRED"}).status is Status.EXPIRED


def test_fields_with_a_schema_default_may_be_absent_and_the_others_not():
    d = InferenceRequest("r", "t", [], created_at=5).to_avro()
    minimal = {key: d[key] for key in ("request_id", "task", "inputs", "created_at")}
    request = InferenceRequest.from_avro(minimal)
    assert request == InferenceRequest("r", "t", [], created_at=5)
    assert request.parameters is not InferenceRequest.from_avro(minimal).parameters  # fresh dicts
    with pytest.raises(KeyError, match="created_at"):
        InferenceRequest.from_avro({key: d[key] for key in ("request_id", "task", "inputs")})


def test_a_class_that_does_not_mirror_its_schema_is_refused():
    @dataclasses.dataclass
    class Partial:
        AVRO_NAME: ClassVar[str] = Error.AVRO_NAME
        code: str
        message: str

    with pytest.raises(ValueError, match="do not mirror"):
        bind_dicts(Partial, AVRO_TYPES)


def test_binary_codec_and_dicts_agree():
    """What the compiled codec writes, fastavro reads back to the dict `to_avro` gives."""
    from streaminfer.schemas.codec import AvroCodec

    codec = AvroCodec()
    for record in _records():
        schema = parse_schema(codec.schema(type(record)))
        read = schemaless_reader(BytesIO(codec.encode(record)[10:]), schema, None)
        assert type(record).from_avro(read) == record
