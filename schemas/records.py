"""Python records mirroring the Avro schemas in this package, and their dict mapping.

Each record's `to_avro()` returns a dict fastavro can write (timestamps as int epoch
milliseconds); `from_avro()` accepts such a dict, with timestamps as int milliseconds or
as the `datetime` fastavro produces for `timestamp-millis`, and always stores int ms.
Records are plain (mutable) dataclasses with slots: treat them as values and derive
changed copies with `dataclasses.replace`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from schemas.errors import DecodeError, EncodeError

logger = logging.getLogger(__name__)

NAMESPACE = "io.streaminfer.v1"

__all__ = [
    "NAMESPACE",
    "AuditEvent",
    "AuditType",
    "DataType",
    "DeadLetter",
    "Error",
    "InferenceRequest",
    "InferenceResult",
    "Priority",
    "Status",
    "Tensor",
    "Timings",
    "input_digest",
    "now_ms",
]


def now_ms() -> int:
    """Current wall-clock time as integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def _to_ms(value: int | datetime) -> int:
    """Normalise a timestamp-millis value read by fastavro (datetime) or by us (int)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # Avro timestamps are UTC instants
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _ONE_MS
    return int(value)


def _opt_ms(value: int | datetime | None) -> int | None:
    return None if value is None else _to_ms(value)


class _Symbol(str, Enum):
    """An Avro enum symbol; `str()` and f-strings give the bare symbol."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class DataType(_Symbol):
    BOOL = "BOOL"
    UINT8 = "UINT8"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class Priority(_Symbol):
    LOW = "LOW"
    NORMAL = "NORMAL"
    HIGH = "HIGH"

    @classmethod
    def parse(cls, value: str | int) -> Priority:
        """`high|normal|low` in any case, or an integer 0-10 (>=7 high, 4-6 normal, <=3 low)."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, bool):  # bool is an int; True is not a priority
            raise ValueError(f"invalid priority {value!r}")
        if isinstance(value, str):
            text = value.strip()
            member = cls.__members__.get(text.upper())
            if member is not None:
                return member
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"invalid priority {value!r}: use high, normal, low or 0-10")
            level = int(text)
        elif isinstance(value, int):
            level = value
        else:
            raise ValueError(f"invalid priority {value!r}: use high, normal, low or 0-10")
        if not 0 <= level <= 10:
            raise ValueError(f"invalid priority {value!r}: integers must be 0-10")
        if level >= 7:
            return cls.HIGH
        return cls.NORMAL if level >= 4 else cls.LOW

    @property
    def topic_suffix(self) -> str:
        """The last segment of this priority's request topic: high, normal or low."""
        return self.value.lower()


class Status(_Symbol):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"


class AuditType(_Symbol):
    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"
    CACHE_HIT = "CACHE_HIT"
    STARTED = "STARTED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    RETRIED = "RETRIED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    DEAD_LETTERED = "DEAD_LETTERED"


# Plain dict lookups: Enum.__call__ is several times slower on the decode hot path.
_DATATYPES = DataType._value2member_map_
_PRIORITIES = Priority._value2member_map_
_STATUSES = Status._value2member_map_
_AUDIT_TYPES = AuditType._value2member_map_

# Explicit little-endian dtypes: the wire format is little-endian whatever the host.
_NUMPY_DTYPES: dict[DataType, np.dtype] = {
    DataType.BOOL: np.dtype("?"),
    DataType.UINT8: np.dtype("u1"),
    DataType.INT8: np.dtype("i1"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.FP16: np.dtype("<f2"),
    DataType.FP32: np.dtype("<f4"),
    DataType.FP64: np.dtype("<f8"),
}
_DATATYPE_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in _NUMPY_DTYPES.items()}


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise EncodeError(f"BYTES tensor items must be str or bytes, not {type(item).__name__}")


def _item_text(item: bytes) -> str | bytes:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return item  # binary payloads (e.g. images) stay bytes rather than failing


@dataclass(slots=True)
class Tensor:
    """A named n-dimensional tensor; see `io.streaminfer.v1.Tensor.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Tensor"

    name: str
    datatype: DataType
    shape: list[int]
    data: bytes | list[bytes]

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray) -> Tensor:
        """Numeric arrays become little-endian row-major bytes; str/bytes/object arrays
        become BYTES tensors with one UTF-8 item per element."""
        arr = np.asarray(array)
        shape = [int(d) for d in arr.shape]
        if arr.dtype.kind in "OUS":
            try:
                items = [_item_bytes(x) for x in arr.reshape(-1).tolist()]
            except UnicodeEncodeError as exc:
                raise EncodeError(f"tensor {name!r}: text is not encodable as UTF-8") from exc
            return cls(name, DataType.BYTES, shape, items)
        datatype = _DATATYPE_BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
        if datatype is None:
            raise EncodeError(f"tensor {name!r}: numpy dtype {arr.dtype} has no Avro datatype")
        # tobytes() is C (row-major) order even for non-contiguous views.
        data = arr.astype(_NUMPY_DTYPES[datatype], copy=False).tobytes()
        return cls(name, datatype, shape, data)

    def to_numpy(self) -> np.ndarray:
        """Numeric tensors as a read-only zero-copy view of `data`; BYTES tensors as an
        object array of str (items that are not valid UTF-8 stay bytes)."""
        shape = self.shape
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise DecodeError(f"tensor {self.name!r}: invalid shape {shape!r}")
        count = math.prod(shape)
        data = self.data
        datatype = _DATATYPES.get(self.datatype)
        if datatype is None:
            raise DecodeError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}")
        if datatype is DataType.BYTES:
            if not isinstance(data, list) or len(data) != count:
                n = len(data) if isinstance(data, list) else "raw bytes"
                raise DecodeError(
                    f"tensor {self.name!r}: BYTES shape {shape} needs {count} items, got {n}"
                )
            out = np.empty(count, dtype=object)
            out[:] = [_item_text(item) for item in data]
            return out.reshape(shape)
        dtype = _NUMPY_DTYPES[datatype]
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"tensor {self.name!r}: {datatype} data must be raw bytes")
        expected = count * dtype.itemsize
        if len(data) != expected:
            raise DecodeError(
                f"tensor {self.name!r}: {datatype} shape {shape} needs {expected} bytes, "
                f"got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def to_avro(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape, "data": self.data}

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Tensor:
        return cls(d["name"], _DATATYPES[d["datatype"]], d["shape"], d["data"])


def _pack_len(n: int) -> bytes:
    return struct.pack("<Q", n)


def input_digest(inputs: Iterable[Tensor]) -> str:
    """SHA-256 (hex) over the names, datatypes, shapes and data of `inputs`.

    Every part is length-prefixed so no two different inputs share a digest. Tensors are
    taken in name order: models match inputs by name, so list order does not matter.
    """
    h = hashlib.sha256()
    for tensor in sorted(inputs, key=lambda t: t.name):
        name = tensor.name.encode("utf-8")
        datatype = str(tensor.datatype).encode("ascii")
        h.update(_pack_len(len(name)) + name + _pack_len(len(datatype)) + datatype)
        h.update(_pack_len(len(tensor.shape)) + struct.pack(f"<{len(tensor.shape)}q", *tensor.shape))
        data = tensor.data
        if isinstance(data, list):
            h.update(b"L" + _pack_len(len(data)))
            for item in data:
                h.update(_pack_len(len(item)))
                h.update(item)
        else:
            h.update(b"B" + _pack_len(len(data)))
            h.update(data)
    return h.hexdigest()


@dataclass(slots=True)
class Error:
    """Why an inference did not succeed; see `io.streaminfer.v1.Error.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Error"

    code: str
    message: str
    retriable: bool = False

    def to_avro(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retriable": self.retriable}

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Error:
        return cls(d["code"], d["message"], d["retriable"])


@dataclass(slots=True)
class Timings:
    """Queue, inference and total time in ms; see `io.streaminfer.v1.Timings.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Timings"

    queued_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0

    def to_avro(self) -> dict[str, Any]:
        return {
            "queued_ms": self.queued_ms,
            "inference_ms": self.inference_ms,
            "total_ms": self.total_ms,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Timings:
        return cls(d["queued_ms"], d["inference_ms"], d["total_ms"])


@dataclass(slots=True)
class InferenceRequest:
    """A request to run a task's model; see `io.streaminfer.v1.InferenceRequest.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.InferenceRequest"

    request_id: str
    task: str
    inputs: list[Tensor]
    model_version: str | None = None
    priority: Priority = Priority.NORMAL
    parameters: dict[str, str] = field(default_factory=dict)
    created_at: int = field(default_factory=now_ms)
    deadline_at: int | None = None
    idempotency_key: str | None = None
    client_id: str | None = None
    trace: dict[str, str] = field(default_factory=dict)

    def to_avro(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "task": self.task,
            "model_version": self.model_version,
            "priority": self.priority,
            "inputs": [t.to_avro() for t in self.inputs],
            "parameters": self.parameters,
            "created_at": self.created_at,
            "deadline_at": self.deadline_at,
            "idempotency_key": self.idempotency_key,
            "client_id": self.client_id,
            "trace": self.trace,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> InferenceRequest:
        return cls(
            request_id=d["request_id"],
            task=d["task"],
            inputs=[Tensor.from_avro(t) for t in d["inputs"]],
            model_version=d.get("model_version"),
            priority=_PRIORITIES[d.get("priority", "NORMAL")],
            parameters=d.get("parameters", {}),
            created_at=_to_ms(d["created_at"]),
            deadline_at=_opt_ms(d.get("deadline_at")),
            idempotency_key=d.get("idempotency_key"),
            client_id=d.get("client_id"),
            trace=d.get("trace", {}),
        )


@dataclass(slots=True)
class InferenceResult:
    """The outcome of one request; see `io.streaminfer.v1.InferenceResult.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.InferenceResult"

    request_id: str
    task: str
    status: Status
    worker_id: str
    model_name: str | None = None
    model_version: str | None = None
    outputs: list[Tensor] = field(default_factory=list)
    error: Error | None = None
    timings: Timings = field(default_factory=Timings)
    batch_size: int = 0
    attempts: int = 1
    created_at: int = field(default_factory=now_ms)
    completed_at: int = field(default_factory=now_ms)

    def to_avro(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "task": self.task,
            "status": self.status,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "outputs": [t.to_avro() for t in self.outputs],
            "error": None if self.error is None else self.error.to_avro(),
            "timings": self.timings.to_avro(),
            "batch_size": self.batch_size,
            "attempts": self.attempts,
            "worker_id": self.worker_id,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> InferenceResult:
        error = d.get("error")
        return cls(
            request_id=d["request_id"],
            task=d["task"],
            status=_STATUSES[d["status"]],
            worker_id=d["worker_id"],
            model_name=d.get("model_name"),
            model_version=d.get("model_version"),
            outputs=[Tensor.from_avro(t) for t in d["outputs"]],
            error=None if error is None else Error.from_avro(error),
            timings=Timings.from_avro(d["timings"]),
            batch_size=d["batch_size"],
            attempts=d["attempts"],
            created_at=_to_ms(d["created_at"]),
            completed_at=_to_ms(d["completed_at"]),
        )


def _new_event_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class AuditEvent:
    """One step in a request's life; see `io.streaminfer.v1.AuditEvent.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.AuditEvent"

    request_id: str
    task: str
    type: AuditType
    actor: str
    event_id: str = field(default_factory=_new_event_id)
    at: int = field(default_factory=now_ms)
    input_digest: str | None = None
    details: dict[str, str] = field(default_factory=dict)

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "request_id": self.request_id,
            "task": self.task,
            "type": self.type,
            "at": self.at,
            "actor": self.actor,
            "input_digest": self.input_digest,
            "details": self.details,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> AuditEvent:
        return cls(
            request_id=d["request_id"],
            task=d["task"],
            type=_AUDIT_TYPES[d["type"]],
            actor=d["actor"],
            event_id=d["event_id"],
            at=_to_ms(d["at"]),
            input_digest=d.get("input_digest"),
            details=d["details"],
        )


@dataclass(slots=True)
class DeadLetter:
    """An unprocessable message kept verbatim; see `io.streaminfer.v1.DeadLetter.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.DeadLetter"

    source_topic: str
    partition: int
    offset: int
    payload: bytes
    error_code: str
    error_message: str
    key: bytes | None = None
    at: int = field(default_factory=now_ms)

    def to_avro(self) -> dict[str, Any]:
        return {
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "payload": self.payload,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "at": self.at,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> DeadLetter:
        return cls(
            source_topic=d["source_topic"],
            partition=d["partition"],
            offset=d["offset"],
            payload=d["payload"],
            error_code=d["error_code"],
            error_message=d["error_message"],
            key=d.get("key"),
            at=_to_ms(d["at"]),
        )
