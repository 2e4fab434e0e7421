"""Python records mirroring the Avro schemas in this package.

Each record's `to_avro()` returns a dict fastavro can write and `from_avro()` reads one back;
both are derived from the dataclass fields and the `.avsc` file (`schemas/record_dicts.py`).
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
from enum import StrEnum
from typing import Any, ClassVar

from streaminfer.schemas.record_dicts import bind_dicts
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


@dataclass(slots=True)
class Error:
    """Why an inference did not succeed; see `io.streaminfer.v1.Error.avsc`."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Error"

    code: str
    message: str
    retriable: bool = False


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


RECORD_TYPES: tuple[type, ...] = (
    Tensor,
    Error,
    Timings,
    InferenceRequest,
    InferenceResult,
    AuditEvent,
    DeadLetter,
)
AVRO_TYPES: dict[str, type] = {
    **{record_type.AVRO_NAME: record_type for record_type in RECORD_TYPES},
    **{f"{NAMESPACE}.{enum.__name__}": enum for enum in (DataType, Priority, Status, AuditType)},
}
"""Our classes by Avro full name: the records and the enums."""
for _record_type in RECORD_TYPES[1:]:  # Tensor converts its own data (schemas/tensors.py)
    bind_dicts(_record_type, AVRO_TYPES)


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
