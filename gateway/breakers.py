"""The gateway's circuit breakers: ``redis`` (result store, status writes and reads), ``kafka``
(publishing requests) and ``registry`` (the codec's schema registry). While one is open, a
request that needs it is answered 503 ``SERVICE_UNAVAILABLE`` with ``Retry-After`` (the seconds
until the breaker probes) at once, instead of waiting out the dependency's timeout."""

from __future__ import annotations

from contextlib import nullcontext

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streaminfer.schemas.breakers import DEFAULT_FAILURES, DEFAULT_RESET_S, Breakers, CircuitOpen
from streaminfer.schemas.errors import SchemaError

from . import metrics
from .errors import ServiceUnavailable

REDIS, KAFKA, REGISTRY = "redis", "kafka", "registry"
WHAT = {
    REDIS: "the result store (Redis)",
    KAFKA: "the message broker",
    REGISTRY: "the schema registry",
}


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


def make_breakers(
    failures: int = DEFAULT_FAILURES, reset_s: float = DEFAULT_RESET_S, **kwargs
) -> Breakers:
    breakers = Breakers(failures, reset_s, is_failure=is_failure, on_state=_set_metric, **kwargs)
    breakers.declare(REDIS, KAFKA, REGISTRY)
    return breakers


def guarded(breakers: Breakers | None, name: str) -> _Guarded | nullcontext:
    """Run the block through breaker ``name`` (nothing without breakers); open: 503 at once."""
    return nullcontext() if breakers is None else _Guarded(breakers, name)


class _Guarded:
    __slots__ = ("_breakers", "_name", "_guard")

    def __init__(self, breakers: Breakers, name: str) -> None:
        self._breakers, self._name = breakers, name

    def __enter__(self) -> None:
        self._guard = self._breakers.guard(self._name)
        try:
            self._guard.__enter__()
        except CircuitOpen as exc:
            raise ServiceUnavailable(
                f"{WHAT.get(self._name, self._name)} failed repeatedly; not tried again for "
                f"{exc.retry_after_s:.1f} s (circuit breaker open)",
                headers={"Retry-After": self._breakers.retry_after_header(self._name)},
                details={"circuit": self._name, "state": "open"},
            ) from None

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._guard.__exit__(exc_type, exc, tb)


def probed(breakers: Breakers | None, name: str, answered: bool) -> None:
    """A health probe's answer (``/ready``) as the half-open probe of a breaker that is due for
    one, so that an idle gateway's breakers close (and show closed) once the dependency is back."""
    if breakers is not None and breakers.is_open(name) and breakers.retry_after_s(name) == 0:
        breakers.record(
            name, None if answered else ConnectionError(f"{name} did not answer a probe")
        )
