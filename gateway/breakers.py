"""The gateway's circuit breakers: ``redis`` (result store, status writes and reads), ``kafka``
(publishing requests) and ``registry`` (the codec's schema registry). While one is open, a
request that needs it is answered 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After`` (the seconds
until the breaker probes) at once, instead of waiting out the dependency's timeout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streaminfer.schemas.breakers import DEFAULT_FAILURES, DEFAULT_RESET_S, Breakers, CircuitOpen
from streaminfer.schemas.errors import SchemaError

from . import metrics
from .errors import ServiceUnavailable

REDIS, KAFKA, REGISTRY = "redis", "kafka", "registry"
WHAT = {REDIS: "the result store (Redis)", KAFKA: "the message broker", REGISTRY: "the schema registry"}


def is_failure(exc: BaseException) -> bool:
    """A dependency that did not answer: Redis or Kafka errors, socket errors and timeouts, a
    registry outage, or the 503 ``reaching`` made of one. Anything else (404, a bad request)
    means it answered."""
    if isinstance(exc, ServiceUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, SchemaError):
        return exc.retriable
    return isinstance(exc, RedisError | KafkaError | OSError | TimeoutError)


def _set_metric(name: str, value: int) -> None:
    metrics.CIRCUIT_STATE.labels(name).set(value)


def make_breakers(failures: int = DEFAULT_FAILURES, reset_s: float = DEFAULT_RESET_S,
                  **kwargs) -> Breakers:
    breakers = Breakers(failures, reset_s, is_failure=is_failure, on_state=_set_metric, **kwargs)
    breakers.declare(REDIS, KAFKA, REGISTRY)
    return breakers


@contextmanager
def guarded(breakers: Breakers | None, name: str) -> Iterator[None]:
    """Run the block through breaker ``name`` (nothing without breakers); open: 503 at once."""
    if breakers is None:
        yield
        return
    try:
        with breakers.guard(name):
            yield
    except CircuitOpen as exc:
        raise ServiceUnavailable(
            f"{WHAT.get(name, name)} failed repeatedly; not tried again for "
            f"{exc.retry_after_s:.1f} s (circuit breaker open)",
            headers={"Retry-After": breakers.retry_after_header(name)},
            details={"circuit": name, "state": "open"}) from None


def probed(breakers: Breakers | None, name: str, answered: bool) -> None:
    """A health probe's answer (``/ready``) as the half-open probe of a breaker that is due for
    one, so that an idle gateway's breakers close (and show closed) once the dependency is back."""
    if breakers is not None and breakers.is_open(name) and breakers.retry_after_s(name) == 0:
        breakers.record(name, None if answered else ConnectionError(f"{name} did not answer a probe"))
