"""When the client sends a call again: 429 and 503 after their ``Retry-After`` (capped), a
connection that failed only for calls that are safe to repeat; bounded in attempts and time."""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

__all__ = ["RetryPolicy", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` asks for (delta-seconds or an HTTP date); None when absent or
    unreadable. Never negative; may be huge or infinite (the policy caps it)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a call is retried.

    A 429 or 503 waits its ``Retry-After``, at most ``max_retry_after_s``; without one (and after a
    connection error) the wait doubles from ``backoff_s``, with jitter. A call is sent at most
    ``max_attempts`` times, and not retried once its waits would pass ``max_total_s``."""

    max_attempts: int = 5
    max_total_s: float = 60.0
    max_retry_after_s: float = 30.0
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be 1 or more")
        if not (self.max_total_s >= 0 and self.max_retry_after_s >= 0 and self.backoff_s >= 0):
            raise ValueError("retry times must be zero or more seconds")

    def delay(self, attempt: int, retry_after: str | None, elapsed_s: float) -> float | None:
        """Seconds to wait before sending attempt ``attempt + 1``; None: give up now. ``elapsed_s``
        is the time the call has taken so far, waits included."""
        if attempt >= self.max_attempts:
            return None
        asked = parse_retry_after(retry_after)
        if asked is None:
            asked = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
        wait = min(asked, self.max_retry_after_s)
        if elapsed_s + wait > self.max_total_s:
            return None
        return wait


NO_RETRIES = RetryPolicy(max_attempts=1)
