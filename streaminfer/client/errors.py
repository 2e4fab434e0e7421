"""The one error the client raises, whatever went wrong.

ClientError
  error_code  the gateway's code (TASK_NOT_FOUND, RATE_LIMIT_EXCEEDED, ...), or the client's own:
              CONNECTION_ERROR, TIMEOUT, INVALID_RESPONSE, HTTP_<status> (an error body that is
              not the gateway's JSON), KAFKA_ERROR, INFERENCE_FAILED (``Result.raise_for_error``)
  status_code the HTTP status, None when no response came back
"""

from __future__ import annotations

from typing import Any

CONNECTION_ERROR = "CONNECTION_ERROR"
TIMEOUT = "TIMEOUT"
INVALID_RESPONSE = "INVALID_RESPONSE"
KAFKA_ERROR = "KAFKA_ERROR"

RETRIABLE_STATUSES = frozenset({429, 503})


class ClientError(Exception):
    """An HTTP error answer of the gateway (its JSON error body, SPEC section 5), a response the
    client cannot read, or a connection that failed after the client's retries."""

    def __init__(
        self,
        message: str,
        *,
        error_code: str,
        status_code: int | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
        body: Any = None,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.status_code = status_code
        self.request_id = request_id
        self.details = details or {}
        self.body = body
        """The error body as the gateway sent it (parsed JSON), when there was one."""
        self.retry_after_s = retry_after_s
        """The answer's ``Retry-After``, in seconds, when it carried one."""
        self.attempts = attempts
        """How many times the call was sent before giving up."""

    @property
    def retriable(self) -> bool:
        """Whether sending the same call again later may succeed (429, 503, no answer)."""
        return self.status_code in RETRIABLE_STATUSES or self.error_code in (
            CONNECTION_ERROR,
            TIMEOUT,
        )

    def __str__(self) -> str:
        status = f" (HTTP {self.status_code})" if self.status_code is not None else ""
        return f"{self.error_code}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ClientError(error_code={self.error_code!r}, status_code={self.status_code!r}, "
            f"message={self.message!r})"
        )
