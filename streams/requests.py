"""What the worker holds for one request between its event and its result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streaminfer.schemas.records import InferenceRequest, Priority

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from .ledger import Entry


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """Where an event came from: enough to dead-letter it verbatim."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Any = ()
    """The record's Kafka headers, ``(str, bytes)`` pairs: where its trace context comes from."""


def input_units(inputs: dict[str, np.ndarray]) -> int:
    """The size of a request's inputs as the model sees it: bytes of text, elements otherwise."""
    units = 0
    for array in inputs.values():
        if array.dtype == object:
            units += sum(len(x) if isinstance(x, bytes | str) else 1 for x in array.flat)
        else:
            units += array.size
    return units


@dataclass(slots=True)
class PendingRequest:
    request: InferenceRequest
    inputs: dict[str, np.ndarray]
    size: int
    priority: Priority
    source: SourceEvent
    entry: Entry
    """The event in the ack ledger: answered once its outcome is written, or given up."""
    digest: str
    model_version: str
    units: int = 0
    """How large its inputs are (text bytes, tensor elements): the batch cost's second term."""
    deadline_ms: int | None = None
    """When the result is due: the request's ``deadline_at``, else its task's default."""
    enqueued_at: float = 0.0
    cache_key: str | None = None
    """Content-cache entry for these inputs on this model version; None = opted out."""
    received_ns: int = 0
    """When the worker took its event (ns since the epoch): where its queue wait span starts."""
    context: Context | None = None
    """The trace context it came with (``spans.request_context``); None: none."""
    root: Context | None = None
    """Without one, the context of its queue wait span: the root of the trace the worker gives it."""
    waited: bool = False
    """Its queue wait span is ended (``spans.end_queue_wait``)."""
