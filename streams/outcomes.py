"""What a worker leaves behind for each request: results (Redis, then the results topic), audit
events and dead letters, built and written through the :class:`ResultPublisher`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import numpy as np

from models.base import Model
from models.errors import ModelNotFound
from schemas.codec import AvroCodec
from schemas.records import (
    AuditEvent,
    AuditType,
    DeadLetter,
    Error,
    InferenceRequest,
    InferenceResult,
    Status,
    Tensor,
    Timings,
    input_digest,
    now_ms,
)

from . import metrics
from .publisher import ResultPublisher
from .requests import PendingRequest, SourceEvent

logger = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[object]]


class OutcomeWriter:
    """Builds and writes results, audit events and dead letters for one worker."""

    def __init__(self, publisher: ResultPublisher, codec: AvroCodec, worker_id: str) -> None:
        self._publisher = publisher
        self._codec = codec
        self.worker_id = worker_id

    async def reject(self, source: SourceEvent, request: InferenceRequest, exc: Exception, ack: Ack) -> None:
        """Bad input: a FAILED result its client can read, plus a dead letter for operators."""
        code = getattr(exc, "code", "INVALID_INPUT")
        if isinstance(exc, ModelNotFound):
            code = "TASK_NOT_FOUND"
        result = self.result(request, Status.FAILED, error=Error(code, str(exc), False))
        await self.finish([(request, result, input_digest(request.inputs))])
        await self.dead_letter(source, request, code, str(exc), type(exc).__name__)
        await ack()

    async def dead_letter_and_ack(self, source: SourceEvent, request: InferenceRequest | None,
                                  code: str, message: str, error_type: str, ack: Ack) -> None:
        await self.dead_letter(source, request, code, message, error_type)
        await ack()

    async def dead_letter(self, source: SourceEvent, request: InferenceRequest | None,
                          code: str, message: str, error_type: str) -> None:
        letter = DeadLetter(source_topic=source.topic, partition=source.partition, offset=source.offset,
                            key=source.key, payload=source.value, error_code=code, error_message=message)
        await self._publisher.dead_letter(letter, error_type)
        request_id = request.request_id if request else (source.key or b"").decode("utf-8", "replace")
        await self._publisher.audit([AuditEvent(
            request_id=request_id, task=request.task if request else "", type=AuditType.DEAD_LETTERED,
            actor=self.worker_id, details={"error_code": code, "topic": source.topic,
                                           "partition": str(source.partition), "offset": str(source.offset)},
        )])

    async def audit(self, items: Iterable[PendingRequest], kind: AuditType) -> None:
        """One audit event of ``kind`` per queued request."""
        await self._publisher.audit(self.audit_event(p.request, kind, p.digest) for p in items)

    async def mark_started(self, runnable: list[PendingRequest]) -> None:
        await self._publisher.mark_running([(p.request.request_id, p.request.client_id) for p in runnable],
                                           self.worker_id)
        items = str(sum(p.size for p in runnable))
        await self._publisher.audit(
            self.audit_event(p.request, AuditType.STARTED, p.digest, {"batch_items": items}) for p in runnable)

    async def finish(self, finished: list[tuple[InferenceRequest, InferenceResult, str]]) -> None:
        if not finished:
            return
        traceparents = {req.request_id: req.trace["traceparent"] for req, _, _ in finished
                        if req.trace.get("traceparent")}
        priorities = {req.request_id: req.priority.topic_suffix for req, _, _ in finished}
        is_new = await self._publisher.store_and_publish([r for _, r, _ in finished], traceparents, priorities)
        events = []
        for (request, result, digest), new in zip(finished, is_new, strict=True):
            if not new:
                events.append(self.audit_event(request, AuditType.DUPLICATE, digest))
                continue
            # traced requests opted into being followed: one INFO line each; the rest at DEBUG
            log = logger.info if request.request_id in traceparents else logger.debug
            log("request finished", extra={
                "request_id": request.request_id, "task": request.task, "status": result.status.value,
                "model": result.model_name, "version": result.model_version, "batch_size": result.batch_size,
                "traceparent": traceparents.get(request.request_id)})
            if result.error is not None:
                metrics.ERRORS.labels(request.task, result.error.code).inc()
            details = {"status": result.status.value}
            if result.error is not None:
                details["error_code"] = result.error.code
            events.append(self.audit_event(request, AuditType[result.status.value], digest, details))
        await self._publisher.audit(events)

    def result(self, request: InferenceRequest, status: Status, *, model: Model | None = None,
               outputs: dict[str, np.ndarray] | None = None, error: Error | None = None,
               batch_size: int = 0, attempts: int = 1, started: int | None = None,
               inference_ms: float = 0.0) -> InferenceResult:
        completed = now_ms()
        started = started if started is not None else completed
        return InferenceResult(
            request_id=request.request_id, task=request.task, status=status, worker_id=self.worker_id,
            model_name=model.name if model else None, model_version=model.version if model else None,
            outputs=[Tensor.from_numpy(name, np.ascontiguousarray(a)) for name, a in (outputs or {}).items()],
            error=error, batch_size=batch_size, attempts=attempts, created_at=request.created_at,
            completed_at=completed,
            timings=Timings(queued_ms=float(max(0, started - request.created_at)), inference_ms=inference_ms,
                            total_ms=float(max(0, completed - request.created_at))),
        )

    def audit_event(self, request: InferenceRequest, kind: AuditType, digest: str,
                    details: dict[str, str] | None = None) -> AuditEvent:
        return AuditEvent(request_id=request.request_id, task=request.task, type=kind,
                          actor=self.worker_id, input_digest=digest, details=details or {})
