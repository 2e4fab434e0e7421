"""The worker's circuit breakers: ``redis``, ``kafka`` and ``registry``, which every task needs;
``model:<task>:<version>`` per model version (a v2 rolled out while v1's device is dead must not
wait for v1) and ``feature-store:<task>`` per task (tasks may use different databases).

Every write and lookup of the worker already runs through one retry loop
(:meth:`OutcomeWriter.until_written`), which feeds each failed attempt to the breaker of the
dependency that failed (:func:`dependency_of`). While a breaker is open:

- the loop does not try again until the breaker is due for a probe (its reset time), instead
  of burning retries against a dependency that is away; the first attempt after it is the probe;
- :class:`PartitionPause` pauses the request partitions that need it (every one for Redis, Kafka
  and the registry; a task's own for the model version serving it or its feature store) until
  the probe is due, so no
  new event is fetched for them. Events fetched before stay where they are (queued in a
  batcher, or waiting for their write) and are answered once the dependency is back: nothing is
  dead-lettered or acked because a breaker opened, and commits still stop at the lowest
  unanswered offset. Once the probe is due the partitions fetch again, so that a breaker with
  no held write left (all released by a rebalance) still gets its probe from a new event.

A task's own breakers are judged where their dependency is used (:func:`judge_batch` for the
model, the feature lookup in streams/batches.py); the retry loop records success only on the
shared dependencies it failed on, which its successful attempt used again.
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

logger = logging.getLogger(__name__)

REDIS, KAFKA, REGISTRY = "redis", "kafka", "registry"
SHARED = (REDIS, KAFKA, REGISTRY)
"""What every task needs: one of these open holds every write and pauses every partition. A
task's own breakers (its model, its feature store) hold only that task's batches."""

MODEL_PREFIX = "model:"
FEATURE_STORE_PREFIX = "feature-store:"
TASK_PREFIXES = (MODEL_PREFIX, FEATURE_STORE_PREFIX)
MODEL_DOWN_CODE = "INFERENCE_FAILED"


def model_breaker(task: str, version: str) -> str:
    """The breaker of a model version: ``model:<task>:<version>``."""
    return f"{MODEL_PREFIX}{task}:{version}"


def feature_breaker(task: str) -> str:
    """The breaker of a task's feature store: ``feature-store:<task>``."""
    return FEATURE_STORE_PREFIX + task


def task_of(name: str) -> tuple[str, str | None] | None:
    """(task, model version or None) of a task's own breaker; None for a shared one. (Task
    names have no ``:``: schemas/topics.py.)"""
    if name.startswith(MODEL_PREFIX):
        task, _, version = name.removeprefix(MODEL_PREFIX).partition(":")
        return task, version
    if name.startswith(FEATURE_STORE_PREFIX):
        return name.removeprefix(FEATURE_STORE_PREFIX), None
    return None


class TaskDependencyDown(Exception):
    """A dependency of one task (its model, its feature store) failed: names its breaker."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.breaker = name


class ModelDown(TaskDependencyDown):
    """Every request of a batch failed with INFERENCE_FAILED: the model, not a request, fails."""


class FeatureStoreDown(TaskDependencyDown):
    """The task's feature database did not answer (streams/features.py)."""


class TaskCircuitOpen(TaskDependencyDown):
    """A task's breaker is open: the batch is not answered; it runs again after the probe
    is due (the retry loop waits), and its requests are neither failed nor dead-lettered."""


class ModelCircuitOpen(TaskCircuitOpen, ModelDown):
    """The model's breaker is open (see :class:`TaskCircuitOpen`)."""


async def judge_batch(
    breakers: Breakers | None,
    name: str,
    outcomes: Sequence,
    model,
    predict: Callable[[object, dict], Awaitable[object]],
    *,
    hold: Callable[[], bool] = lambda: True,
) -> None:
    """Feed a computed batch to its model version's breaker ``name``. A batch all of whose requests failed with
    INFERENCE_FAILED (each already retried alone) counts against the model only if the model
    also fails its warm-up input (``dummy_inputs``, one item, through ``predict``): otherwise
    the requests, not the model, are at fault (poisonous inputs fail alone with their dead
    letters, as before, and can never hold a task's partitions). Any other batch is a success.
    Raises :class:`ModelCircuitOpen` instead of answering a failed batch while the breaker is
    open: the retry loop runs it again once the probe is due. ``hold()`` false (a version no
    longer serving the task, asked after the warm-up check, which takes model time): nothing is
    judged, the batch is answered as it came out (its failures FAILED)."""
    if breakers is None or not outcomes or not hold():
        return
    failed = sum(
        1
        for o in outcomes
        if o.result is not None
        and o.result.error is not None
        and o.result.error.code == MODEL_DOWN_CODE
    )
    if failed == len(outcomes) and not await _healthy(model, predict):
        if not hold():
            return
        breakers.record(name, ModelDown(name, f"all {failed} requests of a batch failed on {name}"))
        if breakers.is_open(name):
            raise ModelCircuitOpen(name, f"{name} keeps failing (circuit breaker open)")
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


def refuse_if_open(breakers: Breakers | None, name: str) -> None:
    """Before a batch uses a model version or a task's feature store (breaker ``name``):
    :class:`TaskCircuitOpen` while that breaker is open and not yet due for a probe (its
    requests wait, no retry is burnt on it)."""
    if breakers is None:
        return
    if breakers.retry_after_s(name) > 0:
        kind = ModelCircuitOpen if name.startswith(MODEL_PREFIX) else TaskCircuitOpen
        raise kind(name, f"{name} keeps failing (circuit breaker open)")


def dependency_of(exc: BaseException) -> str | None:
    """The breaker of the dependency an error says is away; None for anything else (a bug, a
    bad input, or a bare socket error that names no dependency)."""
    if isinstance(exc, TaskDependencyDown):
        return exc.breaker
    if isinstance(exc, SchemaError):
        return REGISTRY if exc.retriable else None
    if isinstance(exc, RedisError):
        return REDIS
    if isinstance(exc, KafkaError):
        return KAFKA
    return None


def _set_metric(name: str, value: int) -> None:
    metrics.CIRCUIT_STATE.labels(name).set(value)


def make_breakers(
    failures: int = DEFAULT_FAILURES, reset_s: float = DEFAULT_RESET_S, **kwargs
) -> Breakers:
    breakers = Breakers(
        failures,
        reset_s,
        is_failure=lambda exc: dependency_of(exc) is not None,
        on_state=_set_metric,
        **kwargs,
    )
    breakers.declare(*SHARED)
    return breakers


def forget(breakers: Breakers | None, name: str) -> None:
    """Drop breaker ``name`` and its metric (a model version unloaded)."""
    if breakers is not None and breakers.forget(name):
        metrics.CIRCUIT_STATE.remove(name)


def open_dependencies(breakers: Breakers) -> list[str]:
    """The open breakers of dependencies every task needs (SHARED)."""
    return [name for name in SHARED if breakers.is_open(name)]


def wait_s(breakers: Breakers, touched: Iterable[str] = ()) -> float:
    """How long a write should wait before its next attempt: until the last open SHARED
    breaker, or breaker in ``touched`` (a task's model or feature store the write failed on),
    is due for a probe; 0 when none is open. Another task's open breakers hold nothing here."""
    return max((breakers.retry_after_s(name) for name in {*SHARED, *touched}), default=0.0)


class PartitionPause:
    """Pauses the consumer's partitions while a breaker is open and not yet due for a probe:
    all of them for a SHARED dependency (every task needs Redis and Kafka), a task's request
    topics (``topics_of``) for its feature store or the model version serving it now
    (``serving``: task -> version; None: any); resumes the ones it paused after. An older
    version's open breaker holds only the batches pinned to it.

    :meth:`sync` runs on a timer and compares with what the consumer really has paused
    (``paused_now``): a rebalance (faust forgets its paused set) or faust's own flow control
    (``on_buffer_drop`` makes a partition active again) may undo a pause, and the next sync
    makes it again; partitions assigned meanwhile are paused too."""

    def __init__(
        self,
        breakers: Breakers,
        assignment: Callable[[], Iterable],
        pause: Callable[[set], None],
        resume: Callable[[set], None],
        topics_of: Callable[[str], Iterable[str]] = lambda task: (),
        paused_now: Callable[[], Iterable] | None = None,
        serving: Callable[[str], str | None] = lambda task: None,
    ) -> None:
        self._serving = serving
        self._breakers = breakers
        self._assignment = assignment
        self._pause = pause
        self._resume = resume
        self._topics_of = topics_of
        self._paused_now = paused_now
        self.paused: set = set()
        """What this pause holds (and may resume); the consumer may hold others (flow control)."""

    def _holding(self, name: str) -> bool:
        return self._breakers.retry_after_s(name) > 0

    def _wanted(self, assigned: set) -> tuple[set, list[str]]:
        if opened := [name for name in SHARED if self._holding(name)]:
            return assigned, opened
        why, topics = [], set()
        for name in self._breakers.names():
            if (owner := task_of(name)) is None or not self._holding(name):
                continue
            task, version = owner
            if version is not None and self._serving(task) not in (None, version):
                continue
            why.append(name)
            topics.update(self._topics_of(task))
        return {tp for tp in assigned if tp.topic in topics}, why

    def sync(self) -> None:
        self._breakers.advance()  # due breakers show half-open, called or not
        assigned = set(self._assignment())
        self.paused &= assigned  # revoked meanwhile: no longer ours to resume
        wanted, opened = self._wanted(assigned)
        really = set(self._paused_now()) if self._paused_now is not None else self.paused
        if new := wanted - really:
            self._pause(new)
            logger.warning("circuit open for %s: paused %d partitions", ",".join(opened), len(new))
        if done := self.paused - wanted:
            self._resume(done)
            logger.info("circuits closed or due for a probe: resumed %d partitions", len(done))
        self.paused = wanted
        metrics.PARTITIONS_PAUSED.set(len(self.paused))


def paused_partitions(consumer) -> set:
    """The partitions a faust consumer does not fetch because they are paused (not merely
    held back by its flow control)."""
    return set(consumer._paused_partitions) - set(consumer._get_active_partitions())


def pause_fetching(consumer, tps: set) -> None:
    """Stop fetching ``tps`` on a faust consumer, delivering what it fetched already.

    NOTE: not ``consumer.pause_partitions()``: that removes them from the very set a running
    ``getmany()`` checks each fetched record against, and faust then skips the records it has
    fetched (aiokafka's position is already past them: they would come back only after a
    rebalance, an event unanswered). A new set leaves that iteration its own; the next fetch
    reads the new one. ``resume_partitions()`` undoes both."""
    consumer._active_partitions = set(consumer._get_active_partitions()) - set(tps)
    consumer._paused_partitions.update(tps)
