"""``Client`` and ``AsyncClient``: the gateway's ``/v1`` and ``/v2`` routes over httpx.

Each call is written once, as a generator of HTTP calls (:class:`_Operations`); the sync and the
async client only differ in how they send a call and sleep between retries (``_send``).
"""

from __future__ import annotations

import asyncio
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

from .errors import CONNECTION_ERROR, INVALID_RESPONSE, RETRIABLE_STATUSES, TIMEOUT, ClientError
from .results import PENDING, Result, decode_oip_outputs, encode_oip_inputs
from .retries import NO_RETRIES, RetryPolicy, parse_retry_after

__all__ = ["AsyncClient", "Client"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_WAIT_QUERY_S = 3600.0
"""The most ``?wait`` the gateway accepts; longer waits are long-polled again."""
V2_WAIT_S = 60.0
"""How long a ``/v2`` infer waits for its answer when not told: the gateway's default maximum."""
SIGNATURES_TTL_S = 60.0
"""How long the task signatures from ``GET /v1/tasks`` (output datatypes) are kept."""

_sleep = time.sleep
_async_sleep = asyncio.sleep


@dataclass(frozen=True, slots=True)
class _Call:
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


_Op = Generator[_Call, httpx.Response, T]


def _json_body(payload: Any) -> bytes:
    return json.dumps(payload, default=_jsonable, separators=(",", ":")).encode()


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
        raise ClientError(f"the gateway answered {response.status_code} with a body that is not JSON: "
                          f"{response.text[:200]!r}", error_code=INVALID_RESPONSE,
                          status_code=response.status_code) from exc


def _error_from(response: httpx.Response, attempts: int) -> ClientError:
    """The gateway's error body (SPEC section 5) as a ClientError; HTTP_<status> for any other."""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error_code"), str):
        details = body.get("details")
        return ClientError(str(body.get("message") or body["error_code"]), error_code=body["error_code"],
                           status_code=response.status_code, request_id=body.get("request_id"),
                           details=details if isinstance(details, dict) else {}, body=body,
                           retry_after_s=retry_after, attempts=attempts)
    return ClientError(response.text[:300] or response.reason_phrase, error_code=f"HTTP_{response.status_code}",
                       status_code=response.status_code, body=body, retry_after_s=retry_after,
                       attempts=attempts)


def _transport_error(exc: httpx.TransportError, attempts: int) -> ClientError:
    code = TIMEOUT if isinstance(exc, httpx.TimeoutException) else CONNECTION_ERROR
    return ClientError(f"{type(exc).__name__}: {exc}", error_code=code, attempts=attempts)


def _infer_body(inputs: Any, priority: str | int | None, deadline_ms: int | None,
                parameters: Mapping[str, str | int | float | bool] | None, model_version: str | None) -> bytes:
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


class _Operations:
    """Every call of the client as a generator of :class:`_Call` (sans I/O), and the task
    signatures it keeps to decode outputs."""

    def __init__(self) -> None:
        self._signatures: dict[str, dict[str, Any]] = {}
        self._signatures_at = -float("inf")

    # -- /v1 ------------------------------------------------------------------------------

    def infer(self, task: str, inputs: Any, *, wait: float, priority: str | int | None,
              deadline_ms: int | None, parameters: Mapping[str, Any] | None, idempotency_key: str | None,
              model_version: str | None) -> _Op[Result]:
        wait = max(0.0, float(wait or 0.0))
        deadline = time.monotonic() + wait
        body = yield from self._post_infer(task, inputs, wait, priority, deadline_ms, parameters,
                                           idempotency_key, model_version)
        return (yield from self._until_done(body, deadline))

    def submit(self, task: str, inputs: Any, *, priority: str | int | None, deadline_ms: int | None,
               parameters: Mapping[str, Any] | None, idempotency_key: str | None,
               model_version: str | None) -> _Op[str]:
        body = yield from self._post_infer(task, inputs, 0.0, priority, deadline_ms, parameters,
                                           idempotency_key, model_version)
        return body["request_id"]

    def result(self, request_id: str, *, wait: float | None) -> _Op[Result]:
        wait = max(0.0, float(wait or 0.0))
        deadline = time.monotonic() + wait
        response = yield _Call("GET", f"/v1/results/{_segment(request_id)}",
                               params={"wait": min(wait, MAX_WAIT_QUERY_S)} if wait else None, wait_s=wait)
        return (yield from self._until_done(_read_json(response), deadline))

    def cancel(self, request_id: str) -> _Op[str]:
        response = yield _Call("DELETE", f"/v1/requests/{_segment(request_id)}")
        body = _read_json(response)
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise ClientError("the cancel answer has no status", error_code=INVALID_RESPONSE, body=body)
        return body["status"]

    def tasks(self) -> _Op[list[dict[str, Any]]]:
        body = _read_json((yield _Call("GET", "/v1/tasks")))
        tasks = body.get("tasks") if isinstance(body, dict) else None
        if not isinstance(tasks, list) or not all(isinstance(t, dict) and "task" in t for t in tasks):
            raise ClientError("the tasks answer has no list of tasks", error_code=INVALID_RESPONSE, body=body)
        self._signatures = {str(t["task"]): t for t in tasks}
        self._signatures_at = time.monotonic()
        return tasks

    def _post_infer(self, task: str, inputs: Any, wait: float, priority: str | int | None,
                    deadline_ms: int | None, parameters: Mapping[str, Any] | None,
                    idempotency_key: str | None, model_version: str | None) -> _Op[dict[str, Any]]:
        # NOTE: one key per logical call, the same on every retry: the gateway then answers a
        # resent submission with the first one's request_id instead of publishing it twice.
        key = idempotency_key or str(uuid.uuid4())
        response = yield _Call(
            "POST", f"/v1/infer/{_segment(task)}", params={"wait": min(wait, MAX_WAIT_QUERY_S)} if wait else None,
            body=_infer_body(inputs, priority, deadline_ms, parameters, model_version),
            headers={"Content-Type": "application/json", "Idempotency-Key": key}, wait_s=wait)
        body = _read_json(response)
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            raise ClientError("the infer answer has no request_id", error_code=INVALID_RESPONSE,
                              status_code=response.status_code, body=body)
        return body

    def _until_done(self, body: Any, deadline: float) -> _Op[Result]:
        """Long-poll the result of ``body`` until it is done or ``deadline`` (monotonic) passes."""
        while isinstance(body, dict) and str(body.get("status", "")).lower() in PENDING:
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            wait = min(remaining, MAX_WAIT_QUERY_S)
            response = yield _Call("GET", f"/v1/results/{_segment(body['request_id'])}",
                                   params={"wait": round(wait, 3)}, wait_s=wait)
            body = _read_json(response)
        signature = None
        if isinstance(body, dict) and body.get("outputs") and isinstance(body.get("task"), str):
            signature = yield from self._signature(body["task"])
        return Result.from_body(body, signature)

    def _signature(self, task: str) -> _Op[dict[str, Any] | None]:
        fresh = time.monotonic() - self._signatures_at < SIGNATURES_TTL_S
        if task not in self._signatures or not fresh:
            try:
                yield from self.tasks()
            except ClientError as exc:  # the result is in hand: decode it without the datatypes
                logger.warning("no task signatures (%s); outputs of %s decoded as JSON reads", exc, task)
                return self._signatures.get(task)
        return self._signatures.get(task)

    # -- /v2 (Open Inference Protocol) ---------------------------------------------------------

    def model_infer(self, model: str, inputs: Mapping[str, Any], *, version: str | None,
                    outputs: list[str] | None, parameters: Mapping[str, Any] | None,
                    wait: float | None) -> _Op[dict[str, np.ndarray]]:
        payload: dict[str, Any] = {"inputs": encode_oip_inputs(inputs)}
        if outputs:
            payload["outputs"] = [{"name": name} for name in outputs]
        if parameters:
            payload["parameters"] = dict(parameters)
        wait_s = V2_WAIT_S if wait is None else max(0.0, float(wait))
        # NOTE: /v2 takes no Idempotency-Key, so a connection lost mid-call is not resent (it may
        # have been published); 429 and 503 are answered before anything runs, or after a
        # retriable failure, and are resent.
        response = yield _Call("POST", f"{self._model_path(model, version)}/infer", body=_json_body(payload),
                               params={"wait": wait_s} if wait is not None else None,
                               headers={"Content-Type": "application/json"}, idempotent=False, wait_s=wait_s)
        if response.headers.get("content-type", "").startswith("application/octet-stream"):
            raise ClientError("binary tensor answers are not read by this client", error_code=INVALID_RESPONSE,
                              status_code=response.status_code)
        return decode_oip_outputs(_read_json(response))

    def model_metadata(self, model: str, *, version: str | None) -> _Op[dict[str, Any]]:
        body = _read_json((yield _Call("GET", self._model_path(model, version))))
        if not isinstance(body, dict):
            raise ClientError("model metadata is not a JSON object", error_code=INVALID_RESPONSE, body=body)
        return body

    def model_ready(self, model: str, *, version: str | None) -> _Op[bool]:
        response = yield _Call("GET", f"{self._model_path(model, version)}/ready", accept=frozenset({503}),
                               retry=False)
        return response.status_code == 200

    def server_ready(self) -> _Op[bool]:
        response = yield _Call("GET", "/v2/health/ready", accept=frozenset({503}), retry=False)
        return response.status_code == 200

    def server_live(self) -> _Op[bool]:
        response = yield _Call("GET", "/v2/health/live", retry=False)
        return response.status_code == 200

    def server_metadata(self) -> _Op[dict[str, Any]]:
        body = _read_json((yield _Call("GET", "/v2")))
        if not isinstance(body, dict):
            raise ClientError("server metadata is not a JSON object", error_code=INVALID_RESPONSE, body=body)
        return body

    @staticmethod
    def _model_path(model: str, version: str | None) -> str:
        path = f"/v2/models/{_segment(model)}"
        return path if version is None else f"{path}/versions/{_segment(version)}"


class _Base:
    def __init__(self, base_url: str, *, api_key: str | None, token: str | None, timeout: float,
                 retry: RetryPolicy | None, headers: Mapping[str, str] | None) -> None:
        if api_key is not None and token is not None:
            raise ValueError("give api_key or token, not both")
        self._headers = {"Accept": "application/json", **(headers or {})}
        if api_key is not None:
            self._headers["X-API-Key"] = api_key
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._base_url = base_url.rstrip("/")
        self._timeout = float(timeout)
        self._retry = retry or RetryPolicy()
        self._ops = _Operations()

    def _timeout_of(self, call: _Call) -> httpx.Timeout:
        return httpx.Timeout(self._timeout, read=self._timeout + call.wait_s)

    def _policy(self, call: _Call) -> RetryPolicy:
        return self._retry if call.retry else NO_RETRIES

    def _next(self, call: _Call, outcome: httpx.Response | httpx.TransportError, attempt: int,
              started: float, waited: float) -> tuple[httpx.Response | None, ClientError | None, float | None]:
        """(response to hand back, or error to raise or retry after ``delay`` seconds)."""
        elapsed = max(time.monotonic() - started, waited)
        if isinstance(outcome, httpx.TransportError):
            error = _transport_error(outcome, attempt)
            delay = self._policy(call).delay(attempt, None, elapsed) if call.idempotent else None
            return None, error, delay
        if outcome.status_code < 400 or outcome.status_code in call.accept:
            return outcome, None, None
        error = _error_from(outcome, attempt)
        delay = None
        if outcome.status_code in RETRIABLE_STATUSES:
            delay = self._policy(call).delay(attempt, outcome.headers.get("retry-after"), elapsed)
        return None, error, delay


class Client(_Base):
    """A synchronous client of the gateway; a context manager.

    ``api_key`` is sent as ``X-API-Key``, ``token`` (a JWT) as ``Authorization: Bearer``.
    ``timeout`` bounds connecting and each read (a call that waits for its result gets the wait on
    top). 429 and 503 are retried after their ``Retry-After``, within ``retry``; connection errors
    only for calls safe to repeat (every ``/v1`` submission carries an ``Idempotency-Key``).
    ``verify`` and ``transport`` go to httpx (a CA bundle or SSL context; a test transport)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = 30.0, retry: RetryPolicy | None = None, headers: Mapping[str, str] | None = None,
                 verify: Any = True, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, token=token, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.Client(base_url=self._base_url, headers=self._headers, verify=verify,
                                  transport=transport, timeout=self._timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: _Op[T]) -> T:
        try:
            call = next(op)
            while True:
                try:
                    response = self._send(call)
                except ClientError as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(response)
        except StopIteration as done:
            return done.value

    def _send(self, call: _Call) -> httpx.Response:
        started, waited, attempt = time.monotonic(), 0.0, 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(call.method, call.path, params=call.params, content=call.body,
                                             headers=call.headers, timeout=self._timeout_of(call))
            except httpx.TransportError as exc:
                outcome = exc
            response, error, delay = self._next(call, outcome, attempt, started, waited)
            if response is not None:
                return response
            if delay is None:
                raise error from (outcome if isinstance(outcome, Exception) else None)
            logger.info("%s %s: %s; retrying in %.2f s", call.method, call.path, error, delay)
            _sleep(delay)
            waited += delay

    def infer(self, task: str, inputs: Any, *, wait: float = 30.0, priority: str | int | None = None,
              deadline_ms: int | None = None, parameters: Mapping[str, str | int | float | bool] | None = None,
              idempotency_key: str | None = None, model_version: str | None = None) -> Result:
        """Submit a request and wait up to ``wait`` seconds for its result. ``inputs`` as
        ``/v1/infer`` takes them: the task's friendly form (``{"text": [...]}``, numpy arrays
        allowed) or a list of OIP tensors. Returns the pending result (status ``queued`` or
        ``running``) when the wait ends first; a failed request is a Result with ``error``."""
        return self._run(self._ops.infer(task, inputs, wait=wait, priority=priority, deadline_ms=deadline_ms,
                                         parameters=parameters, idempotency_key=idempotency_key,
                                         model_version=model_version))

    def submit(self, task: str, inputs: Any, *, priority: str | int | None = None, deadline_ms: int | None = None,
               parameters: Mapping[str, str | int | float | bool] | None = None,
               idempotency_key: str | None = None, model_version: str | None = None) -> str:
        """Submit a request without waiting; returns its request_id."""
        return self._run(self._ops.submit(task, inputs, priority=priority, deadline_ms=deadline_ms,
                                          parameters=parameters, idempotency_key=idempotency_key,
                                          model_version=model_version))

    def result(self, request_id: str, *, wait: float | None = None) -> Result:
        """The request's result, waiting up to ``wait`` seconds for it to finish."""
        return self._run(self._ops.result(request_id, wait=wait))

    def cancel(self, request_id: str) -> str:
        """Cancel a request not yet run (``cancelling``) or delete its stored result (``deleted``)."""
        return self._run(self._ops.cancel(request_id))

    def tasks(self) -> list[dict[str, Any]]:
        """``GET /v1/tasks``: each task's model, versions, input and output signatures, batching."""
        return self._run(self._ops.tasks())

    def model_infer(self, model: str, inputs: Mapping[str, Any], *, version: str | None = None,
                    outputs: list[str] | None = None, parameters: Mapping[str, Any] | None = None,
                    wait: float | None = None) -> dict[str, np.ndarray]:
        """``POST /v2/models/{model}/infer``: input tensors by name (numpy arrays; the batch
        dimension included) -> output tensors by name (only ``outputs`` when given)."""
        return self._run(self._ops.model_infer(model, inputs, version=version, outputs=outputs,
                                               parameters=parameters, wait=wait))

    def model_metadata(self, model: str, *, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{model}``: versions, platform, input and output tensors."""
        return self._run(self._ops.model_metadata(model, version=version))

    def model_ready(self, model: str, *, version: str | None = None) -> bool:
        """Whether a live worker serves the model."""
        return self._run(self._ops.model_ready(model, version=version))

    def server_ready(self) -> bool:
        """Whether Kafka, Redis and a worker for every task answer (``/v2/health/ready``)."""
        return self._run(self._ops.server_ready())

    def server_live(self) -> bool:
        return self._run(self._ops.server_live())

    def server_metadata(self) -> dict[str, Any]:
        return self._run(self._ops.server_metadata())


class AsyncClient(_Base):
    """The :class:`Client`'s calls, awaitable; an async context manager."""

    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = 30.0, retry: RetryPolicy | None = None, headers: Mapping[str, str] | None = None,
                 verify: Any = True, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, token=token, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.AsyncClient(base_url=self._base_url, headers=self._headers, verify=verify,
                                       transport=transport, timeout=self._timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: _Op[T]) -> T:
        try:
            call = next(op)
            while True:
                try:
                    response = await self._send(call)
                except ClientError as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(response)
        except StopIteration as done:
            return done.value

    async def _send(self, call: _Call) -> httpx.Response:
        started, waited, attempt = time.monotonic(), 0.0, 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(call.method, call.path, params=call.params, content=call.body,
                                                   headers=call.headers, timeout=self._timeout_of(call))
            except httpx.TransportError as exc:
                outcome = exc
            response, error, delay = self._next(call, outcome, attempt, started, waited)
            if response is not None:
                return response
            if delay is None:
                raise error from (outcome if isinstance(outcome, Exception) else None)
            logger.info("%s %s: %s; retrying in %.2f s", call.method, call.path, error, delay)
            await _async_sleep(delay)
            waited += delay

    async def infer(self, task: str, inputs: Any, *, wait: float = 30.0, priority: str | int | None = None,
                    deadline_ms: int | None = None, parameters: Mapping[str, str | int | float | bool] | None = None,
                    idempotency_key: str | None = None, model_version: str | None = None) -> Result:
        """As :meth:`Client.infer`."""
        return await self._run(self._ops.infer(task, inputs, wait=wait, priority=priority, deadline_ms=deadline_ms,
                                               parameters=parameters, idempotency_key=idempotency_key,
                                               model_version=model_version))

    async def submit(self, task: str, inputs: Any, *, priority: str | int | None = None,
                     deadline_ms: int | None = None, parameters: Mapping[str, str | int | float | bool] | None = None,
                     idempotency_key: str | None = None, model_version: str | None = None) -> str:
        """As :meth:`Client.submit`."""
        return await self._run(self._ops.submit(task, inputs, priority=priority, deadline_ms=deadline_ms,
                                                parameters=parameters, idempotency_key=idempotency_key,
                                                model_version=model_version))

    async def result(self, request_id: str, *, wait: float | None = None) -> Result:
        return await self._run(self._ops.result(request_id, wait=wait))

    async def cancel(self, request_id: str) -> str:
        return await self._run(self._ops.cancel(request_id))

    async def tasks(self) -> list[dict[str, Any]]:
        return await self._run(self._ops.tasks())

    async def model_infer(self, model: str, inputs: Mapping[str, Any], *, version: str | None = None,
                          outputs: list[str] | None = None, parameters: Mapping[str, Any] | None = None,
                          wait: float | None = None) -> dict[str, np.ndarray]:
        return await self._run(self._ops.model_infer(model, inputs, version=version, outputs=outputs,
                                                     parameters=parameters, wait=wait))

    async def model_metadata(self, model: str, *, version: str | None = None) -> dict[str, Any]:
        return await self._run(self._ops.model_metadata(model, version=version))

    async def model_ready(self, model: str, *, version: str | None = None) -> bool:
        return await self._run(self._ops.model_ready(model, version=version))

    async def server_ready(self) -> bool:
        return await self._run(self._ops.server_ready())

    async def server_live(self) -> bool:
        return await self._run(self._ops.server_live())

    async def server_metadata(self) -> dict[str, Any]:
        return await self._run(self._ops.server_metadata())
