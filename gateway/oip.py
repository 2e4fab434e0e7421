"""Open Inference Protocol (KServe V2) REST routes over the same Kafka path as ``/v1/infer``:
publish the request, wait for its result in Redis and answer synchronously in V2 JSON, or with
the binary tensor data extension (:mod:`streaminfer.gateway.oip_binary`) as Triton's client asks by default.

As Triton and KServe do, an infer body is JSON whatever its ``Content-Type`` (tritonclient sends
none), and an error body carries KServe's ``error`` string beside the SPEC's fields."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from streaminfer.models.config import ModelConfig
from streaminfer.schemas.records import InferenceResult, Status, Tensor

from . import spans
from .apikeys import Principal
from .auth import ANONYMOUS, require
from .dependencies import Caller, service
from .errors import (
    ERROR_RESPONSES,
    RETRY_AFTER_S,
    ErrorBody,
    GatewayError,
    InferenceTimeout,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from .oip_binary import HEADER, MEDIA_TYPE, binary_response, raw_bytes
from .oip_route import OIPRoute
from .service import InferenceService, Submission, check_version
from .views import links

router = APIRouter(tags=["open inference protocol"], route_class=OIPRoute)

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_torchscript"}
# Request parameters the gateway reads itself; other scalar parameters reach the worker as strings.
CONSUMED = {"priority", "deadline_ms", "timeout", "binary_data_output"}


class InputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(..., examples=["FP32"])
    data: Any = Field(
        ...,
        description="flat or nested row-major values; BYTES items are strings. "
        "Absent when parameters.binary_data_size says the tensor's bytes "
        "follow the JSON (binary tensor data extension)",
    )
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes of this tensor after the JSON header"
    )


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data: bool | None = Field(
        None, strict=True, description="answer this output as binary data"
    )
    classification: int | None = Field(
        None, strict=True, description="Triton's classification extension: not supported (only 0)"
    )


class RequestedOutput(BaseModel):
    name: str
    parameters: OutputParameters | None = None


class InferParameters(BaseModel):
    """Request parameters; the ones named here are read by the gateway, other scalar ones reach
    the worker as strings."""

    model_config = ConfigDict(extra="allow")

    priority: str | int | None = Field(None, description="high|normal|low or 0-10 (>=7 high)")
    deadline_ms: float | None = Field(
        None, strict=True, description="expire unless run within this many ms"
    )
    timeout: float | None = Field(
        None, strict=True, description="Triton's name for the deadline, in µs"
    )
    binary_data_output: bool | None = Field(
        None,
        strict=True,
        description=(
            "answer every output not asked otherwise as binary data (binary tensor data extension)"
        ),
    )


class InferRequest(BaseModel):
    """A V2 inference request. ``parameters.priority`` takes high|normal|low or 0-10 (>=7 high);
    ``parameters.deadline_ms`` (or Triton's ``timeout`` in µs) expires the request unless run in time."""

    id: str | None = None
    parameters: InferParameters | None = None
    inputs: list[InputTensor] = Field(..., min_length=1)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] = Field(
        ...,
        description="absent from a binary answer's JSON header, where "
        "parameters.binary_data_size gives the tensor's bytes",
    )
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="request_id and batch_size"
    )
    outputs: list[OutputTensor]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(..., description="-1 marks the batch dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OIPErrorBody(ErrorBody):
    """An error of a /v2 route: the SPEC's body and KServe's ``error`` (the message again)."""

    error: str


OIP_ERRORS = {code: {**entry, "model": OIPErrorBody} for code, entry in ERROR_RESPONSES.items()}
ERRORS = {
    **OIP_ERRORS,
    **{
        code: {"model": OIPErrorBody, "description": text}
        for code, text in (
            (404, "TASK_NOT_FOUND or MODEL_VERSION_NOT_FOUND"),
            (422, "INVALID_REQUEST"),
            (500, "INTERNAL_ERROR: the worker failed"),
            (
                503,
                "SERVICE_UNAVAILABLE (see Retry-After): Redis or Kafka not reachable, no worker has "
                "served the task yet, or a retriable worker failure",
            ),
            (504, "INFERENCE_TIMEOUT"),
        )
    },
}


def _submission(
    task: str, body: InferRequest, version: str | None, principal: Principal
) -> Submission:
    params = body.parameters.model_dump(exclude_none=True) if body.parameters else {}
    timeout_us = params.get("timeout")
    deadline_ms = params.get("deadline_ms", timeout_us / 1000 if timeout_us is not None else None)
    if deadline_ms is not None and not math.isfinite(deadline_ms):
        raise InvalidRequest(
            "parameters.deadline_ms (or Triton's timeout in µs) must be a finite number"
        )
    return Submission(
        task=task,
        inputs=[t.model_dump(exclude_none=True) for t in body.inputs],
        model_version=version,
        client_id=None if principal is ANONYMOUS else principal.client_id,
        trace=spans.trace_context(),
        priority=params.get("priority"),
        deadline_ms=None if deadline_ms is None else math.ceil(deadline_ms),
        parameters={
            k: str(v)
            for k, v in params.items()
            if k not in CONSUMED and isinstance(v, str | int | float)
        },
    )


def _output(tensor: Tensor) -> dict:
    flat = tensor.to_numpy().ravel().tolist()
    body: dict = {
        "name": tensor.name,
        "datatype": str(tensor.datatype),
        "shape": list(tensor.shape),
        "data": flat,
    }
    if any(
        isinstance(item, bytes) for item in flat
    ):  # NOTE: not UTF-8, so JSON needs base64 (MLServer's codec)
        body["data"] = [base64.b64encode(i).decode() if isinstance(i, bytes) else i for i in flat]
        body["parameters"] = {"content_type": "base64"}
    return body


def _binary_output(tensor: Tensor) -> tuple[dict, bytes]:
    raw = raw_bytes(tensor.to_numpy(), str(tensor.datatype))
    return (
        {
            "name": tensor.name,
            "datatype": str(tensor.datatype),
            "shape": list(tensor.shape),
            "parameters": {"binary_data_size": len(raw)},
        },
        raw,
    )


def _binary_outputs(body: InferRequest) -> Callable[[str], bool]:
    """Which outputs to answer as binary data: as each requested output's ``binary_data`` says,
    else as the request's ``binary_data_output`` (Triton's rule)."""
    default = bool(body.parameters and body.parameters.binary_data_output)
    asked = {o.name: o.parameters.binary_data for o in body.outputs or () if o.parameters}
    return lambda name: default if asked.get(name) is None else bool(asked[name])


def _failure(result: InferenceResult) -> GatewayError:
    """The error response for a request that did not succeed."""
    code = result.error.code if result.error else result.status.value
    message = (
        result.error.message if result.error else f"the request was {result.status.value.lower()}"
    )
    details = {"status": result.status.value.lower(), "error_code": code}
    if result.status is Status.EXPIRED:
        return InferenceTimeout(message, details=details)
    if code == "INVALID_INPUT":
        return InvalidRequest(message, details=details)
    if (
        code == "FEATURE_VALIDATION_FAILED"
    ):  # the entity's row is no row of numbers (docs/features.md)
        return InvalidRequest(message, code=code, details=details)
    if code == "FEATURES_NOT_FOUND":  # no row for the entity named
        return NotFound(message, code=code, details=details)
    if code in ("TASK_NOT_FOUND", "MODEL_VERSION_NOT_FOUND"):
        return NotFound(message, code=code, details=details)
    if result.error is not None and result.error.retriable:
        return ServiceUnavailable(message, details=details, headers={"Retry-After": "1"})
    return GatewayError(message, details=details)


WaitQuery = Annotated[
    float | None, Query(ge=0, description="seconds to wait; default the gateway's maximum")
]
PreferHeader = Annotated[str | None, Header(description="wait=S bounds the wait like ?wait=S")]
BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
INFER = {
    "response_model": None,
    "responses": {
        **ERRORS,
        200: {
            "model": InferResponse,
            "content": {MEDIA_TYPE: BINARY_BODY},
            "description": f"V2 JSON; or, when outputs are asked as binary data, {HEADER} bytes of that JSON "
            "(binary outputs with parameters.binary_data_size instead of data), then their raw bytes",
            "headers": {
                HEADER: {
                    "description": "length of the JSON header of a binary answer",
                    "schema": {"type": "integer"},
                }
            },
        },
    },
}
# NOTE: a binary request (header Inference-Header-Content-Length) is described in the docstring,
# not declared: as a schema it admits any bytes and any length, and most of those are a 400.
METADATA = {"response_model": ModelMetadata, "responses": {**OIP_ERRORS, 404: ERRORS[404]}}
READY = {
    "response_model": ModelReady,
    "responses": {**OIP_ERRORS, 404: ERRORS[404], 503: ERRORS[503]},
}


@router.post("/v2/models/{task}/infer", **INFER)
@spans.continued
async def infer(
    task: str,
    body: InferRequest,
    request: Request,
    principal: Caller,
    wait: WaitQuery = None,
    prefer: PreferHeader = None,
) -> Response:
    """Run an inference synchronously: publish the request to Kafka and answer with its outputs
    once a worker has produced them (within ``?wait=S``/``Prefer: wait=S``, by default the
    gateway's maximum wait; past it 504 INFERENCE_TIMEOUT, and the result stays readable at
    ``/v1/results/{request_id}``). ``outputs`` selects output tensors by name; ``model_name`` is
    the task.

    The body is JSON whatever its Content-Type (Triton's client sends none). Binary tensor data
    extension: with header ``Inference-Header-Content-Length: N`` the body is N bytes of this JSON,
    then the raw bytes (little-endian, row-major; BYTES elements each a 4-byte little-endian length
    and the bytes) of each input whose ``parameters.binary_data_size`` gives their length, in
    order. Outputs asked with ``parameters.binary_data: true`` (or all, by the request's
    ``binary_data_output``) are answered as ``application/octet-stream``: the header's N bytes of
    JSON, where such an output has ``parameters.binary_data_size`` instead of ``data``, then their
    bytes in order."""
    return await _infer(request, principal, task, None, body, wait, prefer)


@router.post("/v2/models/{task}/versions/{version}/infer", **INFER)
@spans.continued
async def infer_version(
    task: str,
    version: str,
    body: InferRequest,
    request: Request,
    principal: Caller,
    wait: WaitQuery = None,
    prefer: PreferHeader = None,
) -> Response:
    """Like ``POST /v2/models/{task}/infer``, run by the given model version."""
    return await _infer(request, principal, task, version, body, wait, prefer)


async def _infer(
    request: Request,
    principal: Principal,
    task: str,
    version: str | None,
    body: InferRequest,
    wait: float | None,
    prefer: str | None,
) -> Response:
    require(principal, "inference:submit")
    svc: InferenceService = service(request)
    inference = await svc.prepare_request(
        _submission(task, body, version, principal)
    )  # 404/422 first
    config = svc.config(task)
    wait_s = svc.wait_seconds(wait, prefer) or svc.max_wait_s  # synchronous: no wait means the most
    wanted = [o.name for o in body.outputs or ()]
    if any(o.parameters and o.parameters.classification for o in body.outputs or ()):
        raise InvalidRequest(
            "the classification extension is not supported; ask for the outputs themselves"
        )
    unknown = sorted(set(wanted) - {spec.name for spec in config.outputs})
    if unknown:
        raise InvalidRequest(
            f"task {task!r} has no output tensors {unknown}",
            details={"outputs": [spec.name for spec in config.outputs]},
        )
    request_id = await svc.submit_once(inference, None, "")
    request.state.request_id = request_id
    with spans.waiting(request_id, wait_s) as found:
        result = await svc.wait(request_id, wait_s)
        found(result)
    if result is None:
        raise InferenceTimeout(
            f"no result within {wait_s:g} s; the request is still queued or running",
            details={"links": links(request_id)},
        )
    if result.status is not Status.SUCCEEDED:
        raise _failure(result)
    answer = {
        "model_name": task,
        "model_version": result.model_version,
        "id": body.id or request_id,
        "parameters": {"request_id": request_id, "batch_size": result.batch_size},
    }
    tensors = [t for t in result.outputs if not wanted or t.name in wanted]
    is_binary = _binary_outputs(body)
    if not any(is_binary(t.name) for t in tensors):
        return JSONResponse({**answer, "outputs": [_output(t) for t in tensors]})
    outputs, chunks = [], []
    for tensor in tensors:
        if is_binary(tensor.name):
            output, raw = _binary_output(tensor)
            chunks.append(raw)
        else:
            output = _output(tensor)
        outputs.append(output)
    return binary_response({**answer, "outputs": outputs}, chunks)


@router.get("/v2/models/{task}", **METADATA)
async def model_metadata(task: str, request: Request, principal: Caller) -> dict:
    """The task's model: its versions, platform and tensor signature (``-1`` is the batch dim)."""
    return _metadata(service(request).config(task), None)


@router.get("/v2/models/{task}/versions/{version}", **METADATA)
async def model_version_metadata(
    task: str, version: str, request: Request, principal: Caller
) -> dict:
    """Like ``GET /v2/models/{task}``, for a version that must exist."""
    return _metadata(service(request).config(task), version)


def _metadata(config: ModelConfig, version: str | None) -> dict:
    check_version(config, version)
    return {
        "name": config.task,
        "versions": list(config.versions),
        "platform": PLATFORMS.get(config.backend, config.backend),
        "inputs": [{**spec.to_dict(), "shape": [-1, *spec.shape]} for spec in config.inputs],
        "outputs": [{**spec.to_dict(), "shape": [-1, *spec.shape]} for spec in config.outputs],
    }


@router.get("/v2/models/{task}/ready", **READY)
async def model_ready(task: str, request: Request) -> dict:
    """200 when Redis answers and a live worker serves the task; 503 SERVICE_UNAVAILABLE if not."""
    return await _model_ready(service(request), task, None)


@router.get("/v2/models/{task}/versions/{version}/ready", **READY)
async def model_version_ready(task: str, version: str, request: Request) -> dict:
    """Like ``GET /v2/models/{task}/ready``, for a version that must exist."""
    return await _model_ready(service(request), task, version)


async def _model_ready(svc: InferenceService, task: str, version: str | None) -> dict:
    check_version(svc.config(task), version)
    served = await svc.live_tasks()
    if served is None:
        raise ServiceUnavailable("the result store is not reachable", details={"task": task})
    if task not in served:
        raise ServiceUnavailable(f"no live worker serves task {task!r}", details={"task": task})
    return {"name": task, "ready": True}


@router.get("/v2/health/live")
async def live() -> dict:
    """Liveness: the gateway process answers."""
    return {"live": True}


@router.get(
    "/v2/health/ready",
    responses={
        200: {"description": '{"ready": true}'},
        503: {"description": '{"ready": false} (see Retry-After)'},
    },
)
async def ready(request: Request, response: Response) -> dict:
    """Readiness: Kafka answering a metadata request, Redis answering and a live worker for
    every task."""
    ok = (await service(request).readiness()).is_ready
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return {"ready": ok}


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata(request: Request) -> dict:
    """Server metadata: name, version and the protocol extensions served."""
    return {
        "name": "streaminfer",
        "version": request.app.version,
        "extensions": ["binary_tensor_data"],
    }
