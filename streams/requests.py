"""What the worker holds for one request between its event and its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from schemas.records import InferenceRequest, Priority


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """Where an event came from: enough to dead-letter it verbatim."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class PendingRequest:
    request: InferenceRequest
    inputs: dict[str, np.ndarray]
    size: int
    priority: Priority
    source: SourceEvent
    ack: Callable[[], Awaitable[object]]
    """Acknowledge the event (its offset becomes committable): call only once its outcome is written."""
    release: Callable[[], None]
    """Give the event up unacknowledged (shutdown): its offset is not committed, so it is redelivered."""
    digest: str
    model_version: str
    enqueued_at: float = 0.0
    cache_key: str | None = None
    """Content-cache entry for these inputs on this model version; None = opted out."""
