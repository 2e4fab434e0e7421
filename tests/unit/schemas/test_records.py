"""Records, enums, numpy conversion and the input digest."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from schemas.records import (
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
    ],
)
def test_to_avro_from_avro_round_trip(record: object) -> None:
    assert type(record).from_avro(record.to_avro()) == record  # type: ignore[attr-defined]
