"""Python records mirroring the Avro schemas in this package, and their dict mapping.

Each record's `to_avro()` returns a dict fastavro can write (timestamps as int epoch
milliseconds); `from_avro()` accepts such a dict, with timestamps as int milliseconds or
as the `datetime` fastavro produces for `timestamp-millis`, and always stores int ms.
Records are plain (mutable) dataclasses with slots: treat them as values and derive
changed copies with `dataclasses.replace`. `Tensor`, `DataType` and `input_digest` live in
`schemas.tensors` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from streaminfer.schemas.tensors import DataType, Tensor, input_digest

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
    "fit_payload",
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


class Priority(StrEnum):
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


class Status(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"


class AuditType(StrEnum):
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
_PRIORITIES = Priority._value2member_map_
_STATUSES = Status._value2member_map_
_AUDIT_TYPES = AuditType._value2member_map_


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
    feature_lookup_ms: float | None = None
    """Feature lookup tasks: the time their features took to fetch; None: none looked up."""
    feature_source: str | None = None
    """``cache`` (all from Redis) or ``db`` (some from the database); None: none looked up."""

    def to_avro(self) -> dict[str, Any]:
        return {
            "queued_ms": self.queued_ms,
            "inference_ms": self.inference_ms,
            "total_ms": self.total_ms,
            "feature_lookup_ms": self.feature_lookup_ms,
            "feature_source": self.feature_source,
        }

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> Timings:
        return cls(d["queued_ms"], d["inference_ms"], d["total_ms"], d.get("feature_lookup_ms"),
                   d.get("feature_source"))


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
    similar: list[dict[str, Any]] | None = None
    """``parameters.similar_k``: ``{"id", "score", "metadata"}`` dicts (metadata as JSON text,
    ``io.streaminfer.v1.SimilarItem``), best first; None when not asked."""

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
            "similar": self.similar,
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
            similar=d.get("similar"),  # absent when read with schema version 2 or older
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
    truncated: bool = False  # payload is only the head of the original value
    payload_length: int | None = None  # of the original value, in bytes
    payload_sha256: str | None = None  # hex, of the original value

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
            "truncated": self.truncated,
            "payload_length": self.payload_length,
            "payload_sha256": self.payload_sha256,
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
            truncated=d.get("truncated", False),  # absent when read with schema version 1
            payload_length=d.get("payload_length"),
            payload_sha256=d.get("payload_sha256"),
        )


def fit_payload(letter: DeadLetter, max_payload_bytes: int) -> DeadLetter:
    """A copy of `letter` whose payload is at most `max_payload_bytes` long: past that, its
    head, with `truncated` set. Either way `payload_length` and `payload_sha256` describe
    the whole original value (computed here unless the letter already carries them), so a
    dead letter can always be matched to its event and checked on replay.

    The budget is the producer's limit less what the rest of the message takes: e.g.
    `max_request_size - len(codec.encode(replace(letter, payload=b""))) - 100` covers the
    other fields, the payload's longer length varint and its two new values (a SHA-256 in
    hex is 64 characters); the key and headers count against the limit too. An already
    truncated letter keeps the length and digest it carries.
    """
    if max_payload_bytes < 0:
        raise ValueError(f"max_payload_bytes must be >= 0, not {max_payload_bytes}")
    payload = letter.payload
    length, digest = letter.payload_length, letter.payload_sha256
    if not letter.truncated:
        length = len(payload)
        digest = digest or hashlib.sha256(payload).hexdigest()
    if len(payload) <= max_payload_bytes:
        return replace(letter, payload_length=length, payload_sha256=digest)
    return replace(
        letter,
        payload=payload[:max_payload_bytes],
        truncated=True,
        payload_length=length,
        payload_sha256=digest,
    )
