"""Errors of the gateway, and the one place HTTP status codes live.

    GatewayError
    ├── InvalidRequest          400/422 INVALID_REQUEST
    ├── Unauthorized            401
    ├── Forbidden               403
    ├── NotFound                404 TASK_NOT_FOUND / REQUEST_NOT_FOUND / MODEL_VERSION_NOT_FOUND
    │                               / COLLECTION_NOT_FOUND / ITEM_NOT_FOUND
    ├── IdempotencyConflict     409
    ├── PayloadTooLarge         413
    ├── TooManyRequests         429 RATE_LIMIT_EXCEEDED / OVERLOADED (with Retry-After)
    ├── ServiceUnavailable      503 (always with Retry-After)
    └── InferenceTimeout        504

Model and schema errors know nothing of HTTP: :func:`error_response` maps them here, and a
Redis or Kafka error that escapes a component (a dependency that went away) becomes 503.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from streaminfer.models.errors import ModelError, ModelNotFound, ModelVersionNotFound
from streaminfer.schemas.collections import CollectionError

from . import metrics

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""Retry-After of a 503 for a dependency that does not answer (Redis, Kafka)."""
UNREACHABLE = (RedisError, OSError)
"""What redis-py raises when Redis is away: its own errors, and socket errors (ConnectionError,
TimeoutError, ...) that reach us unwrapped."""


class GatewayError(Exception):
    status = 500
    code = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status
        self.details = details or {}
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status, code = 422, "INVALID_REQUEST"


class Unauthorized(GatewayError):
    status, code = 401, "UNAUTHORIZED"


class Forbidden(GatewayError):
    status, code = 403, "FORBIDDEN"


class NotFound(GatewayError):
    status, code = 404, "REQUEST_NOT_FOUND"


class IdempotencyConflict(GatewayError):
    status, code = 409, "IDEMPOTENCY_CONFLICT"


class PayloadTooLarge(GatewayError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class TooManyRequests(GatewayError):
    status, code = 429, "RATE_LIMIT_EXCEEDED"


class ServiceUnavailable(GatewayError):
    """503; carries ``Retry-After`` (RETRY_AFTER_S unless the raiser says otherwise)."""

    status, code = 503, "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(RETRY_AFTER_S))


class InferenceTimeout(GatewayError):
    status, code = 504, "INFERENCE_TIMEOUT"


class ErrorBody(BaseModel):
    """Every error response (SPEC §5)."""

    error_code: str
    message: str
    request_id: str | None
    timestamp: str
    details: dict[str, Any]


_DESCRIPTIONS = {
    400: "malformed request (INVALID_REQUEST)",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "TASK_NOT_FOUND, REQUEST_NOT_FOUND, MODEL_VERSION_NOT_FOUND, COLLECTION_NOT_FOUND, "
    "ITEM_NOT_FOUND or (/v2 infer, an entity with no features) FEATURES_NOT_FOUND",
    405: "method not allowed",
    409: "IDEMPOTENCY_CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "INVALID_REQUEST, COLLECTION_DIMENSION_MISMATCH, COLLECTION_LIMIT_EXCEEDED or (/v2 infer) "
    "FEATURE_VALIDATION_FAILED",
    429: "RATE_LIMIT_EXCEEDED or OVERLOADED (see Retry-After)",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE (see Retry-After): Redis or Kafka not reachable, or no worker has served "
    "the task yet",
    504: "INFERENCE_TIMEOUT",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _DESCRIPTIONS.items()
}
"""Declared on every route, so the OpenAPI schema documents the error body clients get."""


@contextmanager
def reaching(what: str) -> Iterator[None]:
    """Redis not answering, where it enters our code, becomes 503 naming ``what`` it holds."""
    try:
        yield
    except UNREACHABLE as exc:
        logger.warning("redis call (%s) failed: %r", what, exc)
        raise ServiceUnavailable(
            f"the {what} is not reachable; retry later", details={"dependency": "redis"}
        ) from exc


def from_model_error(exc: ModelError) -> GatewayError:
    if isinstance(exc, ModelNotFound):
        return NotFound(str(exc), code="TASK_NOT_FOUND")
    if isinstance(exc, ModelVersionNotFound):
        return NotFound(str(exc), code="MODEL_VERSION_NOT_FOUND")
    return InvalidRequest(str(exc))


_COLLECTION_STATUS = {
    "COLLECTION_NOT_FOUND": 404,
    "ITEM_NOT_FOUND": 404,
    "COLLECTION_DIMENSION_MISMATCH": 409,
}
"""A vector of another length than the collection's is a conflict with its state (409); every
other collection error (invalid input, a limit) is 422."""


@contextmanager
def collection_errors() -> Iterator[None]:
    """A refused collection call (``schemas.collections.CollectionError``) as its HTTP error;
    Redis not answering as 503."""
    try:
        with reaching("collection store"):
            yield
    except CollectionError as exc:
        raise GatewayError(
            exc.message,
            code=exc.code,
            status=_COLLECTION_STATUS.get(exc.code, 422),
            details=exc.details,
        ) from None


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_json(error: GatewayError, request_id: str | None) -> JSONResponse:
    """``error`` as its response: SPEC §5's body, its status and headers."""
    body = {
        "error_code": error.code,
        "message": error.message,
        "request_id": request_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "details": error.details,
    }
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def error_response(request: Request, error: GatewayError) -> JSONResponse:
    task = request.path_params.get("task", "") if request.scope.get("type") == "http" else ""
    if task and task not in getattr(getattr(request.app.state, "service", None), "task_names", ()):
        task = "unknown"  # keep label values bounded
    metrics.ERRORS.labels(task, error.code).inc()
    return error_json(error, request_id_of(request))


_STARLETTE_CODES = {400: InvalidRequest, 404: NotFound, 405: InvalidRequest, 413: PayloadTooLarge}
"""400: FastAPI's own "error parsing the body" (not UTF-8, nested past the parser's limit)."""


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as SPEC §5's JSON body; no stack trace reaches a client."""

    @app.exception_handler(GatewayError)
    async def _gateway(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(ModelError)
    async def _model(request: Request, exc: ModelError) -> JSONResponse:
        return error_response(request, from_model_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        problems = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in errors
        ]
        message = (
            "request body is not valid JSON" if malformed else "request does not match the API"
        )
        return error_response(
            request,
            InvalidRequest(message, status=400 if malformed else 422, details={"errors": problems}),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STARLETTE_CODES.get(exc.status_code, GatewayError)
        code = "INVALID_REQUEST" if exc.status_code == 405 else None
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "request body is not valid JSON (not UTF-8, or nested too deep)"
        return error_response(request, kind(message, status=exc.status_code, code=code))

    # NOTE: a safety net. Components wrap their own calls (``reaching``, the producer), but a
    # dependency that goes away mid-request must never surface as 500 INTERNAL_ERROR.
    async def _unreachable(request: Request, exc: Exception) -> JSONResponse:
        dependency = "kafka" if isinstance(exc, KafkaError) else "redis"
        logger.warning("%s unreachable on %s: %r", dependency, request.url.path, exc)
        return error_response(
            request,
            ServiceUnavailable(
                f"{dependency} is not reachable; retry later", details={"dependency": dependency}
            ),
        )

    for kind in (RedisError, OSError, KafkaError):
        app.add_exception_handler(kind, _unreachable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        logger.exception("unhandled error (incident %s)", incident)
        return error_response(
            request, GatewayError("internal error", details={"incident": incident})
        )
