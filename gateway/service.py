"""The gateway's logic behind its routes: build a request, publish it, read or wait for its
result. Kept apart from FastAPI so routes stay thin adapters."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from streaminfer.models.config import MAX_DEADLINE_MS, ModelConfig, load_repository_configs
from streaminfer.schemas.collections import CollectionError, collection_parameters
from streaminfer.schemas.records import (
    AuditEvent,
    AuditType,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
    input_digest,
    now_ms,
)
from streaminfer.schemas.topics import request_topics, results_topic

from . import metrics
from .apikeys import Principal
from .errors import (
    UNREACHABLE,
    GatewayError,
    IdempotencyConflict,
    InferenceTimeout,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from .inputs import InputLimits, check_limits, tensors_from_body
from .lag import LagMonitor
from .producer import RequestProducer
from .results import ResultStore
from .served import ServedTasks

logger = logging.getLogger(__name__)

ACTOR = "gateway"
DECODE_SLOTS = 4
"""Requests whose images are decoded at once, each in a worker thread: bounds the gateway's CPU
and memory spent on decoding, and keeps it off the event loop."""
UNSERVED_RETRY_AFTER_S = 5
"""Retry-After for a task no worker has served yet: starting a worker takes seconds."""
EMBEDDING_TASK = "text-embedding"
"""The task that embeds the ``text`` of collection calls."""


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
    def __init__(
        self,
        producer: RequestProducer,
        store: ResultStore,
        repository_path,
        prefix: str,
        max_wait_s: float,
        tasks: list[str] | None = None,
        lag: LagMonitor | None = None,
        max_lag_per_task: int = 0,
        limits: InputLimits | None = None,
        default_deadline_ms: int | None = None,
    ) -> None:
        """``default_deadline_ms``: the deadline of a request that sets none and whose task's
        ``model.yaml`` sets no ``default_deadline_ms`` (STREAMINFER_DEFAULT_DEADLINE_MS); None: none."""
        if default_deadline_ms is not None and not 0 < default_deadline_ms <= MAX_DEADLINE_MS:
            raise ValueError(
                f"default_deadline_ms must be between 1 and {MAX_DEADLINE_MS}, "
                f"not {default_deadline_ms!r}"
            )
        self.default_deadline_ms = default_deadline_ms
        self.producer = producer
        self.store = store
        self.prefix = prefix
        self.max_wait_s = max_wait_s
        self._repository_path = repository_path
        self._only = set(tasks) if tasks else None
        self.lag = lag
        self.max_lag_per_task = max_lag_per_task
        self.limits = limits or InputLimits()
        self.served = ServedTasks(store)
        self._decode_slots: asyncio.Semaphore | None = None  # made in the running loop
        self.refresh_tasks()

    def refresh_tasks(self) -> None:
        configs = load_repository_configs(self._repository_path)
        self.configs: dict[str, ModelConfig] = {
            t: c
            for t, c in configs.items()
            if c.versions and (self._only is None or t in self._only)
        }
        self.task_names = frozenset(self.configs)

    def config(self, task: str) -> ModelConfig:
        try:
            return self.configs[task]
        except KeyError:
            raise NotFound(
                f"no task named {task!r}",
                code="TASK_NOT_FOUND",
                details={"tasks": sorted(self.configs)},
            ) from None

    async def prepare_request(self, sub: Submission) -> InferenceRequest:
        """:meth:`build_request` for the routes: for a task with image inputs, in a worker thread
        (at most DECODE_SLOTS at once), since decoding blocks for as long as the image is large;
        inline for the others, whose checks cost microseconds."""
        config = self.config(sub.task)
        if not any(
            source["kind"] == "image" for source in config.friendly.get("inputs", {}).values()
        ):
            return self.build_request(sub)
        if self._decode_slots is None:
            self._decode_slots = asyncio.Semaphore(DECODE_SLOTS)
        async with self._decode_slots:
            return await asyncio.to_thread(self.build_request, sub)

    def build_request(self, sub: Submission) -> InferenceRequest:
        config = self.config(sub.task)
        check_version(config, sub.model_version)
        try:
            priority = Priority.parse(sub.priority if sub.priority is not None else "normal")
        except ValueError as exc:
            raise InvalidRequest(f"priority must be high, normal, low or 0-10: {exc}") from exc
        check_limits(config, sub.inputs, sub.parameters, self.limits)
        try:
            collection_parameters({str(k): str(v) for k, v in sub.parameters.items()})
        except CollectionError as exc:  # the worker checks again (Kafka-direct requests)
            raise InvalidRequest(
                exc.message, details={"parameters": ["collection", "item_id", "similar_k"]}
            ) from None
        arrays = tensors_from_body(config, sub.inputs)
        created = now_ms()
        deadline = None
        if sub.deadline_ms is not None:
            if not 0 < sub.deadline_ms <= MAX_DEADLINE_MS:
                raise InvalidRequest(f"deadline_ms must be between 1 and {MAX_DEADLINE_MS}")
            deadline = created + int(sub.deadline_ms)
        elif (default := self.deadline_default(config)) is not None:
            deadline = created + default
        return InferenceRequest(
            request_id=str(uuid.uuid4()),
            idempotency_key=sub.idempotency_key,
            task=sub.task,
            model_version=sub.model_version,
            priority=priority,
            inputs=[Tensor.from_numpy(name, a) for name, a in arrays.items()],
            parameters={str(k): str(v) for k, v in sub.parameters.items()},
            created_at=created,
            deadline_at=deadline,
            client_id=sub.client_id,
            trace=sub.trace,
        )

    def deadline_default(self, config: ModelConfig) -> int | None:
        """Milliseconds a request without ``deadline_ms`` gets: its task's ``model.yaml``
        ``default_deadline_ms``, else the gateway's setting, else None (no deadline)."""
        if config.default_deadline_ms is not None:
            return config.default_deadline_ms
        return self.default_deadline_ms

    async def submit(self, request: InferenceRequest) -> None:
        accepted = AuditEvent(
            request_id=request.request_id,
            task=request.task,
            type=AuditType.ACCEPTED,
            actor=ACTOR,
            input_digest=input_digest(request.inputs),
            details={"priority": request.priority.value},
        )
        await self.store.mark_queued(request.request_id, request.task, request.client_id)
        await self.producer.submit(request, accepted)
        metrics.REQUESTS.labels(request.task, "accepted").inc()
        if logger.isEnabledFor(logging.INFO):  # the hot path: no record's extras built for nothing
            logger.info(
                "accepted request",
                extra={
                    "request_id": request.request_id,
                    "task": request.task,
                    "priority": request.priority.value,
                },
            )

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
            raise TooManyRequests(
                f"task {task!r} has {lag} requests waiting; retry later",
                code="OVERLOADED",
                headers={"Retry-After": "1"},
                details={"lag": lag, "bound": self.max_lag_per_task},
            )

    async def check_served(self, task: str) -> None:
        """503 for a task no worker has ever served: nothing would consume its requests (a task
        dropped into the repository after the workers started). A task whose workers are all
        down right now is still accepted: its requests wait in Kafka for the next worker."""
        if not await self.served.is_served(task):
            raise ServiceUnavailable(
                f"no worker has served task {task!r} yet; retry once a worker serves it",
                headers={"Retry-After": str(UNSERVED_RETRY_AFTER_S)},
                details={"task": task, "reason": "no worker has served this task"},
            )

    async def live_workers(self) -> dict[str, list[str]]:
        """worker_id -> tasks of the live heartbeats; their tasks count as served from now on."""
        workers = await self.store.live_workers()
        await self.served.observe(workers)
        return workers

    async def live_tasks(self) -> set[str] | None:
        """Tasks a live worker serves now, or None when Redis does not answer."""
        if not await self.store.ping():
            return None
        return await self._tasks_of_live_workers()

    async def _tasks_of_live_workers(self) -> set[str] | None:
        try:
            workers = await self.live_workers()
        except (ServiceUnavailable, *UNREACHABLE):  # Redis went away since the ping
            return None
        return {task for tasks in workers.values() for task in tasks}

    async def readiness(self) -> Readiness:
        """Whether Kafka answers a metadata request (checked at most once a second), Redis a
        ping, and which tasks a live worker serves: what both readiness routes answer from."""
        kafka, redis = await asyncio.gather(self.producer.is_reachable(), self.store.ping())
        served = await self._tasks_of_live_workers() if redis else None
        return Readiness(kafka, redis, served, tuple(self.configs))

    async def submit_once(
        self, request: InferenceRequest, idempotency_key: str | None, body_digest: str
    ) -> str:
        """Submit unless the client's ``Idempotency-Key`` already names a request with the same
        body; returns the request_id that answers. Same key with another body: 409."""
        self.check_capacity(request.task)
        await self.check_served(request.task)
        if not idempotency_key:
            await self.submit(request)
            return request.request_id
        claim = await self.store.claim_idempotency(
            request.client_id, idempotency_key, request.request_id, body_digest
        )
        if not claim.same_body:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request body",
                details={"request_id": claim.request_id},
            )
        if claim.published:
            return claim.request_id
        # NOTE: the key stays bound to its request_id whatever happens to the publish. A timeout
        # or delivery error after aiokafka's send() returned may follow a delivered request; only
        # a failure inside the first send() (metadata or buffer wait) or before it (Redis) is
        # surely "not sent", and even then releasing would let a retry that raced this attempt
        # take a new id and run the request twice. So an unconfirmed claim (an earlier attempt
        # timed out, or is still in flight) is published again under the SAME request_id: the
        # worker answers each request_id once, so a second copy costs nothing but a DUPLICATE.
        if claim.request_id != request.request_id:
            request = dataclasses.replace(request, request_id=claim.request_id)
        await self.submit(request)
        try:
            await self.store.confirm_idempotency(
                request.client_id, idempotency_key, request.request_id, body_digest
            )
        except ServiceUnavailable:  # accepted all the same; a retry would only publish it again
            logger.warning("could not mark Idempotency-Key of %s published", request.request_id)
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
                        raise InvalidRequest(
                            f"Prefer: wait must be a number of seconds, not {value!r}"
                        ) from exc
        if wait is None:
            return 0.0
        if wait < 0:
            raise InvalidRequest("wait must be zero or more seconds")
        return min(wait, self.max_wait_s)

    async def wait(self, request_id: str, timeout_s: float) -> InferenceResult | None:
        result = await self.store.wait(request_id, timeout_s)
        if result is not None and result.task in self.configs:
            metrics.REQUEST_SECONDS.labels(result.task).observe(
                max(0, result.completed_at - result.created_at) / 1000
            )
        return result

    async def embed(self, text: str, client_id: str | None) -> list[float]:
        """``text``'s vector from the EMBEDDING_TASK, through the normal path (Kafka, a worker),
        waited for up to ``max_wait_s``."""
        request = await self.prepare_request(
            Submission(task=EMBEDDING_TASK, inputs={"text": text}, client_id=client_id)
        )
        await self.submit_once(request, None, "")
        result = await self.wait(request.request_id, self.max_wait_s)
        if result is None:
            raise InferenceTimeout(
                f"no embedding within {self.max_wait_s:g} s",
                details={"request_id": request.request_id},
            )
        if result.status is not Status.SUCCEEDED or not result.outputs:
            error = result.error
            raise GatewayError(
                f"embedding the text failed: {error.message if error else result.status.value}",
                code=error.code if error else "INFERENCE_FAILED",
                status=502,
                details={"request_id": request.request_id},
            )
        return result.outputs[0].to_numpy().reshape(-1).tolist()

    def describe_tasks(self) -> list[dict]:
        return [
            {
                "task": task,
                **config.signature(),
                "topics": {
                    "requests": request_topics(self.prefix, task),
                    "results": results_topic(self.prefix, task),
                },
            }
            for task, config in sorted(self.configs.items())
        ]


@dataclass(frozen=True, slots=True)
class Readiness:
    kafka: bool
    redis: bool
    """Redis answered a ping (what the redis breaker is probed with)."""
    served: set[str] | None
    """Tasks a live worker serves; None when the heartbeats could not be read."""
    tasks: tuple[str, ...]
    """The tasks this gateway serves."""

    @property
    def checks(self) -> dict[str, bool]:
        """kafka, redis (answered, heartbeats read) and worker:<task> for every task."""
        served = self.served or set()
        return {
            "kafka": self.kafka,
            "redis": self.served is not None,
            **{f"worker:{task}": task in served for task in self.tasks},
        }

    @property
    def is_ready(self) -> bool:
        return all(self.checks.values())


def check_version(config: ModelConfig, version: str | None) -> None:
    """MODEL_VERSION_NOT_FOUND unless ``version`` (None: the task's default) is one the task serves."""
    if version is not None and version not in config.served_versions:
        raise NotFound(
            f"task {config.task!r} serves no model version {version!r}",
            code="MODEL_VERSION_NOT_FOUND",
            details={"versions": list(config.served_versions)},
        )


def body_digest(task: str, body: dict) -> str:
    """Digest of a submission's meaning: the task and the JSON body with keys sorted."""
    canonical = json.dumps(
        {"task": task, "body": body}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
