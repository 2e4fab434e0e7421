"""What the sync and the async client share: the gateway's error bodies and httpx's errors as
:class:`ClientError`, credentials and timeouts, and the retry decision for each attempt."""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx

from .errors import CONNECTION_ERROR, RETRIABLE_STATUSES, TIMEOUT, ClientError
from .operations import Call, Operations
from .retries import NO_RETRIES, RetryPolicy, parse_retry_after

LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
"""httpx keeps 20 idle connections by default: more concurrent calls would reconnect each time."""


def error_from(response: httpx.Response, attempts: int) -> ClientError:
    """The gateway's error body (SPEC section 5) as a ClientError; HTTP_<status> for any other."""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error_code"), str):
        details = body.get("details")
        return ClientError(
            str(body.get("message") or body["error_code"]),
            error_code=body["error_code"],
            status_code=response.status_code,
            request_id=body.get("request_id"),
            details=details if isinstance(details, dict) else {},
            body=body,
            retry_after_s=retry_after,
            attempts=attempts,
        )
    return ClientError(
        response.text[:300] or response.reason_phrase,
        error_code=f"HTTP_{response.status_code}",
        status_code=response.status_code,
        body=body,
        retry_after_s=retry_after,
        attempts=attempts,
    )


def transport_error(exc: httpx.TransportError, attempts: int) -> ClientError:
    code = TIMEOUT if isinstance(exc, httpx.TimeoutException) else CONNECTION_ERROR
    return ClientError(f"{type(exc).__name__}: {exc}", error_code=code, attempts=attempts)


class ClientBase:
    """What the sync and async clients share: credentials, timeouts, and what an attempt's outcome
    means (a response to hand back, an error to raise, or a retry after a delay)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        token: str | None,
        timeout: float,
        retry: RetryPolicy | None,
        headers: Mapping[str, str] | None,
    ) -> None:
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

    def _next(
        self,
        call: Call,
        outcome: httpx.Response | httpx.TransportError,
        attempt: int,
        started: float,
        waited: float,
    ) -> tuple[httpx.Response | None, ClientError | None, float | None]:
        """(response to hand back, or error to raise or retry after ``delay`` seconds)."""
        elapsed = max(time.monotonic() - started, waited)
        if isinstance(outcome, httpx.TransportError):
            error = transport_error(outcome, attempt)
            delay = self._policy(call).delay(attempt, None, elapsed) if call.idempotent else None
            return None, error, delay
        if outcome.status_code < 400 or outcome.status_code in call.accept:
            return outcome, None, None
        error = error_from(outcome, attempt)
        delay = None
        if outcome.status_code in RETRIABLE_STATUSES:
            delay = self._policy(call).delay(attempt, outcome.headers.get("retry-after"), elapsed)
        return None, error, delay
