"""``Client`` and ``AsyncClient``: the gateway's ``/v1`` and ``/v2`` routes over httpx.

Each call is written once, as a generator of HTTP calls (:mod:`streaminfer.client.operations`);
the sync and the async client only differ in how they send a call and sleep between retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
import numpy as np

from .errors import CONNECTION_ERROR, RETRIABLE_STATUSES, TIMEOUT, ClientError
from .operations import Call, Op, Operations
from .results import Result
from .retries import NO_RETRIES, RetryPolicy, parse_retry_after

__all__ = ["AsyncClient", "Client"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
"""httpx keeps 20 idle connections by default: more concurrent calls would reconnect each time."""

_sleep = time.sleep
_async_sleep = asyncio.sleep


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
        self._ops = Operations()

    def _timeout_of(self, call: Call) -> httpx.Timeout:
        return httpx.Timeout(self._timeout, read=self._timeout + call.wait_s)

    def _policy(self, call: Call) -> RetryPolicy:
        return self._retry if call.retry else NO_RETRIES

    def _next(self, call: Call, outcome: httpx.Response | httpx.TransportError, attempt: int,
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
                                  transport=transport, timeout=self._timeout, limits=LIMITS)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: Op[T]) -> T:
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

    def _send(self, call: Call) -> httpx.Response:
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
                                       transport=transport, timeout=self._timeout, limits=LIMITS)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: Op[T]) -> T:
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

    async def _send(self, call: Call) -> httpx.Response:
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
