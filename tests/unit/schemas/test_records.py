"""Records, enums, numpy conversion and the input digest."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.errors import DecodeError, EncodeError, SchemaError
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
    input_digest,
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


# -- Tensor <-> numpy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        (np.bool_, DataType.BOOL),
        (np.uint8, DataType.UINT8),
        (np.int8, DataType.INT8),
        (np.int16, DataType.INT16),
        (np.int32, DataType.INT32),
        (np.int64, DataType.INT64),
        (np.float16, DataType.FP16),
        (np.float32, DataType.FP32),
        (np.float64, DataType.FP64),
    ],
)
def test_numeric_round_trip(dtype: type, datatype: DataType) -> None:
    array = (np.arange(24) % 5).astype(dtype).reshape(2, 3, 4)
    tensor = Tensor.from_numpy("x", array)
    assert tensor.datatype is datatype
    assert tensor.shape == [2, 3, 4]
    assert isinstance(tensor.data, bytes) and len(tensor.data) == array.nbytes
    back = tensor.to_numpy()
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_to_numpy_is_zero_copy_and_read_only() -> None:
    tensor = Tensor("x", DataType.FP32, [2], np.array([1.5, 2.5], "<f4").tobytes())
    array = tensor.to_numpy()
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(tensor.data, np.uint8))


def test_from_numpy_writes_little_endian_row_major() -> None:
    big = np.array([[1, 2], [3, 4]], dtype=">i4")
    tensor = Tensor.from_numpy("x", big.T)  # big-endian and not C-contiguous
    assert tensor.data == np.array([[1, 3], [2, 4]], dtype="<i4").tobytes()
    assert tensor.shape == [2, 2]


def test_scalar_and_empty_tensors() -> None:
    scalar = Tensor.from_numpy("s", np.float64(2.5))
    assert scalar.shape == [] and scalar.to_numpy() == 2.5
    empty = Tensor.from_numpy("e", np.zeros((0, 384), np.float32))
    assert empty.data == b"" and empty.to_numpy().shape == (0, 384)


@pytest.mark.parametrize(
    "array",
    [
        np.array(["héllo", "wörld"]),
        np.array(["héllo", b"w\xc3\xb6rld"], dtype=object),
        np.array([b"h\xc3\xa9llo", b"w\xc3\xb6rld"]),
    ],
)
def test_bytes_tensor_from_text(array: np.ndarray) -> None:
    tensor = Tensor.from_numpy("text", array)
    assert tensor.datatype is DataType.BYTES
    assert tensor.data == ["héllo".encode(), "wörld".encode()]
    back = tensor.to_numpy()
    assert back.dtype == object and back.tolist() == ["héllo", "wörld"]


def test_bytes_tensor_keeps_shape_and_binary_items() -> None:
    tensor = Tensor("b", DataType.BYTES, [2, 1], [b"ok", b"\xff\xfe"])
    back = tensor.to_numpy()
    assert back.shape == (2, 1)
    assert back[0, 0] == "ok" and back[1, 0] == b"\xff\xfe"  # not UTF-8: stays bytes


@pytest.mark.parametrize(
    "tensor",
    [
        Tensor("x", DataType.FP32, [3], b"\x00" * 10),
        Tensor("x", DataType.FP32, [3], [b"a", b"b", b"c"]),
        Tensor("x", DataType.INT64, [-1], b""),
        Tensor("x", DataType.BYTES, [3], [b"a"]),
        Tensor("x", DataType.BYTES, [1], b"a"),
        Tensor("x", "COMPLEX", [1], b"a"),  # type: ignore[arg-type]
    ],
)
def test_to_numpy_rejects_inconsistent_tensors(tensor: Tensor) -> None:
    with pytest.raises(DecodeError) as info:
        tensor.to_numpy()
    assert isinstance(info.value, SchemaError)


@pytest.mark.parametrize(
    "array",
    [np.array([1, 2], np.uint16), np.array([1j]), np.array([1, "a", 3.0], dtype=object)],
)
def test_from_numpy_rejects_unsupported(array: np.ndarray) -> None:
    with pytest.raises(EncodeError):
        Tensor.from_numpy("x", array)


# -- input_digest ---------------------------------------------------------------------------


def _inputs() -> list[Tensor]:
    return [
        Tensor("text", DataType.BYTES, [2], [b"a", b"bc"]),
        Tensor("mask", DataType.INT64, [2], np.array([1, 0], "<i8").tobytes()),
    ]


def test_input_digest_is_stable_and_order_independent() -> None:
    digest = input_digest(_inputs())
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert input_digest(_inputs()) == digest
    assert input_digest(list(reversed(_inputs()))) == digest


@pytest.mark.parametrize(
    "changed",
    [
        Tensor("text2", DataType.BYTES, [2], [b"a", b"bc"]),
        Tensor("text", DataType.UINT8, [2], [b"a", b"bc"]),
        Tensor("text", DataType.BYTES, [2, 1], [b"a", b"bc"]),
        Tensor("text", DataType.BYTES, [2], [b"ab", b"c"]),
        Tensor("text", DataType.BYTES, [2], b"abc"),
    ],
)
def test_input_digest_sees_every_part(changed: Tensor) -> None:
    assert input_digest([changed, _inputs()[1]]) != input_digest(_inputs())


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
