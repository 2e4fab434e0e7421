"""Every call of the client as a generator of HTTP calls (sans I/O): what to send, how to read
the answer, when to long-poll again. :mod:`streaminfer.client.http` sends them, sync or async."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

from .errors import INVALID_RESPONSE, ClientError
from .oip_binary import HEADER, MEDIA_TYPE, binary_request, split_answer
from .propagation import trace_headers
from .results import PENDING, Result, decode_oip_outputs, encode_oip_inputs

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_WAIT_QUERY_S = 3600.0
"""The most ``?wait`` the gateway accepts; longer waits are long-polled again."""
V2_WAIT_S = 60.0
"""How long a ``/v2`` infer waits for its answer when not told: the gateway's default maximum."""
SIGNATURES_TTL_S = 60.0
"""How long the task signatures from ``GET /v1/tasks`` (output datatypes) are kept."""


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call an operation asks for."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True
    """Safe to send again after a connection error (GET, DELETE, or a POST with Idempotency-Key)."""
    wait_s: float = 0.0
    """How long the server may hold the answer: added to the read timeout."""
    accept: frozenset[int] = frozenset()
    """Error statuses handed to the operation instead of raised (a readiness probe's 503)."""
    retry: bool = True


Op = Generator[Call, httpx.Response, T]


def _json_body(payload: Any) -> bytes:
    # allow_nan=False: NaN is not JSON (the gateway would answer 400); refused here, as ValueError
    return json.dumps(payload, default=_jsonable, separators=(",", ":"), allow_nan=False).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _read_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ClientError(
            f"the gateway answered {response.status_code} with a body that is not JSON: "
            f"{response.text[:200]!r}",
            error_code=INVALID_RESPONSE,
            status_code=response.status_code,
        ) from exc


def _infer_body(
    inputs: Any,
    priority: str | int | None,
    deadline_ms: int | None,
    parameters: Mapping[str, str | int | float | bool] | None,
    model_version: str | None,
) -> bytes:
    body: dict[str, Any] = {"inputs": inputs}
    if priority is not None:
        body["priority"] = priority
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    if parameters:
        body["parameters"] = dict(parameters)
    if model_version is not None:
        body["model_version"] = model_version
    return _json_body(body)


def _segment(value: str) -> str:
    return quote(str(value), safe="")


class Operations:
    """Every call of the client as a generator of :class:`Call` (sans I/O), and the task
    signatures it keeps to decode outputs."""

    def __init__(self) -> None:
        self._signatures: dict[str, dict[str, Any]] = {}
        self._signatures_at = -float("inf")

    # -- /v1 ------------------------------------------------------------------------------

    def infer(
        self,
        task: str,
        inputs: Any,
        *,
        wait: float,
        priority: str | int | None,
        deadline_ms: int | None,
        parameters: Mapping[str, Any] | None,
        idempotency_key: str | None,
        model_version: str | None,
    ) -> Op[Result]:
        wait = max(0.0, float(wait or 0.0))
        deadline = time.monotonic() + wait
        body = yield from self._post_infer(
            task, inputs, wait, priority, deadline_ms, parameters, idempotency_key, model_version
        )
        return (yield from self._until_done(body, deadline))

    def submit(
        self,
        task: str,
        inputs: Any,
        *,
        priority: str | int | None,
        deadline_ms: int | None,
        parameters: Mapping[str, Any] | None,
        idempotency_key: str | None,
        model_version: str | None,
    ) -> Op[str]:
        body = yield from self._post_infer(
            task, inputs, 0.0, priority, deadline_ms, parameters, idempotency_key, model_version
        )
        return body["request_id"]

    def result(self, request_id: str, *, wait: float | None) -> Op[Result]:
        wait = max(0.0, float(wait or 0.0))
        deadline = time.monotonic() + wait
        response = yield Call(
            "GET",
            f"/v1/results/{_segment(request_id)}",
            params={"wait": min(wait, MAX_WAIT_QUERY_S)} if wait else None,
            wait_s=wait,
        )
        return (yield from self._until_done(_read_json(response), deadline))

    def cancel(self, request_id: str) -> Op[str]:
        response = yield Call("DELETE", f"/v1/requests/{_segment(request_id)}")
        body = _read_json(response)
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise ClientError(
                "the cancel answer has no status", error_code=INVALID_RESPONSE, body=body
            )
        return body["status"]

    def tasks(self) -> Op[list[dict[str, Any]]]:
        body = _read_json((yield Call("GET", "/v1/tasks")))
        tasks = body.get("tasks") if isinstance(body, dict) else None
        if not isinstance(tasks, list) or not all(
            isinstance(t, dict) and "task" in t for t in tasks
        ):
            raise ClientError(
                "the tasks answer has no list of tasks", error_code=INVALID_RESPONSE, body=body
            )
        self._signatures = {str(t["task"]): t for t in tasks}
        self._signatures_at = time.monotonic()
        return tasks

    def _post_infer(
        self,
        task: str,
        inputs: Any,
        wait: float,
        priority: str | int | None,
        deadline_ms: int | None,
        parameters: Mapping[str, Any] | None,
        idempotency_key: str | None,
        model_version: str | None,
    ) -> Op[dict[str, Any]]:
        # NOTE: one key per logical call, the same on every retry: the gateway then answers a
        # resent submission with the first one's request_id instead of publishing it twice.
        key = idempotency_key or str(uuid.uuid4())
        response = yield Call(
            "POST",
            f"/v1/infer/{_segment(task)}",
            params={"wait": min(wait, MAX_WAIT_QUERY_S)} if wait else None,
            body=_infer_body(inputs, priority, deadline_ms, parameters, model_version),
            headers={**trace_headers(), "Content-Type": "application/json", "Idempotency-Key": key},
            wait_s=wait,
        )
        body = _read_json(response)
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            raise ClientError(
                "the infer answer has no request_id",
                error_code=INVALID_RESPONSE,
                status_code=response.status_code,
                body=body,
            )
        return body

    def _until_done(self, body: Any, deadline: float) -> Op[Result]:
        """Long-poll the result of ``body`` until it is done or ``deadline`` (monotonic) passes."""
        while isinstance(body, dict) and str(body.get("status", "")).lower() in PENDING:
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            wait = min(remaining, MAX_WAIT_QUERY_S)
            response = yield Call(
                "GET",
                f"/v1/results/{_segment(body['request_id'])}",
                params={"wait": round(wait, 3)},
                wait_s=wait,
            )
            body = _read_json(response)
        signature = None
        if isinstance(body, dict) and body.get("outputs") and isinstance(body.get("task"), str):
            signature = yield from self._signature(body["task"])
        return Result.from_body(body, signature)

    def _signature(self, task: str) -> Op[dict[str, Any] | None]:
        fresh = time.monotonic() - self._signatures_at < SIGNATURES_TTL_S
        if task not in self._signatures or not fresh:
            try:
                yield from self.tasks()
            except ClientError as exc:  # the result is in hand: decode it without the datatypes
                logger.warning(
                    "no task signatures (%s); outputs of %s decoded as JSON reads", exc, task
                )
                return self._signatures.get(task)
        return self._signatures.get(task)

    # -- /v2 (Open Inference Protocol) ---------------------------------------------------------

    def model_infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: str | None,
        outputs: list[str] | None,
        parameters: Mapping[str, Any] | None,
        wait: float | None,
        binary: bool = False,
    ) -> Op[dict[str, np.ndarray]]:
        header: dict[str, Any] = {}
        if outputs:
            header["outputs"] = [{"name": name} for name in outputs]
        if parameters or binary:
            header["parameters"] = {
                **(parameters or {}),
                **({"binary_data_output": True} if binary else {}),
            }
        if binary:
            body, headers = binary_request(inputs, header)
        else:
            body = _json_body({**header, "inputs": encode_oip_inputs(inputs)})
            headers = {"Content-Type": "application/json"}
        wait_s = V2_WAIT_S if wait is None else max(0.0, float(wait))
        # NOTE: /v2 takes no Idempotency-Key, so a connection lost mid-call is not resent (it may
        # have been published); 429 and 503 are answered before anything runs, or after a
        # retriable failure, and are resent.
        response = yield Call(
            "POST",
            f"{self._model_path(model, version)}/infer",
            body=body,
            params={"wait": wait_s} if wait is not None else None,
            headers={**trace_headers(), **headers},
            idempotent=False,
            wait_s=wait_s,
        )
        if response.headers.get("content-type", "").startswith(MEDIA_TYPE):
            return split_answer(response.content, response.headers.get(HEADER))
        return decode_oip_outputs(_read_json(response))

    def model_metadata(self, model: str, *, version: str | None) -> Op[dict[str, Any]]:
        body = _read_json((yield Call("GET", self._model_path(model, version))))
        if not isinstance(body, dict):
            raise ClientError(
                "model metadata is not a JSON object", error_code=INVALID_RESPONSE, body=body
            )
        return body

    def model_ready(self, model: str, *, version: str | None) -> Op[bool]:
        response = yield Call(
            "GET", f"{self._model_path(model, version)}/ready", accept=frozenset({503}), retry=False
        )
        return response.status_code == 200

    def server_ready(self) -> Op[bool]:
        response = yield Call("GET", "/v2/health/ready", accept=frozenset({503}), retry=False)
        return response.status_code == 200

    def server_live(self) -> Op[bool]:
        response = yield Call("GET", "/v2/health/live", retry=False)
        return response.status_code == 200

    def server_metadata(self) -> Op[dict[str, Any]]:
        body = _read_json((yield Call("GET", "/v2")))
        if not isinstance(body, dict):
            raise ClientError(
                "server metadata is not a JSON object", error_code=INVALID_RESPONSE, body=body
            )
        return body

    @staticmethod
    def _model_path(model: str, version: str | None) -> str:
        path = f"/v2/models/{_segment(model)}"
        return path if version is None else f"{path}/versions/{_segment(version)}"
