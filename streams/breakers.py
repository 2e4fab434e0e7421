"""The worker's circuit breakers: ``redis``, ``kafka``, ``registry``, ``feature-store``.

Every write and lookup of the worker already runs through one retry loop
(:meth:`OutcomeWriter.until_written`), which feeds each failed attempt to the breaker of the
dependency that failed (:func:`dependency_of`). While a breaker is open:

- the loop does not try again until the breaker is due for a probe (its reset time), instead
  of burning retries against a dependency that is away; the first attempt after it is the probe;
- :class:`PartitionPause` pauses every request partition the consumer holds, so no new event is
  fetched. Events fetched before stay where they are (queued in a batcher, or waiting for their
  write) and are answered once the dependency is back: nothing is dead-lettered or acked
  because a breaker opened, and commits still stop at the lowest unanswered offset.

Once every breaker is closed again the partitions resume from where they stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streaminfer.schemas.breakers import DEFAULT_FAILURES, DEFAULT_RESET_S, Breakers
from streaminfer.schemas.errors import SchemaError

from . import metrics
from .features import FeatureStoreUnavailable

logger = logging.getLogger(__name__)

REDIS, KAFKA, REGISTRY, FEATURE_STORE = "redis", "kafka", "registry", "feature-store"
DEPENDENCIES = (REDIS, KAFKA, REGISTRY, FEATURE_STORE)


def dependency_of(exc: BaseException) -> str | None:
    """The dependency an error says is away; None for anything else (a bug, a bad input, or a
    bare socket error that names no dependency)."""
    if isinstance(exc, FeatureStoreUnavailable):
        return FEATURE_STORE
    if isinstance(exc, SchemaError):
        return REGISTRY if exc.retriable else None
    if isinstance(exc, RedisError):
        return REDIS
    if isinstance(exc, KafkaError):
        return KAFKA
    return None


def _set_metric(name: str, value: int) -> None:
    metrics.CIRCUIT_STATE.labels(name).set(value)


def make_breakers(failures: int = DEFAULT_FAILURES, reset_s: float = DEFAULT_RESET_S,
                  **kwargs) -> Breakers:
    breakers = Breakers(failures, reset_s, is_failure=lambda exc: dependency_of(exc) is not None,
                        on_state=_set_metric, **kwargs)
    breakers.declare(*DEPENDENCIES)
    return breakers


def open_dependencies(breakers: Breakers) -> list[str]:
    return [name for name in DEPENDENCIES if breakers.is_open(name)]


def wait_s(breakers: Breakers) -> float:
    """How long a write should wait before its next attempt: until the last open breaker is
    due for a probe; 0 when none is open."""
    return max((breakers.retry_after_s(name) for name in DEPENDENCIES), default=0.0)


class PartitionPause:
    """Pauses the consumer's partitions while a dependency breaker is open; resumes the ones it
    paused once all are closed. :meth:`sync` runs on a timer, so partitions assigned in a
    rebalance meanwhile are paused too."""

    def __init__(self, breakers: Breakers, assignment: Callable[[], Iterable],
                 pause: Callable[[set], None], resume: Callable[[set], None]) -> None:
        self._breakers = breakers
        self._assignment = assignment
        self._pause = pause
        self._resume = resume
        self.paused: set = set()

    def sync(self) -> None:
        opened = open_dependencies(self._breakers)
        if opened:
            assigned = set(self._assignment())
            new = assigned - self.paused
            self.paused &= assigned  # revoked meanwhile: no longer ours to resume
            if new:
                self._pause(new)
                self.paused |= new
                logger.warning("circuit open for %s: paused %d partitions", ",".join(opened), len(new))
        elif self.paused:
            resumed, self.paused = self.paused & set(self._assignment()), set()
            self._resume(resumed)
            logger.info("circuits closed: resumed %d partitions", len(resumed))
        metrics.PARTITIONS_PAUSED.set(len(self.paused))
