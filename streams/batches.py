"""Running one batch: triage against what Redis knows (duplicates, cancellations, the content
cache (per client unless shared), deadlines), the model off the event loop with retries, and the batch's outcomes handed
to the :class:`OutcomeWriter`. A request that breaks the batch fails alone."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

import numpy as np

from streaminfer.models.base import Model
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import AuditType, Error, InferenceResult, Status, now_ms

from . import metrics, spans
from .breakers import FeatureStoreDown, feature_breaker, judge_batch, model_breaker, refuse_if_open
from .costs import BatchCost
from .features import (
    FeatureLookup,
    FeatureStoreUnavailable,
    Looked,
    lookup_request,
    names_entities,
    stamp,
)
from .merging import merge_inputs, shape_groups, split_outputs
from .outcomes import Letter, Outcome, OutcomeWriter
from .publisher import ResultPublisher
from .requests import PendingRequest

logger = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Instances:
    """A loaded model version and what runs it: its free instances and what its batches cost."""

    model: Model
    count: int
    compute: asyncio.Semaphore
    """Held while a batch computes: ``count`` batches at once."""
    cost: BatchCost


class BatchRunner:
    def __init__(
        self,
        publisher: ResultPublisher,
        codec: AvroCodec,
        outcomes: OutcomeWriter,
        pool: Callable[[], Executor],
        max_attempts: int = 3,
        retry_backoff_s: float = 0.05,
        cache_scope: str = "client",
        features: FeatureLookup | None = None,
        serving: Callable[[str], str | None] = lambda task: None,
    ) -> None:
        self._serving = serving
        self._features = features
        self._cache_shared = cache_scope == "shared"
        self._publisher = publisher
        self._codec = codec
        self._outcomes = outcomes
        self._pool = pool
        self._max_attempts = max_attempts
        self._backoff_s = retry_backoff_s

    async def run(self, instances: Instances, batch: list[PendingRequest]) -> None:
        """Run ``batch`` and submit its outcomes; the model is free again before they are written."""
        ok = await self._outcomes.until_written(
            f"lookups of a batch of {len(batch)}", partial(self._run_once, instances, batch)
        )
        if not ok:
            for item in batch:
                self._outcomes.ledger.give_up(item.entry)

    async def expire(self, instances: Instances, items: list[PendingRequest]) -> None:
        """Answer requests that cannot finish before their deadline even if run at once, before
        they take model time: EXPIRED, ``DEADLINE_UNREACHABLE`` (or ``DEADLINE_EXCEEDED`` when
        the deadline has passed already)."""
        now = now_ms()
        finished = []
        for item in items:
            if item.deadline_ms < now:
                finished.append(self._expired(item, instances.model, now))
                continue
            predicted = instances.cost.predict_ms(item.size, item.units) or 0.0
            error = Error(
                "DEADLINE_UNREACHABLE",
                f"due in {item.deadline_ms - now} ms; a run takes about {predicted:.1f} ms",
                False,
            )
            finished.append(
                self._outcome(
                    item,
                    self._outcomes.result(
                        item.request, Status.EXPIRED, model=instances.model, error=error
                    ),
                )
            )
        await self._outcomes.submit(finished)

    async def _run_once(self, instances: Instances, batch: list[PendingRequest]) -> None:
        model, compute = instances.model, instances.compute
        started = now_ms()
        for p in batch:
            opted_out = p.request.parameters.get("cache", "true").lower() == "false"
            opted_out = opted_out or names_entities(p.request)  # features change, the id does not
            p.cache_key = (
                None
                if opted_out
                else self._publisher.cache_key(
                    p.request.task, model.version, p.digest if self._cache_shared else _scoped(p)
                )
            )
        priors = await self._publisher.lookup(
            [p.request.request_id for p in batch], [p.cache_key for p in batch]
        )
        finished: list[Outcome] = []
        runnable: list[PendingRequest] = []
        for item, prior in zip(batch, priors, strict=True):
            req = item.request
            if prior.stored is not None:  # a redelivery: published again if it never was
                finished.append(self._outcome(item, None, stored=prior.stored))
            elif prior.cancelled:
                finished.append(
                    self._outcome(item, self._outcomes.result(req, Status.CANCELLED, model=model))
                )
            elif _past_deadline(item, started):
                finished.append(self._expired(item, model, started))
            elif prior.cached is not None:
                try:
                    cached = self._codec.decode(prior.cached, InferenceResult)
                except Exception as exc:  # a cache entry we cannot read is no entry: run it
                    logger.warning("unreadable cache entry for %s: %s", req.request_id, exc)
                    runnable.append(item)
                    continue
                # the original run's figures: a hit must not tell another client "someone sent this"
                hit = self._outcomes.result(
                    req,
                    Status.SUCCEEDED,
                    model=model,
                    started=started,
                    batch_size=cached.batch_size,
                    inference_ms=cached.timings.inference_ms,
                )
                hit.outputs = cached.outputs
                outcome = self._outcome(item, hit)
                outcome.audits.append(self._outcomes.audit_event(outcome, AuditType.CACHE_HIT))
                metrics.CACHE_HITS.inc()
                finished.append(outcome)
            else:
                runnable.append(item)
        looked = {}
        if runnable and self._features is not None:  # entities' features, before model time
            failed, looked = await self._lookup_features(model, runnable)
            for item in (item for item in runnable if id(item) in failed):
                error = Error(failed[id(item)].code, str(failed[id(item)])[:2000], False)
                finished.append(
                    self._outcome(
                        item,
                        self._outcomes.result(
                            item.request, Status.FAILED, model=model, error=error
                        ),
                    )
                )
            runnable = [item for item in runnable if id(item) not in failed]
        marks = None
        held = self._held(model, runnable[0].request.task) if runnable else None
        if held is not None:  # refused before it takes an instance or writes STARTED marks
            refuse_if_open(getattr(self._publisher, "breakers", None), held)
        if runnable:
            async with compute:
                started = now_ms()  # queueing ends when an instance takes the batch
                # a deadline may also pass while the batch waits for an instance
                late = [item for item in runnable if _past_deadline(item, started)]
                finished += [self._expired(item, model, started) for item in late]
                runnable = [item for item in runnable if not _past_deadline(item, started)]
                for item in runnable:
                    metrics.QUEUE_SECONDS.labels(
                        item.request.task, item.priority.topic_suffix
                    ).observe(max(0.0, (started - item.request.created_at) / 1000.0))
                if runnable:
                    # written while the model runs; they land before any result (see OutcomeWriter)
                    started_items = [(p.request, p.digest) for p in runnable]
                    items = sum(p.size for p in runnable)
                    again = partial(self._outcomes.mark_started, started_items, items)
                    marks = (asyncio.create_task(again()), again)
                    try:
                        with spans.batch(model.name, model.version, runnable, items) as batch_span:
                            computed = await self._infer(instances, runnable, started)
                    except BaseException:  # held (or stopping): this attempt's marks are moot
                        marks[0].cancel()
                        raise
                    for outcome in computed:
                        outcome.batch = batch_span
                    finished += computed
        stamp(finished, looked)
        # NOTE: the model is free from here: the writes go on in the background (bounded), so the
        # next batch computes while this one's results travel to Redis and Kafka.
        await self._outcomes.submit(
            finished, before=marks, written=instances.cost.observe_delivery if runnable else None
        )

    def _held(self, model: Model, task: str) -> str | None:
        """The model breaker that may hold this batch: its version's, while that version serves
        the task. A version no longer serving it (pinned requests, or a batch queued before a
        rollout) is not held: its failures are answered as they come out, as before the
        breakers, so a dead old version can never fill its queue and stall the topic's agent."""
        serving = self._serving(task)
        return model_breaker(task, model.version) if serving in (None, model.version) else None

    async def _lookup_features(
        self, model: Model, items: list[PendingRequest]
    ) -> tuple[dict[int, Exception], dict[str, Looked]]:
        """``FeatureLookup.fill`` through the task's ``feature-store:<task>`` breaker: refused at
        once while it is open (the batch waits for the probe), fed each database outcome."""
        if not any(lookup_request(item.inputs) for item in items):
            return {}, {}
        breakers = getattr(self._publisher, "breakers", None)
        name = feature_breaker(items[0].request.task)
        refuse_if_open(breakers, name)
        try:
            failed, looked = await self._features.fill(model, items)
        except FeatureStoreUnavailable as exc:
            raise FeatureStoreDown(name, str(exc)) from exc
        if breakers is not None and any(found.source == "db" for found in looked.values()):
            breakers.record(name)  # the database answered (a cache hit says nothing of it)
        return failed, looked

    def _outcome(self, item: PendingRequest, result: InferenceResult | None, **fields) -> Outcome:
        spans.end_queue_wait(item)  # answered without running: its wait ends here
        return Outcome(
            source=item.source,
            entry=item.entry,
            request=item.request,
            result=result,
            digest=item.digest,
            cache_key=item.cache_key,
            context=item.context,
            root=item.root,
            **fields,
        )

    def _expired(self, item: PendingRequest, model: Model, now: int) -> Outcome:
        error = Error(
            "DEADLINE_EXCEEDED",
            f"deadline passed {now - item.deadline_ms} ms before the run",
            False,
        )
        return self._outcome(
            item, self._outcomes.result(item.request, Status.EXPIRED, model=model, error=error)
        )

    async def _infer(
        self, instances: Instances, items: list[PendingRequest], started: int
    ) -> list[Outcome]:
        model = instances.model
        task = items[0].request.task
        batch_items = sum(p.size for p in items)
        metrics.BATCH_SIZE.labels(model.name).observe(batch_items)
        t0 = time.perf_counter()
        parts: list[dict | Exception] = [{}] * len(items)
        for group in shape_groups([p.inputs for p in items]):  # one group unless sizes differ
            for index, part in zip(
                group, await self._infer_group(instances, [items[i] for i in group]), strict=True
            ):
                parts[index] = part
        inference_ms = (time.perf_counter() - t0) * 1000.0
        metrics.COMPUTE_SECONDS.labels(model.name, model.version).observe(inference_ms / 1000.0)
        finished = []
        for item, part in zip(items, parts, strict=True):
            tries = 1
            if isinstance(part, Exception):
                part, tries = await self._retry(model, item, part, tries)
            build = partial(
                self._outcomes.result,
                item.request,
                model=model,
                batch_size=batch_items,
                attempts=tries,
                started=started,
                inference_ms=inference_ms,
            )
            if isinstance(part, Exception):
                code = getattr(part, "code", "INFERENCE_FAILED")
                error = Error(code, str(part)[:2000], bool(getattr(part, "retriable", False)))
                outcome = self._outcome(item, build(Status.FAILED, error=error))
                # operators get the event back, verbatim, with why it failed
                outcome.letter = Letter(code, error.message, type(part).__name__)
            else:
                try:
                    outcome = self._outcome(item, build(Status.SUCCEEDED, outputs=part))
                except Exception as exc:  # outputs that make no tensor fail this request alone
                    outcome = self._outcome(
                        item,
                        build(
                            Status.FAILED, error=Error("RESULT_UNENCODABLE", str(exc)[:2000], False)
                        ),
                    )
            finished.append(outcome)
        # a model that fails every request: not answered while its breaker is open (streams/breakers.py)
        await judge_batch(
            getattr(self._publisher, "breakers", None),
            model_breaker(task, model.version),
            finished,
            model,
            self._predict,
            hold=lambda: self._held(model, task) is not None,
        )
        return finished

    async def _infer_group(
        self, instances: Instances, items: list[PendingRequest]
    ) -> list[dict | Exception]:
        """Outputs (or the error) per request of one batch whose inputs concatenate."""
        model = instances.model
        t0 = time.perf_counter()
        try:
            outputs = await self._predict(model, merge_inputs([p.inputs for p in items]))
            parts: list[dict | Exception] = split_outputs(outputs, [p.size for p in items])
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            # isolate whoever broke the batch: the others must not fail with it
            logger.warning(
                "batch of %d on %s failed (%s); running its requests one by one",
                len(items),
                model.name,
                exc,
            )
            return [await self._run_alone(model, item) for item in items]
        instances.cost.observe(
            sum(p.size for p in items),
            sum(p.units for p in items),
            (time.perf_counter() - t0) * 1000.0,
        )
        return parts

    async def _run_alone(self, model: Model, item: PendingRequest) -> dict | Exception:
        try:
            return split_outputs(await self._predict(model, item.inputs), [item.size])[0]
        except Exception as exc:
            return exc

    async def _retry(
        self, model: Model, item: PendingRequest, error: Exception, tries: int
    ) -> tuple[dict | Exception, int]:
        """Retry a retriable failure alone, with exponential backoff and jitter, up to the
        configured attempts. Returns the outputs (or the last error) and the attempts made."""
        while getattr(error, "retriable", False) and tries < self._max_attempts:
            try:  # best effort: an outage here must not run the whole batch again
                await self._publisher.audit(
                    [
                        self._outcomes.audit_event(
                            item.request,
                            AuditType.RETRIED,
                            {"attempt": str(tries), "error": str(error)[:2000]},
                            item.digest,
                        )
                    ]
                )
            except Exception as exc:
                logger.warning("RETRIED audit of %s not written: %r", item.request.request_id, exc)
            await asyncio.sleep(self._backoff_s * (2 ** (tries - 1)) * (0.5 + random.random()))
            tries += 1
            part = await self._run_alone(model, item)
            if not isinstance(part, Exception):
                return part, tries
            error = part
        return error, tries

    async def _predict(self, model: Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool(), model.predict_batch, inputs
        )


def _scoped(item: PendingRequest) -> str:
    """The content digest as one client's: clients do not learn from the cache what others sent."""
    client = (item.request.client_id or "").encode()
    return hashlib.sha256(
        len(client).to_bytes(4, "big") + client + item.digest.encode()
    ).hexdigest()


def _past_deadline(item: PendingRequest, now_ms_: int) -> bool:
    return item.deadline_ms is not None and item.deadline_ms < now_ms_
