"""The worker's circuit breakers: ``redis``, ``kafka``, ``registry``, ``feature-store``.

Every write and lookup of the worker already runs through one retry loop
(:meth:`OutcomeWriter.until_written`), which feeds each failed attempt to the breaker of the
dependency that failed (:func:`dependency_of`). While a breaker is open:

- the loop does not try again until the breaker is due for a probe (its reset time), instead
  of burning retries against a dependency that is away; the first attempt after it is the probe;
- :class:`PartitionPause` pauses the request partitions that need it (every one for Redis, Kafka
  and the registry; those of the tasks that use it for the feature store or a model), so no
  new event is fetched for them. Events fetched before stay where they are (queued in a batcher, or waiting for their
  write) and are answered once the dependency is back: nothing is dead-lettered or acked
  because a breaker opened, and commits still stop at the lowest unanswered offset.

Once every breaker is closed again the partitions resume from where they stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streaminfer.models.base import dummy_inputs
from streaminfer.schemas.breakers import DEFAULT_FAILURES, DEFAULT_RESET_S, Breakers
from streaminfer.schemas.errors import SchemaError

from . import metrics
from .features import FeatureStoreUnavailable

logger = logging.getLogger(__name__)

REDIS, KAFKA, REGISTRY, FEATURE_STORE = "redis", "kafka", "registry", "feature-store"
DEPENDENCIES = (REDIS, KAFKA, REGISTRY, FEATURE_STORE)
SHARED = (REDIS, KAFKA, REGISTRY)
"""What every task needs: one of these open holds every write and pauses every partition. The
feature store (as a model) holds only the writes that failed on it and pauses only the
partitions of the tasks that use it."""


MODEL_PREFIX = "model:"
MODEL_DOWN_CODE = "INFERENCE_FAILED"


def model_breaker(task: str) -> str:
    """The breaker of a task's model: ``model:<task>``."""
    return MODEL_PREFIX + task


class ModelDown(Exception):
    """Every request of a batch failed with INFERENCE_FAILED: the model, not a request, fails."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.breaker = name


class ModelCircuitOpen(ModelDown):
    """The model's breaker is open: the batch is not answered; it runs again after the probe
    is due (the retry loop waits), and its requests are neither failed nor dead-lettered."""


async def judge_batch(breakers: Breakers | None, task: str, outcomes: Sequence, model,
                      predict: Callable[[object, dict], Awaitable[object]]) -> None:
    """Feed a computed batch to its model's breaker. A batch all of whose requests failed with
    INFERENCE_FAILED (each already retried alone) counts against the model only if the model
    also fails its warm-up input (``dummy_inputs``, one item, through ``predict``): otherwise
    the requests, not the model, are at fault (poisonous inputs fail alone with their dead
    letters, as before, and can never hold a task's partitions). Any other batch is a success.
    Raises :class:`ModelCircuitOpen` instead of answering a failed batch while the breaker is
    open: the retry loop runs it again once the probe is due."""
    if breakers is None or not outcomes:
        return
    name = model_breaker(task)
    failed = sum(1 for o in outcomes if o.result is not None and o.result.error is not None
                 and o.result.error.code == MODEL_DOWN_CODE)
    if failed == len(outcomes) and not await _healthy(model, predict):
        breakers.record(name, ModelDown(name, f"all {failed} requests of a batch failed on {task}"))
        if breakers.is_open(name):
            raise ModelCircuitOpen(name, f"the model of {task} keeps failing (circuit breaker open)")
    else:
        breakers.record(name)


async def _healthy(model, predict) -> bool:
    """Whether ``model`` runs its warm-up input; a model without a config (a test double): no."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    try:
        await predict(model, dummy_inputs(config, 1))
    except Exception as exc:
        logger.warning("model %s fails its warm-up input too: %r", getattr(model, "name", "?"), exc)
        return False
    return True


def refuse_if_open(breakers: Breakers | None, task: str) -> None:
    """Before a batch takes model time: :class:`ModelCircuitOpen` while the model's breaker is
    open and not yet due for a probe (its requests wait, no retry is burnt on the model)."""
    name = model_breaker(task)
    if breakers is not None and breakers.retry_after_s(name) > 0:
        raise ModelCircuitOpen(name, f"the model of {task} keeps failing (circuit breaker open)")


def dependency_of(exc: BaseException) -> str | None:
    """The dependency an error says is away; None for anything else (a bug, a bad input, or a
    bare socket error that names no dependency)."""
    if isinstance(exc, ModelDown):
        return exc.breaker
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
    """The open breakers of dependencies every task needs (SHARED)."""
    return [name for name in SHARED if breakers.is_open(name)]


def open_models(breakers: Breakers) -> list[str]:
    """Tasks whose model breaker is open."""
    return [name.removeprefix(MODEL_PREFIX) for name in breakers.names()
            if name.startswith(MODEL_PREFIX) and breakers.is_open(name)]


def wait_s(breakers: Breakers, touched: Iterable[str] = ()) -> float:
    """How long a write should wait before its next attempt: until the last open SHARED
    breaker, or breaker in ``touched`` (the feature store or a model the write failed on), is due for a probe;
    0 when none is open. Another task's open model breaker holds nothing here."""
    return max((breakers.retry_after_s(name) for name in {*SHARED, *touched}), default=0.0)


class PartitionPause:
    """Pauses the consumer's partitions while a breaker is open: all of them for a SHARED
    dependency (every task needs Redis and Kafka), those of the task's request topics
    (``topics_of``) for a model, and for the feature store those of the tasks that use it
    (``feature_tasks``); resumes the ones it paused once their breakers are closed. :meth:`sync` runs on a
    timer, so partitions assigned in a rebalance meanwhile are paused too."""

    def __init__(self, breakers: Breakers, assignment: Callable[[], Iterable],
                 pause: Callable[[set], None], resume: Callable[[set], None],
                 topics_of: Callable[[str], Iterable[str]] = lambda task: (),
                 feature_tasks: Callable[[], Iterable[str]] = lambda: ()) -> None:
        self._feature_tasks = feature_tasks
        self._breakers = breakers
        self._assignment = assignment
        self._pause = pause
        self._resume = resume
        self._topics_of = topics_of
        self.paused: set = set()

    def _wanted(self, assigned: set) -> tuple[set, list[str]]:
        if opened := open_dependencies(self._breakers):
            return assigned, opened
        tasks = set(models := open_models(self._breakers))
        why = [model_breaker(t) for t in models]
        if self._breakers.is_open(FEATURE_STORE):
            tasks.update(self._feature_tasks())
            why.append(FEATURE_STORE)
        if not tasks:
            return set(), why
        topics = {topic for task in tasks for topic in self._topics_of(task)}
        return {tp for tp in assigned if tp.topic in topics}, why

    def sync(self) -> None:
        assigned = set(self._assignment())
        self.paused &= assigned  # revoked meanwhile: no longer ours to resume
        wanted, opened = self._wanted(assigned)
        if new := wanted - self.paused:
            self._pause(new)
            self.paused |= new
            logger.warning("circuit open for %s: paused %d partitions", ",".join(opened), len(new))
        if done := self.paused - wanted:
            self._resume(done)
            self.paused -= done
            logger.info("circuits closed: resumed %d partitions", len(done))
        metrics.PARTITIONS_PAUSED.set(len(self.paused))


def pause_fetching(consumer, tps: set) -> None:
    """Stop fetching ``tps`` on a faust consumer, delivering what it fetched already.

    NOTE: not ``consumer.pause_partitions()``: that removes them from the very set a running
    ``getmany()`` checks each fetched record against, and faust then skips the records it has
    fetched (aiokafka's position is already past them: they would come back only after a
    rebalance, an event unanswered). A new set leaves that iteration its own; the next fetch
    reads the new one. ``resume_partitions()`` undoes both."""
    consumer._active_partitions = set(consumer._get_active_partitions()) - set(tps)
    consumer._paused_partitions.update(tps)
