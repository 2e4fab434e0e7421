"""``InferenceRequest`` events from plain arguments, as the gateway builds them: the tensors,
priority, deadline and parameters of a request written straight to Kafka."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from streaminfer.schemas import keys, topics
from streaminfer.schemas.errors import SchemaError
from streaminfer.schemas.records import InferenceRequest, Priority, Tensor, now_ms

from .propagation import trace_headers

__all__ = ["build_request", "input_tensor"]


def input_tensor(name: str, value: Any) -> Tensor:
    """A request tensor from a plain value. A str, bytes, or (nested) list of them is BYTES; a
    numpy array keeps its dtype; other array-likes become FP32 when they hold floats and INT64
    when they hold integers (the datatypes models take; JSON-like lists have no dtype of their
    own). The batch dimension is the caller's: ``[[...8x8...]]`` is one image."""
    if _is_text(value):
        array = np.array([value] if isinstance(value, str | bytes) else value, dtype=object)
        if not all(isinstance(item, str | bytes) for item in array.reshape(-1)):
            raise ValueError(f"input {name!r}: ragged lists of text")
    elif isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:
            raise ValueError(f"input {name!r}: not a rectangular array: {exc}") from exc
        if (
            array.dtype.kind in "USO"
        ):  # numpy made text (or objects) of values that are not all text
            raise ValueError(f"input {name!r}: items must all be str or bytes, or all numbers")
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
    if array.size == 0:
        raise ValueError(f"input {name!r} is empty")
    if array.dtype.kind == "O" and not all(
        isinstance(item, str | bytes) for item in array.reshape(-1)
    ):
        raise ValueError(f"input {name!r}: items of an object array must be str or bytes")
    try:
        return Tensor.from_numpy(name, array)
    except SchemaError as exc:
        raise ValueError(f"input {name!r}: {exc}") from exc


def _is_text(value: Any) -> bool:
    if isinstance(value, str | bytes):
        return True
    return isinstance(value, list | tuple) and bool(value) and all(_is_text(item) for item in value)


def build_request(
    task: str,
    inputs: Mapping[str, Any],
    *,
    priority: str | int | Priority = "normal",
    deadline_ms: int | None = None,
    parameters: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    model_version: str | None = None,
    client_id: str | None = None,
    created_at: int | None = None,
    traceparent: str | None = None,
) -> InferenceRequest:
    """An ``InferenceRequest`` as the gateway would publish it; ``inputs`` maps input names to
    values (see :func:`input_tensor`). ``created_at`` is epoch ms (default now); ``deadline_ms``
    counts from it. The ``trace`` map carries ``traceparent`` when given, else the caller's
    current OpenTelemetry context (none outside a span). Raises ValueError for anything the
    worker would refuse on sight."""
    if not isinstance(task, str) or not topics.TASK_NAME_RE.match(task):
        raise ValueError(f"invalid task name {task!r}")
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("inputs must be a non-empty mapping of input name to values")
    if deadline_ms is not None and (
        isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms <= 0
    ):
        raise ValueError(f"deadline_ms must be a positive integer, not {deadline_ms!r}")
    created = now_ms() if created_at is None else int(created_at)
    return InferenceRequest(
        request_id=request_id or str(uuid.uuid4()),
        task=task,
        model_version=model_version,
        priority=Priority.parse(priority),
        inputs=[input_tensor(str(n), v) for n, v in inputs.items()],
        parameters={str(k): str(v) for k, v in (parameters or {}).items()},
        created_at=created,
        deadline_at=None if deadline_ms is None else created + deadline_ms,
        client_id=client_id,
        trace={keys.HEADER_TRACEPARENT: traceparent} if traceparent else trace_headers(),
    )
