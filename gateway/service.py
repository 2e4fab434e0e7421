"""The gateway's logic behind its routes: build a request, publish it, read or wait for its
result. Kept apart from FastAPI so routes stay thin adapters."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from models.config import ModelConfig, load_repository_configs
from schemas.records import (
    AuditEvent,
    AuditType,
    InferenceRequest,
    InferenceResult,
    Priority,
    Tensor,
    input_digest,
    now_ms,
)
from schemas.topics import request_topics, results_topic

from . import metrics
from .apikeys import Principal
from .errors import IdempotencyConflict, InvalidRequest, NotFound, TooManyRequests
from .inputs import InputLimits, check_limits, tensors_from_body
from .lag import LagMonitor
from .producer import RequestProducer
from .results import ResultStore

logger = logging.getLogger(__name__)

ACTOR = "gateway"


@dataclass
class Submission:
    task: str
    inputs: Any
    priority: str | int | None = None
    model_version: str | None = None
    deadline_ms: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    client_id: str | None = None
    trace: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None


class InferenceService:
    def __init__(self, producer: RequestProducer, store: ResultStore, repository_path, prefix: str,
                 max_wait_s: float, tasks: list[str] | None = None, lag: LagMonitor | None = None,
                 max_lag_per_task: int = 0, limits: InputLimits | None = None) -> None:
        self.producer = producer
        self.store = store
        self.prefix = prefix
        self.max_wait_s = max_wait_s
        self._repository_path = repository_path
        self._only = set(tasks) if tasks else None
        self.lag = lag
        self.max_lag_per_task = max_lag_per_task
        self.limits = limits or InputLimits()
        self.refresh_tasks()

    def refresh_tasks(self) -> None:
        configs = load_repository_configs(self._repository_path)
        self.configs: dict[str, ModelConfig] = {
            t: c for t, c in configs.items() if c.versions and (self._only is None or t in self._only)}
        self.task_names = frozenset(self.configs)

    def config(self, task: str) -> ModelConfig:
        try:
            return self.configs[task]
        except KeyError:
            raise NotFound(f"no task named {task!r}", code="TASK_NOT_FOUND",
                           details={"tasks": sorted(self.configs)}) from None

    def build_request(self, sub: Submission) -> InferenceRequest:
        config = self.config(sub.task)
        if sub.model_version is not None and sub.model_version not in config.versions:
            raise NotFound(f"task {sub.task!r} has no model version {sub.model_version!r}",
                           code="MODEL_VERSION_NOT_FOUND", details={"versions": list(config.versions)})
        try:
            priority = Priority.parse(sub.priority if sub.priority is not None else "normal")
        except ValueError as exc:
            raise InvalidRequest(f"priority must be high, normal, low or 0-10: {exc}") from exc
        check_limits(config, sub.inputs, sub.parameters, self.limits)
        arrays = tensors_from_body(config, sub.inputs)
        created = now_ms()
        deadline = None
        if sub.deadline_ms is not None:
            if sub.deadline_ms <= 0:
                raise InvalidRequest("deadline_ms must be positive")
            deadline = created + int(sub.deadline_ms)
        return InferenceRequest(
            request_id=str(uuid.uuid4()), idempotency_key=sub.idempotency_key, task=sub.task, model_version=sub.model_version,
            priority=priority, inputs=[Tensor.from_numpy(name, a) for name, a in arrays.items()],
            parameters={str(k): str(v) for k, v in sub.parameters.items()}, created_at=created,
            deadline_at=deadline, client_id=sub.client_id, trace=sub.trace,
        )

    async def submit(self, request: InferenceRequest) -> None:
        accepted = AuditEvent(request_id=request.request_id, task=request.task, type=AuditType.ACCEPTED,
                              actor=ACTOR, input_digest=input_digest(request.inputs),
                              details={"priority": request.priority.value})
        await self.store.mark_queued(request.request_id, request.task, request.client_id)
        await self.producer.submit(request, accepted)
        metrics.REQUESTS.labels(request.task, "accepted").inc()
        logger.info("accepted request", extra={"request_id": request.request_id, "task": request.task,
                                               "priority": request.priority.value})

    @staticmethod
    def check_owner(request_id: str, status: dict[str, str], principal: Principal) -> None:
        """Unless ``principal`` may see the request of this status, REQUEST_NOT_FOUND, exactly as
        for one that does not exist (no existence leak). Admins see every existing request."""
        if not status or not (principal.is_admin or status.get("client_id") == principal.client_id):
            raise NotFound(f"no request {request_id!r}")

    def check_capacity(self, task: str) -> None:
        """429 OVERLOADED while the workers are this far behind on the task."""
        if self.lag is None or not self.max_lag_per_task:
            return
        lag = self.lag.task_lag(task)
        if lag > self.max_lag_per_task:
            raise TooManyRequests(f"task {task!r} has {lag} requests waiting; retry later", code="OVERLOADED",
                                  headers={"Retry-After": "1"}, details={"lag": lag, "bound": self.max_lag_per_task})

    async def submit_once(self, request: InferenceRequest, idempotency_key: str | None,
                          body_digest: str) -> str:
        """Submit unless the client's ``Idempotency-Key`` already names a request with the same
        body; returns the request_id that answers. Same key with another body: 409."""
        self.check_capacity(request.task)
        if not idempotency_key:
            await self.submit(request)
            return request.request_id
        bound, same = await self.store.claim_idempotency(request.client_id, idempotency_key,
                                                         request.request_id, body_digest)
        if not same:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request body",
                                      details={"request_id": bound})
        if bound != request.request_id:
            return bound
        try:
            await self.submit(request)
        except Exception:
            await self.store.release_idempotency(request.client_id, idempotency_key)
            raise
        return request.request_id

    def wait_seconds(self, query_wait: float | None, prefer: str | None) -> float:
        wait = query_wait
        if wait is None and prefer:
            for part in prefer.split(","):
                name, _, value = part.strip().partition("=")
                if name.strip().lower() == "wait":
                    try:
                        wait = float(value)
                    except ValueError as exc:
                        raise InvalidRequest(f"Prefer: wait must be a number of seconds, not {value!r}") from exc
        if wait is None:
            return 0.0
        if wait < 0:
            raise InvalidRequest("wait must be zero or more seconds")
        return min(wait, self.max_wait_s)

    async def wait(self, request_id: str, timeout_s: float) -> InferenceResult | None:
        result = await self.store.wait(request_id, timeout_s)
        if result is not None and result.task in self.configs:
            metrics.REQUEST_SECONDS.labels(result.task).observe(max(0, result.completed_at - result.created_at) / 1000)
        return result

    def describe_tasks(self) -> list[dict]:
        return [
            {"task": task, **config.signature(),
             "topics": {"requests": request_topics(self.prefix, task), "results": results_topic(self.prefix, task)}}
            for task, config in sorted(self.configs.items())
        ]


def body_digest(task: str, body: dict) -> str:
    """Digest of a submission's meaning: the task and the JSON body with keys sorted."""
    canonical = json.dumps({"task": task, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
