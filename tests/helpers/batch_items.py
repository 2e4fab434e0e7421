"""A request as the batcher and its queues see it, for their unit tests."""

from __future__ import annotations

from dataclasses import dataclass

from streaminfer.schemas.records import Priority


@dataclass
class Item:
    name: str
    priority: Priority = Priority.NORMAL
    size: int = 1
    enqueued_at: float = 0.0
    units: int = 1
    deadline_ms: int | None = None
