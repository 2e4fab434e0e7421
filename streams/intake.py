"""Intake: one raw event from a request topic becomes a request ready for its model's batcher,
or a :class:`Refusal` that says how it is answered. Whatever an event says, checking it raises
nothing else: upstream producers write Avro that is valid and still says impossible things
(shapes of 2**62 elements, timestamps past year 9999, tasks that are not served)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from streaminfer.models.errors import ModelError
from streaminfer.models.repository import ModelRepository
from streaminfer.models.validation import validate_tensors
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import SchemaError
from streaminfer.schemas.records import InferenceRequest, Priority, Status, input_digest
from streaminfer.schemas.topics import parse_request_topic

from .outcomes import MAX_TIMESTAMP_MS
from .requests import SourceEvent

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS = 200


class Refusal(Exception):
    """An event answered at intake: a dead letter, and a result with ``status`` when the event
    names a request its client may wait for (``request`` set)."""

    def __init__(
        self,
        code: str,
        message: str,
        error_type: str,
        *,
        request: InferenceRequest | None = None,
        status: Status | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_type = error_type
        self.request = request
        self.status = status if request is not None else None


@dataclass(frozen=True, slots=True)
class Admitted:
    request: InferenceRequest
    inputs: dict[str, np.ndarray]
    size: int
    priority: Priority
    digest: str


class Intake:
    def __init__(self, codec: AvroCodec, repository: ModelRepository, prefix: str) -> None:
        self._codec = codec
        self._repository = repository
        self._prefix = prefix

    async def decode(self, source: SourceEvent) -> InferenceRequest:
        """The event's request. A registry outage raises (retriable SchemaError): the caller
        waits and tries again; anything undecodable is a Refusal."""
        try:
            return await self._codec.decode_async(source.value, InferenceRequest)
        except SchemaError as exc:
            if exc.retriable:
                raise
            raise Refusal(exc.code, str(exc), type(exc).__name__) from exc
        except Exception as exc:  # a bug guard: the promise is an answer for every event
            logger.exception(
                "decoding %s[%d]@%d failed unexpectedly",
                source.topic,
                source.partition,
                source.offset,
            )
            raise Refusal("UNDECODABLE", f"cannot decode: {exc!r}", type(exc).__name__) from exc

    def check(
        self, source: SourceEvent, request: InferenceRequest, served: Collection[str]
    ) -> Admitted:
        """The request, its inputs as arrays and where it queues; raises Refusal."""
        rid = request.request_id
        if not 0 < len(rid) <= MAX_REQUEST_ID_CHARS or not rid.isprintable():
            raise Refusal(
                "INVALID_REQUEST_ID",
                f"request_id must be 1-{MAX_REQUEST_ID_CHARS} printable "
                f"characters, got {len(rid)} characters",
                "InvalidRequestId",
            )
        topic = parse_request_topic(self._prefix, source.topic)
        if request.task not in served or (topic and topic[0] != request.task):
            raise Refusal(
                "TASK_NOT_FOUND",
                f"task {request.task[:100]!r} is not served here (topic {source.topic})",
                "ModelNotFound",
            )
        for name, value in (
            ("created_at", request.created_at),
            ("deadline_at", request.deadline_at),
        ):
            if value is not None and not 0 <= value <= MAX_TIMESTAMP_MS:
                raise Refusal(
                    "INVALID_TIMESTAMP",
                    f"{name} {value} is not a time in years 1970-9999",
                    "InvalidTimestamp",
                    request=request,
                    status=Status.REJECTED,
                )
        config = self._repository.get_config(request.task)
        if (
            request.model_version is not None
            and request.model_version not in config.served_versions
        ):
            raise Refusal(
                "MODEL_VERSION_NOT_FOUND",
                f"task {request.task!r} serves no version "
                f"{request.model_version[:100]!r} (served: {list(config.served_versions)})",
                "ModelVersionNotFound",
                request=request,
                status=Status.FAILED,
            )
        inputs = {}
        for tensor in request.inputs:
            if tensor.name in inputs:
                raise Refusal(
                    "INVALID_TENSOR",
                    f"input {tensor.name[:100]!r} appears twice",
                    "DecodeError",
                    request=request,
                    status=Status.REJECTED,
                )
            try:
                inputs[tensor.name] = tensor.to_numpy()
            except SchemaError as exc:
                raise Refusal(
                    "INVALID_TENSOR",
                    str(exc),
                    type(exc).__name__,
                    request=request,
                    status=Status.REJECTED,
                ) from exc
        try:
            validate_tensors(config, inputs)
        except ModelError as exc:
            raise Refusal(
                exc.code, str(exc), type(exc).__name__, request=request, status=Status.FAILED
            ) from exc
        size = int(next(iter(inputs.values())).shape[0])
        priority = topic[1] if topic else request.priority
        return Admitted(request, inputs, size, priority, input_digest(request.inputs))


def checked(
    intake: Intake, source: SourceEvent, request: InferenceRequest, served: Collection[str]
) -> Admitted:
    """:meth:`Intake.check` with a bug guard: an unexpected exception is a refusal too."""
    try:
        return intake.check(source, request, served)
    except Refusal:
        raise
    except Exception as exc:
        logger.exception("checking request %s failed unexpectedly", request.request_id[:100])
        answerable = (
            request.task in served
        )  # a result goes to its task's topic: never a made-up one
        raise Refusal(
            "INVALID_REQUEST",
            f"cannot check the request: {exc!r}",
            type(exc).__name__,
            request=request if answerable else None,
            status=Status.REJECTED,
        ) from exc
