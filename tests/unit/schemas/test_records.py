"""Records, enums, numpy conversion and the input digest."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import pytest

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
    fit_payload,
    now_ms,
)

# -- Priority ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("high", Priority.HIGH),
        ("HIGH", Priority.HIGH),
        ("Normal", Priority.NORMAL),
        (" low ", Priority.LOW),
        (10, Priority.HIGH),
        (7, Priority.HIGH),
        (6, Priority.NORMAL),
        (4, Priority.NORMAL),
        (3, Priority.LOW),
        (0, Priority.LOW),
        ("7", Priority.HIGH),
        (Priority.LOW, Priority.LOW),
    ],
)
def test_priority_parse(value: str | int, expected: Priority) -> None:
    assert Priority.parse(value) is expected


@pytest.mark.parametrize("value", [11, -1, True, "urgent", "", 7.0, None, "1e1", "٧"])
def test_priority_parse_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        Priority.parse(value)  # type: ignore[arg-type]


def test_priority_topic_suffix() -> None:
    assert [p.topic_suffix for p in Priority] == ["low", "normal", "high"]


def test_enums_are_plain_symbols() -> None:
    assert str(DataType.FP32) == "FP32"
    assert f"{Status.FAILED}" == "FAILED"
    assert json.dumps({"t": AuditType.CACHE_HIT}) == '{"t": "CACHE_HIT"}'
    assert DataType("BYTES") is DataType.BYTES


# -- records ----------------------------------------------------------------------------------


def test_defaults() -> None:
    before = now_ms()
    request = InferenceRequest("r1", "text-embedding", [])
    result = InferenceResult("r1", "text-embedding", Status.SUCCEEDED, "w1")
    event = AuditEvent("r1", "text-embedding", AuditType.ACCEPTED, "gateway")
    letter = DeadLetter("t", 0, 1, b"x", "UNDECODABLE", "bad")
    after = now_ms()
    assert request.priority is Priority.NORMAL and request.parameters == {} and request.trace == {}
    assert before <= request.created_at <= after
    assert result.outputs == [] and result.error is None and result.timings == Timings()
    assert (result.batch_size, result.attempts) == (0, 1)
    assert before <= result.completed_at <= after
    assert uuid.UUID(event.event_id).version == 4
    assert event.event_id != AuditEvent("r1", "t", AuditType.ACCEPTED, "g").event_id
    assert letter.key is None and before <= letter.at <= after
    assert (letter.truncated, letter.payload_length, letter.payload_sha256) == (False, None, None)
    assert Error("E", "m").retriable is False


def test_from_avro_accepts_fastavro_datetimes() -> None:
    at = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    ms = 1714564800123
    d = InferenceRequest("r", "t", [], created_at=0, deadline_at=0).to_avro()
    d.update(created_at=at, deadline_at=at.replace(tzinfo=None))
    request = InferenceRequest.from_avro(d)
    assert request.created_at == ms and request.deadline_at == ms
    audit = AuditEvent.from_avro(
        {**AuditEvent("r", "t", AuditType.FAILED, "w").to_avro(), "at": at}
    )
    assert audit.at == ms


@pytest.mark.parametrize(
    "record",
    [
        InferenceRequest(
            "r",
            "t",
            [Tensor("x", DataType.FP32, [1], b"\x00" * 4)],
            model_version="2",
            priority=Priority.HIGH,
            deadline_at=5,
            idempotency_key="k",
            client_id="c",
            trace={"traceparent": "00-x"},
        ),
        InferenceResult(
            "r",
            "t",
            Status.FAILED,
            "w",
            error=Error("BAD_INPUT", "no", True),
            timings=Timings(1, 2, 3),
        ),
        AuditEvent("r", "t", AuditType.DEAD_LETTERED, "w", input_digest="ab", details={"a": "b"}),
        DeadLetter("t", 1, 2, b"p", "UNDECODABLE", "m", key=b"k"),
        DeadLetter("t", 1, 2, b"p", "E", "m", truncated=True, payload_length=9, payload_sha256="a"),
    ],
)
def test_to_avro_from_avro_round_trip(record: object) -> None:
    assert type(record).from_avro(record.to_avro()) == record  # type: ignore[attr-defined]


def test_dead_letter_read_with_the_previous_schema_takes_the_defaults() -> None:
    d = DeadLetter("t", 1, 2, b"p", "UNDECODABLE", "m").to_avro()
    for name in ("truncated", "payload_length", "payload_sha256"):
        del d[name]
    assert DeadLetter.from_avro(d) == DeadLetter("t", 1, 2, b"p", "UNDECODABLE", "m", at=d["at"])


# -- fit_payload ------------------------------------------------------------------------------

_PAYLOAD = bytes(range(256)) * 4
_DIGEST = hashlib.sha256(_PAYLOAD).hexdigest()


def test_fit_payload_keeps_the_head_with_the_length_and_digest_of_the_whole() -> None:
    letter = DeadLetter("t", 0, 7, _PAYLOAD, "UNDECODABLE", "bad", key=b"k", at=1)
    fitted = fit_payload(letter, 100)
    assert fitted.payload == _PAYLOAD[:100] and fitted.truncated is True
    assert (fitted.payload_length, fitted.payload_sha256) == (1024, _DIGEST)
    assert (fitted.source_topic, fitted.offset, fitted.key, fitted.at) == ("t", 7, b"k", 1)
    assert letter.payload == _PAYLOAD and letter.truncated is False  # a copy
    # Cutting again (a smaller limit) keeps describing the original value.
    again = fit_payload(fitted, 10)
    assert again.payload == _PAYLOAD[:10] and (again.payload_length, again.payload_sha256) == (
        1024,
        _DIGEST,
    )
    assert fit_payload(letter, 0).payload == b""


@pytest.mark.parametrize("limit", [1024, 5000])
def test_fit_payload_that_fits_is_whole_but_still_described(limit: int) -> None:
    letter = DeadLetter("t", 0, 7, _PAYLOAD, "UNDECODABLE", "bad")
    fitted = fit_payload(letter, limit)
    assert fitted.payload == _PAYLOAD and fitted.truncated is False
    assert (fitted.payload_length, fitted.payload_sha256) == (1024, _DIGEST)


def test_fit_payload_refuses_a_negative_limit() -> None:
    with pytest.raises(ValueError):
        fit_payload(DeadLetter("t", 0, 7, b"", "E", "m"), -1)
