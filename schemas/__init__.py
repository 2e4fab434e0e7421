"""The event contract: Avro schemas, the records mirroring them, their codec, and the
names (topics, Redis keys, headers) gateway and workers share."""

from streaminfer.schemas.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec, load_schemas
from streaminfer.schemas.errors import (
    DecodeError,
    EncodeError,
    RegistryUnavailable,
    SchemaError,
    UnknownSchema,
)
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
    input_digest,
    now_ms,
)

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "AuditEvent",
    "AuditType",
    "AvroCodec",
    "DataType",
    "DeadLetter",
    "DecodeError",
    "EncodeError",
    "Error",
    "InferenceRequest",
    "InferenceResult",
    "Priority",
    "RegistryUnavailable",
    "SchemaError",
    "Status",
    "Tensor",
    "Timings",
    "UnknownSchema",
    "fit_payload",
    "input_digest",
    "load_schemas",
    "now_ms",
]
