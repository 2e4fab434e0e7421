"""HTTP routes: thin adapters over :class:`InferenceService` (SPEC §5)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError

from . import metrics, spans
from .auth import ANONYMOUS, require
from .breakers import KAFKA, REDIS, probed
from .dependencies import Caller, service
from .errors import RETRY_AFTER_S, UNREACHABLE, NotFound
from .service import Submission, body_digest
from .views import links, pending_body, result_body

router = APIRouter()


class InferBody(BaseModel):
    """Body of ``POST /v1/infer/{task}``."""

    inputs: Any = Field(
        ...,
        description="The task's friendly form ({'text': ...}, {'pixels': 8x8}, "
        "{'image': base64 PNG}, {'features': {name: value}}) or a list of OIP tensors",
        examples=[{"text": "Kafka is a distributed log"}],
    )
    priority: str | int | None = Field(
        None, description="high|normal|low or 0-10 (>=7 high, 4-6 normal, <=3 low)"
    )
    model_version: str | None = Field(
        None, description="a version of the task's model; default the newest"
    )
    deadline_ms: int | None = Field(None, description="expire unless run within this many ms")
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)


WaitQuery = Annotated[
    float | None, Query(ge=0, le=3600, description="seconds to wait for the result")
]
RequestId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,200}$", description="the request's id (a UUID)")
]


class InferOptions(BaseModel):
    """``?wait`` and the headers of ``POST /v1/infer/{task}``: validated in one pydantic call rather
    than by FastAPI one parameter at a time (measured: a tenth of the submit path's CPU went there).
    Documented as parameters through ``openapi_extra`` (``INFER_PARAMETERS``)."""

    wait: float | None = Field(None, ge=0, le=3600)
    prefer: str | None = None
    idempotency_key: str | None = Field(None, max_length=256)


_OPTION_LOCATIONS = {
    "wait": ("query", "wait"),
    "prefer": ("header", "prefer"),
    "idempotency_key": ("header", "idempotency-key"),
}


def _nullable(schema: dict, title: str, **extra) -> dict:
    return {"anyOf": [schema, {"type": "null"}], "title": title, **extra}


INFER_PARAMETERS = [
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "seconds to wait for the result",
        "schema": _nullable(
            {"type": "number", "maximum": 3600, "minimum": 0},
            "Wait",
            description="seconds to wait for the result",
        ),
    },
    {
        "name": "prefer",
        "in": "header",
        "required": False,
        "schema": _nullable({"type": "string"}, "Prefer"),
    },
    {
        "name": "traceparent",
        "in": "header",
        "required": False,  # read by the propagator (spans.py)
        "schema": _nullable({"type": "string"}, "Traceparent"),
    },
    {
        "name": "idempotency-key",
        "in": "header",
        "required": False,
        "schema": _nullable({"type": "string", "maxLength": 256}, "Idempotency-Key"),
    },
]


def infer_options(request: Request) -> InferOptions:
    """The request's options; 422 as FastAPI words it (``loc`` query/header) when one is invalid."""
    headers, query = request.headers, request.query_params
    try:
        return InferOptions.model_validate(
            {
                "wait": query.get("wait"),
                "prefer": headers.get("prefer"),
                "idempotency_key": headers.get("idempotency-key"),
            }
        )
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": (*_OPTION_LOCATIONS[e["loc"][0]], *e["loc"][1:])} for e in exc.errors()]
        ) from None


@router.post(
    "/v1/infer/{task}",
    status_code=202,
    tags=["inference"],
    openapi_extra={"parameters": INFER_PARAMETERS},
    responses={200: {"description": "finished within ?wait"}, 202: {"description": "queued"}},
)
@spans.continued
async def infer(task: str, body: InferBody, request: Request, principal: Caller) -> JSONResponse:
    """Publish an inference request; with ``?wait=S`` or ``Prefer: wait=S`` answer with the result
    when it is done within S seconds. With ``Idempotency-Key``, the same key and body give the same
    request_id (no second event); the same key with another body is 409. A task no worker has
    served yet, or Redis or Kafka not answering, is 503 with ``Retry-After``."""
    options = infer_options(request)
    wait, prefer, idempotency_key = options.wait, options.prefer, options.idempotency_key
    require(principal, "inference:submit")
    svc = service(request)
    wait_s = svc.wait_seconds(wait, prefer)
    inference = await svc.prepare_request(
        Submission(
            task=task,
            inputs=body.inputs,
            priority=body.priority,
            model_version=body.model_version,
            deadline_ms=body.deadline_ms,
            parameters={k: str(v) for k, v in body.parameters.items()},
            trace=spans.trace_context(),
            idempotency_key=idempotency_key,
            client_id=None if principal is ANONYMOUS else principal.client_id,
        )
    )
    digest = body_digest(task, body.model_dump()) if idempotency_key else ""
    request_id = await svc.submit_once(inference, idempotency_key, digest)
    request.state.request_id = request_id
    headers = spans.response_headers()
    if wait_s > 0:
        with spans.waiting(request_id, wait_s) as found:
            result = await svc.wait(request_id, wait_s)
            found(result)
        if result is not None:
            return JSONResponse(
                result_body(result, svc.configs.get(task)), status_code=200, headers=headers
            )
    return JSONResponse(
        {
            "request_id": request_id,
            "task": task,
            "status": "queued",
            "priority": inference.priority.topic_suffix,
            "links": links(request_id),
        },
        status_code=202,
        headers=headers,
    )


@router.get("/v1/results/{request_id}", tags=["inference"])
async def get_result(
    request_id: RequestId,
    request: Request,
    principal: Caller,
    wait: WaitQuery = None,
    prefer: Annotated[str | None, Header()] = None,
) -> dict:
    """The request's status and, when done, its outputs; ``?wait=S`` long-polls. A client sees
    only its own requests (admins see all)."""
    require(principal, "inference:read")
    svc = service(request)
    request.state.request_id = request_id
    wait_s = svc.wait_seconds(wait, prefer)
    status = await svc.store.status(request_id)
    if status:
        svc.check_owner(request_id, status, principal)
    # NOTE: with no status yet (a Kafka-direct request not picked up so far) the owner is unknown:
    # wait first, then check whose it is before answering.
    result = (
        await svc.wait(request_id, wait_s) if wait_s > 0 else await svc.store.result(request_id)
    )
    if not status:
        status = await svc.store.status(request_id)
        svc.check_owner(request_id, status, principal)
    if result is not None:
        return result_body(result, svc.configs.get(result.task))
    return pending_body(request_id, status)


@router.delete("/v1/requests/{request_id}", tags=["inference"])
async def cancel(request_id: RequestId, request: Request, principal: Caller) -> dict:
    """Cancel a request not yet run, or delete a stored result (one's own; admins: any)."""
    require(principal, "inference:submit")
    svc = service(request)
    request.state.request_id = request_id
    svc.check_owner(request_id, await svc.store.status(request_id), principal)
    if await svc.store.result(request_id) is not None:
        await svc.store.delete(request_id)
        return {"request_id": request_id, "status": "deleted"}
    if not await svc.store.status(request_id):
        raise NotFound(f"no request {request_id!r}")
    await svc.store.cancel(request_id)
    return {"request_id": request_id, "status": "cancelling"}


@router.get("/v1/tasks", tags=["inference"])
async def tasks(request: Request, principal: Caller) -> dict:
    """Tasks, their models and versions, input signatures, batching settings and topics; with
    ``service`` what their batches cost the live workers (each one's fitted batch cost,
    ``compute_ms ≈ fixed + per_item · items + per_unit · input units``) and their instances."""
    described = service(request).describe_tasks()
    capacity = getattr(request.app.state, "capacity", None)  # capacity.read_service, bound
    try:
        costs = await capacity([t["task"] for t in described]) if capacity else {}
    except UNREACHABLE:  # Redis away: the signatures alone still answer the question
        costs = {}
    return {"tasks": [{**t, "service": costs.get(t["task"])} for t in described]}


@router.get("/health", tags=["operations"])
async def health() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


class Readiness(BaseModel):
    """Body of ``GET /ready``, 200 or 503 alike."""

    status: str = Field(..., examples=["ready", "not ready"])
    checks: dict[str, bool] = Field(
        ..., description="kafka, redis and worker:<task> for every task"
    )
    circuits: dict[str, dict] | None = Field(
        None,
        description=(
            "circuit breakers by name (redis, kafka, registry): state closed|half-open|open, value "
            "0|1|2 (as inference_circuit_state), failures in a row, retry_after_s until it probes"
        ),
    )


@router.get(
    "/ready",
    tags=["operations"],
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={
        503: {
            "model": Readiness,
            "description": "not ready: the checks that failed are false (see Retry-After)",
        }
    },
)
async def ready(request: Request, response: Response) -> dict:
    """Readiness: Kafka answers a metadata request (checked at most once a second), Redis
    answers, and a live worker serves every task."""
    state = await service(request).readiness()
    ok = state.is_ready
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    breakers = getattr(request.app.state, "breakers", None)
    probed(breakers, REDIS, state.redis)
    probed(breakers, KAFKA, state.kafka)
    body = {"status": "ready" if ok else "not ready", "checks": state.checks}
    if breakers is not None:
        body["circuits"] = breakers.describe()
    return body


@router.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
async def prometheus_metrics() -> PlainTextResponse:
    """Prometheus metrics of this gateway process."""
    return PlainTextResponse(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/info", tags=["operations"])
async def info(request: Request) -> dict:
    """Version and a summary of the configuration (no secrets)."""
    return request.app.state.info
