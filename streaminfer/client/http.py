"""``Client``: the gateway's ``/v1`` and ``/v2`` routes over httpx, synchronously.

Each call is written once, as a generator of HTTP calls (:mod:`streaminfer.client.operations`);
this client and :class:`~streaminfer.client.aio.AsyncClient` only differ in how they send a call
and sleep between retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
import numpy as np

from .base import LIMITS, ClientBase
from .errors import ClientError
from .operations import Call, Op
from .results import Result
from .retries import RetryPolicy

__all__ = ["Client"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_sleep = time.sleep


class Client(ClientBase):
    """A synchronous client of the gateway; a context manager.

    ``api_key`` is sent as ``X-API-Key``, ``token`` (a JWT) as ``Authorization: Bearer``.
    ``timeout`` bounds connecting and each read (a call that waits for its result gets the wait on
    top). 429 and 503 are retried after their ``Retry-After``, within ``retry``; connection errors
    only for calls safe to repeat (every ``/v1`` submission carries an ``Idempotency-Key``).
    ``verify`` and ``transport`` go to httpx (a CA bundle or SSL context; a test transport)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        verify: Any = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, token=token, timeout=timeout, retry=retry, headers=headers
        )
        self._http = httpx.Client(
            base_url=self._base_url,
            headers=self._headers,
            verify=verify,
            transport=transport,
            timeout=self._timeout,
            limits=LIMITS,
        )

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
                outcome = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    content=call.body,
                    headers=call.headers,
                    timeout=self._timeout_of(call),
                )
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

    def infer(
        self,
        task: str,
        inputs: Any,
        *,
        wait: float = 30.0,
        priority: str | int | None = None,
        deadline_ms: int | None = None,
        parameters: Mapping[str, str | int | float | bool] | None = None,
        idempotency_key: str | None = None,
        model_version: str | None = None,
    ) -> Result:
        """Submit a request and wait up to ``wait`` seconds for its result. ``inputs`` as
        ``/v1/infer`` takes them: the task's friendly form (``{"text": [...]}``, numpy arrays
        allowed) or a list of OIP tensors. Returns the pending result (status ``queued`` or
        ``running``) when the wait ends first; a failed request is a Result with ``error``."""
        return self._run(
            self._ops.infer(
                task,
                inputs,
                wait=wait,
                priority=priority,
                deadline_ms=deadline_ms,
                parameters=parameters,
                idempotency_key=idempotency_key,
                model_version=model_version,
            )
        )

    def submit(
        self,
        task: str,
        inputs: Any,
        *,
        priority: str | int | None = None,
        deadline_ms: int | None = None,
        parameters: Mapping[str, str | int | float | bool] | None = None,
        idempotency_key: str | None = None,
        model_version: str | None = None,
    ) -> str:
        """Submit a request without waiting; returns its request_id."""
        return self._run(
            self._ops.submit(
                task,
                inputs,
                priority=priority,
                deadline_ms=deadline_ms,
                parameters=parameters,
                idempotency_key=idempotency_key,
                model_version=model_version,
            )
        )

    def result(self, request_id: str, *, wait: float | None = None) -> Result:
        """The request's result, waiting up to ``wait`` seconds for it to finish."""
        return self._run(self._ops.result(request_id, wait=wait))

    def cancel(self, request_id: str) -> str:
        """Cancel a request not yet run (``cancelling``) or delete its stored result (``deleted``)."""
        return self._run(self._ops.cancel(request_id))

    def tasks(self) -> list[dict[str, Any]]:
        """``GET /v1/tasks``: each task's model, versions, input and output signatures, batching."""
        return self._run(self._ops.tasks())

    def model_infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: str | None = None,
        outputs: list[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        wait: float | None = None,
        binary: bool = False,
    ) -> dict[str, np.ndarray]:
        """``POST /v2/models/{model}/infer``: input tensors by name (numpy arrays; the batch
        dimension included) -> output tensors by name (only ``outputs`` when given). With
        ``binary``, tensors travel as raw bytes both ways (the binary tensor data extension):
        no JSON lists of numbers to build and parse."""
        return self._run(
            self._ops.model_infer(
                model,
                inputs,
                version=version,
                outputs=outputs,
                parameters=parameters,
                wait=wait,
                binary=binary,
            )
        )

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
