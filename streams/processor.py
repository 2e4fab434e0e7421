"""The worker's logic, free of faust: decode an event, check it, queue it on its model's batcher,
run batches off the event loop, and write results before acknowledging the events.

Agents (``agents.py``) only hand raw events to :meth:`RequestProcessor.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from models.base import Model
from models.errors import ModelError
from models.friendly import validate_tensors
from models.repository import ModelRepository
from schemas.codec import AvroCodec
from schemas.errors import SchemaError
from schemas.records import (
    AuditType,
    Error,
    InferenceRequest,
    InferenceResult,
    Status,
    input_digest,
    now_ms,
)
from schemas.topics import parse_request_topic

from . import metrics
from .batcher import InferenceBatcher
from .errors import BatcherClosed
from .merging import merge_inputs, split_outputs
from .outcomes import Ack, OutcomeWriter
from .publisher import ResultPublisher
from .requests import PendingRequest, SourceEvent

logger = logging.getLogger(__name__)

# Batches whose results may be on their way to Redis and Kafka at once, per worker.
MAX_BATCHES_WRITING = 4

# Failures of Redis or Kafka that pass: the batch waits and runs again.
DEPENDENCY_ERRORS = (RedisError, KafkaError, OSError, TimeoutError)


class RequestProcessor:
    """One per worker process; serves ``tasks`` from ``repository``."""

    def __init__(
        self, *, repository: ModelRepository, publisher: ResultPublisher, codec: AvroCodec,
        prefix: str, worker_id: str, tasks: Sequence[str], max_queued: int = 1024,
        max_attempts: int = 3, retry_backoff_s: float = 0.05,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._codec = codec
        self._prefix = prefix
        self.worker_id = worker_id
        self.tasks = list(tasks)
        self._max_queued = max_queued
        self._max_attempts = max_attempts
        self._backoff_s = retry_backoff_s
        self._outcomes = OutcomeWriter(publisher, codec, worker_id)
        self._batchers: dict[tuple[str, str], InferenceBatcher[PendingRequest]] = {}
        self._models: dict[tuple[str, str], Model] = {}
        self._compute: dict[Model, asyncio.Semaphore] = {}
        """model -> its free instances (batches computing at once)."""
        self._active: dict[str, str] = {}
        """task -> the version serving requests that name none (switched by hot reload)."""
        self._closed = True

    async def start(self) -> None:
        threads = sum(max(1, self._repository.get_config(t).instances) for t in self.tasks)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="inference")
        self._lock = asyncio.Lock()
        self._writes = asyncio.Semaphore(MAX_BATCHES_WRITING)
        self._writing: set[asyncio.Task] = set()
        self._closed = False
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
        if self._writing:  # results still on their way: they must land before the acks
            await asyncio.wait(list(self._writing))
        for batcher in self._batchers.values():
            left = await batcher.stop()
            if left:
                logger.warning("%d requests left unacknowledged in %s; they will be redelivered",
                               len(left), batcher.name)
        self._pool.shutdown(wait=True)

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
            logger.info("task %s now served by version %s (was %s)", task, wanted, current)
        return switched

    async def _batcher_for(self, task: str, version: str | None) -> InferenceBatcher[PendingRequest]:
        config = self._repository.get_config(task)
        version = version or self._active.get(task) or config.default_version
        key = (task, version)
        if key in self._batchers:
            return self._batchers[key]
        async with self._lock:
            if key not in self._batchers:
                loop = asyncio.get_running_loop()
                model = await loop.run_in_executor(self._pool, self._repository.load, task, version)
                self._models[key] = model
                self._compute[model] = asyncio.Semaphore(config.instances)
                # NOTE: one batch more than the model has instances: that batch's Redis lookups
                # (duplicates, cancellations, cache) go on while the others compute, so an instance
                # finishing a batch finds the next one ready instead of idling for a round trip.
                batcher = InferenceBatcher(
                    f"{model.name}:{model.version}", lambda batch, m=model: self._run_batch(m, batch),
                    max_batch_size=config.max_batch_size, max_batch_delay_ms=config.max_batch_delay_ms,
                    instances=config.instances + 1, max_queued=self._max_queued,
                )
                await batcher.start()
                metrics.QUEUED.labels(batcher.name).set_function(lambda b=batcher: b.queued)
                self._batchers[key] = batcher
                logger.info("serving task %s with %s version %s", task, model.name, model.version)
        return self._batchers[key]

    # --- intake ---
    async def handle(self, source: SourceEvent, ack: Ack, release: Callable[[], None] = lambda: None) -> None:
        """Take one raw event from a request topic. Returns once it is queued or answered, or given
        up unacknowledged (``release``) because the worker is stopping."""
        try:
            request = self._codec.decode(source.value, InferenceRequest)
        except SchemaError as exc:
            logger.warning("undecodable event at %s[%d]@%d: %s", source.topic, source.partition,
                           source.offset, exc)
            await self._until_written("a dead letter", partial(
                self._outcomes.dead_letter_and_ack, source, None, exc.code, str(exc), type(exc).__name__, ack))
            return
        topic_task = parse_request_topic(self._prefix, source.topic)
        if request.task not in self._repository.configs or (topic_task and topic_task[0] != request.task):
            message = f"task {request.task!r} is not served here (topic {source.topic})"
            await self._until_written("a dead letter", partial(
                self._outcomes.dead_letter_and_ack, source, request, "TASK_NOT_FOUND", message, "ModelNotFound", ack))
            return
        try:
            inputs = {t.name: t.to_numpy() for t in request.inputs}
            validate_tensors(self._repository.get_config(request.task), inputs)
            batcher = await self._batcher_for(request.task, request.model_version)
        except (SchemaError, ModelError) as exc:
            await self._until_written("a rejection", partial(self._outcomes.reject, source, request, exc, ack))
            return
        first = next(iter(inputs.values()))
        version = batcher.name.rsplit(":", 1)[1]
        try:
            await batcher.put(PendingRequest(
                request=request, inputs=inputs, size=int(first.shape[0]), priority=request.priority,
                source=source, ack=ack, release=release, digest=input_digest(request.inputs),
                model_version=version,
            ))
        except BatcherClosed:
            release()

    async def resume(self) -> None:
        """Take requests again after a rebalance shed the queues."""
        for batcher in self._batchers.values():
            batcher.resume()

    def backlogged(self) -> bool:
        """Whether any model has a full round of batches queued (see the batcher's ``backlogged``)."""
        return any(b.backlogged for b in self._batchers.values())

    async def shed_queued(self) -> int:
        """On shutdown or a rebalance: give up requests queued but not started, unacknowledged, so
        the consumer commits only what is done and moves on once the running batches finish; the
        rest is fetched again from the committed offsets by whoever owns the partitions next."""
        shed = [item for batcher in self._batchers.values() for item in batcher.shed()]
        for item in shed:
            item.release()
        if shed:
            logger.info("%d queued requests left for redelivery", len(shed))
        return len(shed)

    # --- batches ---
    async def _run_batch(self, model: Model, batch: list[PendingRequest]) -> None:
        await self._until_written(f"batch of {len(batch)}", partial(self._run_batch_once, model, batch))

    async def _until_written(self, what: str, write: Callable[[], Awaitable[None]]) -> bool:
        """Run ``write`` to the end. If Redis or Kafka fail on the way, wait and run it again:
        no event is acknowledged before its outcome is written, and writing twice is harmless
        (results are stored only if absent). On shutdown it gives up (returns False) and the
        events are redelivered to whoever consumes next."""
        delay_s = 0.1
        while True:
            try:
                await write()
                return True
            except DEPENDENCY_ERRORS as exc:
                if self._closed:
                    logger.warning("stopping with %s unwritten (%r); it will be redelivered", what, exc)
                    return False
                logger.warning("%s waits for Redis or Kafka (%r); retrying in %.1fs", what, exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    async def _run_batch_once(self, model: Model, batch: list[PendingRequest]) -> None:
        started = now_ms()
        ids = [p.request.request_id for p in batch]
        for p in batch:
            opted_out = p.request.parameters.get("cache", "true").lower() == "false"
            p.cache_key = None if opted_out else self._publisher.cache_key(p.request.task, model.version, p.digest)
        priors = await self._publisher.lookup(ids, [p.cache_key for p in batch])
        runnable: list[PendingRequest] = []
        finished: list[tuple[InferenceRequest, InferenceResult, str]] = []
        duplicates: list[PendingRequest] = []
        hits: list[PendingRequest] = []
        for item, prior in zip(batch, priors, strict=True):
            req = item.request
            if prior.stored is not None:
                duplicates.append(item)
                if not prior.stored.published:  # a crash came between storing and publishing
                    await self._publisher.republish([(req.task, req.request_id, prior.stored.avro)])
            elif prior.cancelled:
                finished.append((req, self._outcomes.result(req, Status.CANCELLED, model=model), item.digest))
            elif _past_deadline(item, started):
                finished.append(self._expired(item, model, started))
            elif prior.cached is not None:
                cached = self._codec.decode(prior.cached, InferenceResult)
                hit = self._outcomes.result(req, Status.SUCCEEDED, model=model, started=started)
                hit.outputs = cached.outputs
                finished.append((req, hit, item.digest))
                hits.append(item)
            else:
                runnable.append(item)
        started_writes = None
        ran: list[tuple[InferenceRequest, InferenceResult, str]] = []
        if runnable:
            async with self._compute[model]:
                started = now_ms()  # queueing ends when an instance takes the batch
                # a deadline may also pass while the batch waits for an instance
                late = [item for item in runnable if _past_deadline(item, started)]
                finished += [self._expired(item, model, started) for item in late]
                runnable = [item for item in runnable if not _past_deadline(item, started)]
                for item in runnable:
                    metrics.QUEUE_SECONDS.labels(item.request.task, item.priority.topic_suffix).observe(
                        max(0.0, (started - item.request.created_at) / 1000.0))
                if runnable:
                    # written while the model runs; awaited before any result is written
                    started_writes = asyncio.create_task(self._outcomes.mark_started(runnable))
                    ran = await self._infer(model, runnable, started)
        # NOTE: the model is free from here: the writes go on in the background (bounded), so the
        # next batch computes while this one's results travel to Redis and Kafka.
        await self._writes.acquire()
        task = asyncio.create_task(self._until_written(f"results of a batch of {len(batch)}", partial(
            self._write_batch, batch, finished + ran, duplicates, hits, list(zip(runnable, ran, strict=True)),
            started_writes)))
        self._writing.add(task)
        task.add_done_callback(self._wrote)

    def _expired(self, item: PendingRequest, model: Model, now: int) -> tuple[InferenceRequest, InferenceResult, str]:
        req = item.request
        error = Error("DEADLINE_EXCEEDED", f"deadline passed {now - req.deadline_at} ms before the run", False)
        return req, self._outcomes.result(req, Status.EXPIRED, model=model, error=error), item.digest

    def _wrote(self, task: asyncio.Task) -> None:
        self._writing.discard(task)
        self._writes.release()

    async def _write_batch(self, batch: list[PendingRequest], finished: list, duplicates: list[PendingRequest],
                           hits: list[PendingRequest], ran: list, started_writes: asyncio.Task | None) -> None:
        """Everything a batch leaves behind, then the acks (only now may offsets be committed)."""
        if started_writes is not None:
            try:
                await started_writes
            except DEPENDENCY_ERRORS:  # write them again (this call is retried as a whole)
                await self._outcomes.mark_started([item for item, _ in ran])
        if duplicates:
            metrics.DUPLICATES.inc(len(duplicates))
            await self._outcomes.audit(duplicates, AuditType.DUPLICATE)
        if hits:
            metrics.CACHE_HITS.inc(len(hits))
            await self._outcomes.audit(hits, AuditType.CACHE_HIT)
        await self._publisher.store_cache([
            (item.cache_key, self._codec.encode(result)) for item, (_, result, _) in ran
            if item.cache_key is not None and result.status is Status.SUCCEEDED])
        await self._outcomes.finish(finished)
        for item in batch:
            await item.ack()

    async def _infer(self, model: Model, items: list[PendingRequest], started: int
                     ) -> list[tuple[InferenceRequest, InferenceResult, str]]:
        batch_items = sum(p.size for p in items)
        metrics.BATCH_SIZE.labels(model.name).observe(batch_items)
        t0 = time.perf_counter()
        try:
            outputs = await self._predict(model, merge_inputs([p.inputs for p in items]))
            parts: list[dict | Exception] = split_outputs(outputs, [p.size for p in items])
            attempts = [1] * len(items)
        except ModelError as exc:
            if len(items) == 1:
                parts = [exc]
            else:  # isolate whoever broke the batch: the others must not fail with it
                logger.warning("batch of %d on %s failed (%s); running its requests one by one",
                               len(items), model.name, exc)
                parts = [await self._run_alone(model, item) for item in items]
            attempts = [1] * len(items)
        inference_ms = (time.perf_counter() - t0) * 1000.0
        metrics.COMPUTE_SECONDS.labels(model.name, model.version).observe(inference_ms / 1000.0)
        finished = []
        for item, part, tries in zip(items, parts, attempts, strict=True):
            if isinstance(part, Exception):
                part, tries = await self._retry(model, item, part, tries)
            if isinstance(part, Exception):
                error = Error(getattr(part, "code", "INFERENCE_FAILED"), str(part), bool(part.retriable))
                result = self._outcomes.result(item.request, Status.FAILED, model=model, error=error,
                                      batch_size=batch_items, attempts=tries, started=started,
                                      inference_ms=inference_ms)
                # operators get the event back, verbatim, with why it failed
                await self._outcomes.dead_letter(item.source, item.request, error.code, error.message,
                                        type(part).__name__)
            else:
                result = self._outcomes.result(item.request, Status.SUCCEEDED, model=model, outputs=part,
                                      batch_size=batch_items, attempts=tries, started=started,
                                      inference_ms=inference_ms)
            finished.append((item.request, result, item.digest))
        return finished

    async def _run_alone(self, model: Model, item: PendingRequest) -> dict | Exception:
        try:
            return await self._predict(model, item.inputs)
        except ModelError as exc:
            return exc

    async def _retry(self, model: Model, item: PendingRequest, error: Exception, tries: int
                     ) -> tuple[dict | Exception, int]:
        """Retry a retriable failure alone, with exponential backoff and jitter, up to the
        configured attempts. Returns the outputs (or the last error) and the attempts made."""
        while getattr(error, "retriable", False) and tries < self._max_attempts:
            await self._publisher.audit([self._outcomes.audit_event(item.request, AuditType.RETRIED, item.digest,
                                                     {"attempt": str(tries), "error": str(error)})])
            await asyncio.sleep(self._backoff_s * (2 ** (tries - 1)) * (0.5 + random.random()))
            tries += 1
            part = await self._run_alone(model, item)
            if not isinstance(part, Exception):
                return part, tries
            error = part
        return error, tries

    async def _predict(self, model: Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, model.predict_batch, inputs)


def _past_deadline(item: PendingRequest, now_ms_: int) -> bool:
    return item.request.deadline_at is not None and item.request.deadline_at < now_ms_
