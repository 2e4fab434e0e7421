"""The worker's logic, free of faust: every event taken in the ack ledger, checked at intake,
queued on its model's batcher (one per task and version, switched by hot reload) and run by
the :class:`BatchRunner`; every outcome written by the :class:`OutcomeWriter`.

Agents (``agents.py``) only hand raw events to :meth:`RequestProcessor.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from streaminfer.models.errors import ModelError
from streaminfer.models.repository import ModelRepository
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import Error, Status, input_digest

from . import metrics, spans
from .batcher import InferenceBatcher
from .batches import BatchRunner, Instances
from .breakers import forget, model_breaker
from .costs import BatchCost
from .errors import BatcherClosed
from .features import FeatureLookup
from .intake import Admitted, Intake, Refusal, checked
from .ledger import Ack, AckLedger, Entry
from .outcomes import Letter, Outcome, OutcomeWriter, is_transient
from .publisher import ResultPublisher
from .requests import PendingRequest, SourceEvent, input_units

logger = logging.getLogger(__name__)


class RequestProcessor:
    """One per worker process; serves ``tasks`` from ``repository``."""

    def __init__(
        self,
        *,
        repository: ModelRepository,
        publisher: ResultPublisher,
        codec: AvroCodec,
        prefix: str,
        worker_id: str,
        tasks: Sequence[str],
        max_queued: int = 1024,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.05,
        cache_scope: str = "client",
        scheduling: str = "deadline",
        feature_store_url: str | None = None,
    ) -> None:
        self._repository = repository
        self._codec = codec
        self._breakers = getattr(publisher, "breakers", None)
        self.worker_id = worker_id
        self.tasks = list(tasks)
        self._max_queued = max_queued
        self._deadline_aware = scheduling == "deadline"
        self.ledger = AckLedger()
        self._outcomes = OutcomeWriter(publisher, codec, worker_id, self.ledger)
        self._intake = Intake(codec, repository, prefix)
        # NOTE: the publisher's Redis client exists once it is started, before any batch runs
        self._features = FeatureLookup(lambda: publisher.redis, prefix, feature_store_url)
        self._runner = BatchRunner(
            publisher,
            codec,
            self._outcomes,
            lambda: self._pool,
            max_attempts=max_attempts,
            retry_backoff_s=retry_backoff_s,
            cache_scope=cache_scope,
            features=self._features,
            serving=self.serving,
        )
        self._batchers: dict[tuple[str, str], InferenceBatcher[PendingRequest]] = {}
        self._instances: dict[tuple[str, str], Instances] = {}
        """(task, version) -> its model, free instances (batches computing at once) and batch cost."""
        self._active: dict[str, str] = {}
        """task -> the version serving requests that name none (switched by hot reload)."""
        self._retiring: set[asyncio.Task] = set()
        self._closed = True

    async def start(self) -> None:
        threads = sum(max(1, self._repository.get_config(t).instances) for t in self.tasks)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="inference")
        self._lock = asyncio.Lock()
        self._closed = False
        self._outcomes.closed = False
        for task in self.tasks:  # load and warm the default versions before taking traffic
            batcher = await self._batcher_for(task, None)
            self._active[task] = batcher.name.rsplit(":", 1)[1]

    async def stop(self) -> None:
        """Finish the batches running and those queued, then stop."""
        if self._closed:
            return
        self._closed = True
        for batcher in self._batchers.values():
            await batcher.drain()
        if self._retiring:
            await asyncio.wait(list(self._retiring))
        # results still on their way must land before the acks; on an outage they give up
        self._outcomes.closed = True
        await self._outcomes.flush()
        for batcher in self._batchers.values():
            left = await batcher.stop()
            if left:
                logger.warning(
                    "%d requests left unacknowledged in %s; they will be redelivered",
                    len(left),
                    batcher.name,
                )
            for item in left:
                self.ledger.give_up(item.entry)
        await self._outcomes.flush()
        self._pool.shutdown(wait=True)
        self._features.close()

    def new_tasks(self) -> list[str]:
        """Tasks built in the repository (as last read) that this worker does not serve yet."""
        return sorted(
            t for t, c in self._repository.configs.items() if c.versions and t not in self.tasks
        )

    async def add_task(self, task: str) -> None:
        """Serve ``task`` too: load and warm its default version; its events are accepted from now."""
        config = self._repository.get_config(task)
        # NOTE: the pool spawns threads lazily up to this bound, so raising it takes effect at once
        self._pool._max_workers += max(1, config.instances)
        batcher = await self._batcher_for(task, None)
        self._active[task] = batcher.name.rsplit(":", 1)[1]
        self.tasks.append(task)

    async def reload_models(self) -> list[tuple[str, str]]:
        """Hot reload: re-read the repository; where a task's default version changed (a new
        version directory, or a new pin), load and warm it, then route new requests to it.
        Requests already queued finish on the version they were queued for."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._repository.refresh)
        switched = []
        for task in self.tasks:
            try:
                wanted = self._repository.get_config(task).default_version
            except ModelError:
                continue
            current = self._active.get(task)
            if wanted is None or wanted == current:
                continue
            try:
                await self._batcher_for(task, wanted)
            except ModelError as exc:  # e.g. a version directory still being copied: next poll
                logger.warning("task %s: version %s is not loadable yet: %s", task, wanted, exc)
                continue
            self._active[task] = wanted
            switched.append((task, wanted))
            if self._breakers is not None and current is not None:
                # the old version holds nothing now: a batch its open breaker held runs again at
                # once (answered as it comes out) instead of waiting for the probe
                self._breakers.reset(model_breaker(task, current))
            logger.info("task %s now served by version %s (was %s)", task, wanted, current)
        for key in [
            k
            for k in self._batchers
            if k[1] not in self._repository.get_config(k[0]).served_versions
        ]:
            retiring = asyncio.create_task(self._retire(key, self._batchers.pop(key)))
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
        return switched

    async def _retire(
        self, key: tuple[str, str], batcher: InferenceBatcher[PendingRequest]
    ) -> None:
        """A version no longer served: what is queued for it finishes, then it is unloaded."""
        instances = self._instances.get(key)
        await batcher.drain()
        for item in await batcher.stop():
            self.ledger.give_up(item.entry)
        if key in self._batchers or self._instances.get(key) is not instances:
            return  # served again meanwhile (a rollback): the new load is in use, keep it
        self._repository.unload(*key)
        self._instances.pop(key, None)
        forget(self._breakers, model_breaker(*key))
        logger.info(
            "task %s: version %s unloaded (served now: %s)",
            key[0],
            key[1],
            list(self._repository.get_config(key[0]).served_versions),
        )

    async def _batcher_for(
        self, task: str, version: str | None
    ) -> InferenceBatcher[PendingRequest]:
        config = self._repository.get_config(task)
        version = version or self._active.get(task) or config.default_version
        key = (task, version)
        if key in self._batchers:
            return self._batchers[key]
        async with self._lock:
            if key not in self._batchers:
                loop = asyncio.get_running_loop()
                model = await loop.run_in_executor(self._pool, self._repository.load, task, version)
                instances = self._instances[key] = Instances(
                    model, config.instances, asyncio.Semaphore(config.instances), BatchCost()
                )
                # NOTE: one batch more than the model has instances: that batch's Redis lookups
                # (duplicates, cancellations, cache) go on while the others compute, so an instance
                # finishing a batch finds the next one ready instead of idling for a round trip.
                batcher = InferenceBatcher(
                    f"{model.name}:{model.version}",
                    lambda batch, i=instances: self._runner.run(i, batch),
                    max_batch_size=config.max_batch_size,
                    max_batch_delay_ms=config.max_batch_delay_ms,
                    instances=config.instances,
                    lookahead=1,
                    max_queued=self._max_queued,
                    cost=instances.cost,
                    deadline_aware=self._deadline_aware,
                    expire=lambda items, i=instances: self._runner.expire(i, items),
                )
                await batcher.start()
                metrics.QUEUED.labels(batcher.name).set_function(lambda b=batcher: b.queued)
                metrics.watch_cost(model.name, model.version, instances.cost)
                self._batchers[key] = batcher
                logger.info("serving task %s with %s version %s", task, model.name, model.version)
        return self._batchers[key]

    # --- intake ---
    async def handle(
        self, source: SourceEvent, ack: Ack, release: Callable[[], None] = lambda: None
    ) -> None:
        """Take one raw event from a request topic. Returns once it is queued, or its answer is
        on its way, or it is given up unacknowledged (``release``) because the worker is stopping.
        ``ack`` is called only once it and every earlier event of its partition are answered."""
        received_ns = time.time_ns()
        entry = self.ledger.take(source.topic, source.partition, source.offset, ack, release)
        try:
            admitted, batcher = await self._admit(source)
        except Refusal as refusal:
            await self._outcomes.submit([self._refused(source, entry, refusal)])
            return
        except _Stopping:
            self.ledger.give_up(entry)
            return
        request = admitted.request
        deadline = request.deadline_at
        if deadline is None and (
            default := self._repository.get_config(request.task).default_deadline_ms
        ):
            deadline = request.created_at + default
        try:
            await batcher.put(
                PendingRequest(
                    request=request,
                    inputs=admitted.inputs,
                    size=admitted.size,
                    priority=admitted.priority,
                    source=source,
                    entry=entry,
                    digest=admitted.digest,
                    model_version=batcher.name.rsplit(":", 1)[1],
                    units=input_units(admitted.inputs),
                    deadline_ms=deadline,
                    received_ns=received_ns,
                    context=spans.request_context(source.headers, request.trace),
                )
            )
        except BatcherClosed:
            self.ledger.give_up(entry)

    async def _admit(
        self, source: SourceEvent
    ) -> tuple[Admitted, InferenceBatcher[PendingRequest]]:
        """Decode and check the event; waits out registry outages (raises _Stopping on shutdown)."""
        delay_s = 0.1
        while True:
            try:
                request = await self._intake.decode(source)
                break
            except Refusal:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise Refusal(
                        "UNDECODABLE", f"cannot decode: {exc!r}", type(exc).__name__
                    ) from exc
                if self._closed:
                    raise _Stopping from exc
                logger.warning(
                    "decoding %s[%d]@%d waits for the schema registry (%s); retrying in %.1fs",
                    source.topic,
                    source.partition,
                    source.offset,
                    exc,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        admitted = checked(self._intake, source, request, self.tasks)
        try:
            batcher = await self._batcher_for(request.task, request.model_version)
        except ModelError as exc:  # e.g. a version that is built but cannot be loaded
            raise Refusal(
                exc.code, str(exc), type(exc).__name__, request=request, status=Status.FAILED
            ) from exc
        return admitted, batcher

    def _refused(self, source: SourceEvent, entry: Entry, refusal: Refusal) -> Outcome:
        request = refusal.request
        outcome = Outcome(
            source=source,
            entry=entry,
            request=request,
            letter=Letter(refusal.code, refusal.message, refusal.error_type),
            context=spans.request_context(source.headers, request.trace if request else None),
        )
        if request is not None and refusal.status is not None:
            outcome.result = self._outcomes.result(
                request, refusal.status, error=Error(refusal.code, refusal.message[:2000], False)
            )
            try:
                outcome.digest = input_digest(request.inputs)
            except Exception:  # hostile inputs may not even digest; the audit goes without
                outcome.digest = ""
        return outcome

    async def resume(self) -> None:
        """Take requests again after a rebalance shed the queues; faust re-reads every partition
        from its committed offset, so whatever the ledger still holds is given up."""
        self._outcomes.hold_again()
        dropped = self.ledger.reset()
        if dropped:
            logger.info("%d events held over the rebalance will be redelivered", dropped)
        for batcher in self._batchers.values():
            batcher.resume()

    def serving(self, task: str) -> str | None:
        """The version serving ``task``'s requests that name none."""
        return self._active.get(task)

    def service(self) -> dict[str, dict]:
        """task -> what its serving version's batches cost here (the fit) and its instances:
        what gateways show in ``/v1/tasks`` and turn into drain times."""
        found = {}
        for (task, version), instances in self._instances.items():
            if self._active.get(task) == version:
                found[task] = {
                    "version": version,
                    "instances": instances.count,
                    **instances.cost.to_dict(),
                }
        return found

    def backlogged(self) -> bool:
        """Whether any model has a full round of batches queued (see the batcher's ``backlogged``)."""
        return any(b.backlogged for b in self._batchers.values())

    async def shed_queued(self) -> int:
        """On shutdown or a rebalance: give up requests queued but not started, unacknowledged, so
        the consumer commits only what is done and moves on once the running batches finish; the
        rest is fetched again from the committed offsets by whoever owns the partitions next."""
        self._outcomes.release_held()  # batches a breaker holds go back too: see OutcomeWriter
        shed = [item for batcher in self._batchers.values() for item in batcher.shed()]
        for item in shed:
            self.ledger.give_up(item.entry)
        if shed:
            logger.info("%d queued requests left for redelivery", len(shed))
        return len(shed)


class _Stopping(Exception):
    """The worker stops while an event waits for the registry: leave it for redelivery."""
