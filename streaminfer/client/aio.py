"""``AsyncClient``: the calls of :class:`~streaminfer.client.http.Client`, awaitable."""

from __future__ import annotations

import asyncio
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

__all__ = ["AsyncClient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_async_sleep = asyncio.sleep


class AsyncClient(ClientBase):
    """The :class:`Client`'s calls, awaitable; an async context manager."""

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key=api_key, token=token, timeout=timeout, retry=retry, headers=headers
        )
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers=self._headers,
            verify=verify,
            transport=transport,
            timeout=self._timeout,
            limits=LIMITS,
        )

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
                outcome = await self._http.request(
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
            await _async_sleep(delay)
            waited += delay

    async def infer(
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
        """As :meth:`Client.infer`."""
        return await self._run(
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

    async def submit(
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
        """As :meth:`Client.submit`."""
        return await self._run(
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

    async def result(self, request_id: str, *, wait: float | None = None) -> Result:
        return await self._run(self._ops.result(request_id, wait=wait))

    async def cancel(self, request_id: str) -> str:
        return await self._run(self._ops.cancel(request_id))

    async def tasks(self) -> list[dict[str, Any]]:
        return await self._run(self._ops.tasks())

    async def model_infer(
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
        return await self._run(
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
