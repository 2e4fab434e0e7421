"""The worker's one write boundary: what each event leaves behind (a result in Redis and on its
results topic, a dead letter, audit events), written through the :class:`ResultPublisher`,
then answered in the :class:`AckLedger` so its offset may be committed.

A write that fails halfway is run again, skipping the steps that are done: a dead letter is
produced once (a Redis marker per source offset), a result is stored once (``HSETNX``) and
published until its ``published`` flag is set, whoever stored it; after a crash between a
produce and its flag the same result, or the same letter, is produced again (consumers may see
an identical copy; only Kafka transactions would close that window). Audit events are at
least once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streaminfer.models.base import Model
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import SchemaError
from streaminfer.schemas.records import (
    AuditEvent,
    AuditType,
    DeadLetter,
    Error,
    InferenceRequest,
    InferenceResult,
    Status,
    Tensor,
    Timings,
    now_ms,
)

from . import metrics, spans
from .breakers import SHARED, TaskCircuitOpen, TaskDependencyDown, dependency_of, wait_s
from .collections import collect
from .ledger import AckLedger, Entry
from .publisher import Latency, Publication, ResultPublisher, StoredResult
from .requests import SourceEvent

logger = logging.getLogger(__name__)

# The last millisecond of year 9999: timestamps past it are no dates any client can read.
MAX_TIMESTAMP_MS = 253_402_300_799_999

# Failures of Redis, Kafka or the schema registry that pass: the write waits and runs again.
DEPENDENCY_ERRORS = (RedisError, KafkaError, OSError, TimeoutError)

# An attempt taking longer than this is logged with where it is (a pager's clue). It includes a
# batch's wait for an instance and its model time, so it is far above either.
SLOW_ATTEMPT_S = 60.0

# Writes (a batch's outcomes, or one rejection) on their way at once, per worker.
MAX_WRITES = 8

Before = tuple[asyncio.Task, Callable[[], Awaitable[object]]]


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (*DEPENDENCY_ERRORS, TaskDependencyDown)) or (
        isinstance(exc, SchemaError) and exc.retriable
    )


@dataclass(frozen=True, slots=True)
class Letter:
    code: str
    message: str
    error_type: str


@dataclass(eq=False, slots=True)
class Outcome:
    """Everything one event leaves behind; the flags record what is written already."""

    source: SourceEvent
    entry: Entry | None
    """Answered in the ledger once everything below is written."""
    request: InferenceRequest | None = None
    result: InferenceResult | None = None
    """The result to store; None with ``stored`` set: an earlier result is only (re)published."""
    letter: Letter | None = None
    digest: str = ""
    audits: list[AuditEvent] = field(default_factory=list)
    """Written before the terminal audit event (e.g. CACHE_HIT)."""
    cache_key: str | None = None
    """Where a SUCCEEDED result also goes into the content cache."""
    lettered: bool = False
    stored: StoredResult | None = None
    audited: bool = False
    events: list[AuditEvent] | None = None
    """The audit events, once built (with the metrics and the log line they count)."""
    context: Any = None
    """The trace context its request came with (``spans.request_context``); None: none."""
    root: Any = None
    """Without one, the root the worker gave its trace (its queue wait span's context)."""
    batch: Any = None
    """The span context of the batch that computed it, which its write span links to."""
    span: Any = None
    """Its ``write result`` span while it is written (None without an SDK)."""
    headers: list[tuple[str, bytes]] | None = None
    """Its result's Kafka headers (the trace context), once made (``spans.result_headers``)."""

    @property
    def request_id(self) -> str:
        if self.result is not None:
            return self.result.request_id
        if self.request is not None:
            return self.request.request_id
        return (self.source.key or b"").decode("utf-8", "replace")


class OutcomeWriter:
    """Builds results and audit events, writes outcomes and answers them in the ledger."""

    def __init__(
        self,
        publisher: ResultPublisher,
        codec: AvroCodec,
        worker_id: str,
        ledger: AckLedger | None = None,
        max_writes: int = MAX_WRITES,
    ) -> None:
        self._publisher = publisher
        self._codec = codec
        self.worker_id = worker_id
        self.ledger = ledger or AckLedger()
        self._max_writes = max_writes
        self._writing: set[asyncio.Task] = set()
        self.closed = False
        """Once set, a failing write gives up (its events are redelivered) instead of waiting."""
        self.releasing = False
        """Set from a rebalance's start to its end (:meth:`release_held`, :meth:`hold_again`):
        a write that fails or is held by a breaker meanwhile gives up (redelivered)."""

    # --- writing ---
    async def submit(
        self,
        outcomes: Sequence[Outcome],
        before: Before | None = None,
        written: Callable[[float], None] | None = None,
    ) -> None:
        """Write ``outcomes`` in the background; waits only while ``max_writes`` writes are on
        their way already (backpressure). ``before``: a write already started that must land
        first (the STARTED marks), and how to run it again if it failed. ``written``: told how
        many ms passed from submitting to everything written (the delivery part of a deadline)."""
        while len(self._writing) >= self._max_writes:
            await asyncio.wait(list(self._writing), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._write_all(list(outcomes), before, written))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def flush(self) -> None:
        """Wait for every write on its way."""
        while self._writing:
            await asyncio.wait(list(self._writing))

    async def _write_all(
        self,
        outcomes: list[Outcome],
        before: Before | None,
        written: Callable[[float], None] | None = None,
    ) -> None:
        submitted = time.monotonic()
        writes = spans.start_writes(outcomes)
        ok = True
        if before is not None:
            running, again = before
            try:
                await running
            except Exception as exc:
                logger.warning("STARTED marks failed (%r); writing them again", exc)
                ok = await self.until_written("the STARTED marks", again)
        ok = ok and await self.until_written(
            f"{len(outcomes)} outcomes", lambda: self.write(outcomes)
        )
        spans.end_writes(writes, ok)
        if ok:
            if written is not None:
                written((time.monotonic() - submitted) * 1000.0)
            for outcome in outcomes:
                if outcome.entry is not None:
                    await self.ledger.answer(outcome.entry)
        else:
            for outcome in outcomes:
                if outcome.entry is not None:
                    self.ledger.give_up(outcome.entry)

    async def until_written(self, what: str, write: Callable[[], Awaitable[object]]) -> bool:
        """Run ``write`` to the end, waiting and running it again while Redis, Kafka or the
        registry fail. On shutdown it gives up (returns False): the events are redelivered.
        Each failure counts against its dependency's circuit breaker (streams/breakers.py);
        while one is open no attempt is made until it is due for a probe. While a rebalance
        drains (:meth:`release_held`), a failed or held write gives up too."""
        delay_s = 0.1
        breakers = getattr(self._publisher, "breakers", None)
        failed_on: set[str] = set()  # breakers an attempt failed on: where this write waits
        while True:
            if breakers is not None and not await self._wait_for_breakers(
                what, breakers, failed_on
            ):
                return False
            try:
                await self._watched(what, write())
                # the attempt used these again; a task's own breakers are judged where used
                for name in failed_on & set(SHARED):
                    breakers.record(name)
                return True
            except Exception as exc:
                if breakers is not None and (name := dependency_of(exc)) is not None:
                    if not isinstance(exc, TaskCircuitOpen):  # a refusal is no outcome of a call
                        breakers.record(name, exc)
                    failed_on.add(name)
                if not is_transient(exc):
                    # NOTE: a bug, not an outage; retrying keeps the promise (nothing acked
                    # unwritten) and the log says where. Each step builds its own input safely.
                    logger.exception(
                        "writing %s failed unexpectedly; retrying in %.1fs", what, delay_s
                    )
                if self.closed or self.releasing:
                    logger.warning(
                        "%s with %s unwritten (%r); they will be redelivered",
                        "stopping" if self.closed else "rebalancing",
                        what,
                        exc,
                    )
                    return False
                logger.warning(
                    "%s wait for Redis, Kafka or the registry (%r); retrying in %.1fs",
                    what,
                    exc,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    def release_held(self) -> None:
        """A rebalance starts: every write held by an open breaker gives up, and so does every
        write that fails until :meth:`hold_again` (their events are redelivered). faust waits
        on revoke until each delivered event is acked or given up, and must not wait for a
        dependency that may be away for long, nor for a model that keeps failing; whoever owns
        the partitions next runs them again."""
        self.releasing = True

    def hold_again(self) -> None:
        """The rebalance is over: writes wait for their dependencies again."""
        self.releasing = False

    async def _wait_for_breakers(self, what: str, breakers, failed_on: set[str]) -> bool:
        """Wait while a breaker that holds this write is open and not yet due for a probe; False
        if the worker stops or a rebalance drains meanwhile (the events are redelivered)."""
        while (pause_s := wait_s(breakers, failed_on)) > 0:
            if self.closed or self.releasing:
                logger.warning(
                    "giving %s up (circuit open, %s); they will be redelivered",
                    what,
                    "stopping" if self.closed else "rebalancing",
                )
                return False
            await asyncio.sleep(min(pause_s, 0.5))
        return True

    async def _watched(self, what: str, attempt: Awaitable[object]) -> None:
        """Await one attempt, logging where it is if it takes longer than ``SLOW_ATTEMPT_S``
        (every call under it has its own timeout: this says which one does not)."""
        task = asyncio.ensure_future(attempt)
        try:
            while True:
                done, _ = await asyncio.wait([task], timeout=SLOW_ATTEMPT_S)
                if done:
                    return task.result()
                logger.warning(
                    "%s: an attempt is running for over %.0f s, at %s",
                    what,
                    SLOW_ATTEMPT_S,
                    " <- ".join(reversed(_awaiting(task.get_coro()))),
                )
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def write(self, outcomes: Sequence[Outcome]) -> None:
        """One pass over ``outcomes``; safe to call again after it raised."""
        await self._write_letters([o for o in outcomes if o.letter is not None and not o.lettered])
        # items stored and neighbours found (parameters.collection) before the result is
        await collect(
            getattr(self._publisher, "collections", None),
            [o for o in outcomes if o.stored is None and o.result is not None],
        )
        await self._store([o for o in outcomes if o.stored is None and o.result is not None])
        # events naming another client's request_id: a dead letter instead of their result
        await self._write_letters([o for o in outcomes if o.letter is not None and not o.lettered])
        await self._publish(
            [o for o in outcomes if o.stored is not None and not o.stored.published]
        )
        pending = [o for o in outcomes if not o.audited]
        for o in pending:  # built once: a retry re-sends the same events and counts nothing twice
            if o.events is None:
                o.events = self._audit_events(o)
        await self._publisher.audit(e for o in pending for e in o.events)
        for o in pending:
            o.audited = True

    async def _write_letters(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        letters = [
            DeadLetter(
                source_topic=o.source.topic,
                partition=o.source.partition,
                offset=o.source.offset,
                key=o.source.key,
                payload=o.source.value,
                error_code=o.letter.code,
                error_message=o.letter.message,
            )
            for o in outcomes
        ]
        claims = await self._publisher.claim_dead_letters(letters)
        for outcome, letter, (at, done) in zip(outcomes, letters, claims, strict=True):
            if not done:
                src = outcome.source
                await self._publisher.dead_letter(
                    dataclasses.replace(letter, at=at), outcome.letter.error_type
                )
                outcome.audits.append(
                    self.audit_event(
                        outcome,
                        AuditType.DEAD_LETTERED,
                        {
                            "error_code": letter.error_code,
                            "topic": src.topic,
                            "partition": str(src.partition),
                            "offset": str(src.offset),
                        },
                    )
                )
            outcome.lettered = True

    async def _store(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        encoded = [self._encode(o) for o in outcomes]
        stored = await self._publisher.store_results(
            [
                (o.result.request_id, a, o.request.client_id if o.request else None)
                for o, a in zip(outcomes, encoded, strict=True)
            ]
        )
        cache = []
        for outcome, avro, held in zip(outcomes, encoded, stored, strict=True):
            if held is None:
                logger.warning(
                    "event at %s[%d]@%d names request %s of another client",
                    outcome.source.topic,
                    outcome.source.partition,
                    outcome.source.offset,
                    outcome.result.request_id,
                )
                outcome.result = None
                outcome.letter = Letter(
                    "REQUEST_ID_TAKEN", "the request_id belongs to another client", "RequestIdTaken"
                )
                outcome.lettered = False
                continue
            outcome.stored = held
            if held.won and outcome.cache_key and outcome.result.status is Status.SUCCEEDED:
                cache.append((outcome.cache_key, avro))
        await self._publisher.store_cache(cache)

    def _encode(self, outcome: Outcome) -> bytes:
        """The result's Avro; a result that cannot be encoded fails its request alone."""
        try:
            return self._codec.encode(outcome.result)
        except SchemaError as exc:
            if exc.retriable:
                raise
            logger.error("result of %s cannot be encoded: %s", outcome.result.request_id, exc)
            result = outcome.result
            result.outputs = []
            result.status = Status.FAILED
            result.error = Error("RESULT_UNENCODABLE", _clip(str(exc)), False)
            return self._codec.encode(result)

    async def _publish(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        # NOTE: an outcome with a stored result always has its request (batches, refusals)
        await self._publisher.publish_results(
            [
                Publication(
                    task=o.request.task,
                    request_id=o.request_id,
                    avro=o.stored.avro,
                    headers=spans.result_headers(o),
                    latency=Latency(
                        o.request.priority.topic_suffix,
                        o.result.timings.total_ms,
                        o.result.completed_at,
                    )
                    if o.stored.won
                    else None,
                )
                for o in outcomes
            ]
        )
        for o in outcomes:
            o.stored = dataclasses.replace(o.stored, published=True)

    def _audit_events(self, outcome: Outcome) -> list[AuditEvent]:
        events = list(outcome.audits)
        if outcome.stored is None:  # a dead letter only
            return events
        result = outcome.result
        if not outcome.stored.won or result is None:
            metrics.DUPLICATES.inc()
            return [*events, self.audit_event(outcome, AuditType.DUPLICATE)]
        metrics.REQUESTS.labels(result.task, result.status.value.lower()).inc()
        metrics.REQUEST_SECONDS.labels(result.task).observe(
            max(0, result.completed_at - result.created_at) / 1000.0
        )
        details = {"status": result.status.value}
        if (
            result.timings.feature_source is not None
        ):  # what its feature lookup took (streams/features.py)
            details.update(
                feature_source=result.timings.feature_source,
                feature_lookup_ms=f"{result.timings.feature_lookup_ms or 0.0:.3f}",
            )
        if result.error is not None:
            details["error_code"] = result.error.code
            metrics.ERRORS.labels(result.task, result.error.code).inc()
        traceparent = spans.traceparent(outcome)
        # traced requests opted into being followed: one INFO line each; the rest at DEBUG
        (logger.info if traceparent else logger.debug)(
            "request finished",
            extra={
                "request_id": result.request_id,
                "task": result.task,
                "status": result.status.value,
                "model": result.model_name,
                "version": result.model_version,
                "batch_size": result.batch_size,
                "traceparent": traceparent,
            },
        )
        return [*events, self.audit_event(outcome, AuditType[result.status.value], details)]

    # --- building ---
    def result(
        self,
        request: InferenceRequest,
        status: Status,
        *,
        model: Model | None = None,
        outputs: dict[str, np.ndarray] | None = None,
        error: Error | None = None,
        batch_size: int = 0,
        attempts: int = 1,
        started: int | None = None,
        inference_ms: float = 0.0,
    ) -> InferenceResult:
        completed = now_ms()
        started = started if started is not None else completed
        created = min(max(request.created_at, 0), MAX_TIMESTAMP_MS)  # hostile values encode too
        return InferenceResult(
            request_id=request.request_id,
            task=request.task,
            status=status,
            worker_id=self.worker_id,
            model_name=model.name if model else None,
            model_version=model.version if model else None,
            outputs=[
                Tensor.from_numpy(name, np.ascontiguousarray(a))
                for name, a in (outputs or {}).items()
            ],
            error=error,
            batch_size=batch_size,
            attempts=attempts,
            created_at=created,
            completed_at=completed,
            timings=Timings(
                queued_ms=float(max(0, started - created)),
                inference_ms=inference_ms,
                total_ms=float(max(0, completed - created)),
            ),
        )

    def audit_event(
        self,
        outcome_or_request: Outcome | InferenceRequest,
        kind: AuditType,
        details: dict[str, str] | None = None,
        digest: str | None = None,
    ) -> AuditEvent:
        if isinstance(outcome_or_request, Outcome):
            request, digest = outcome_or_request.request, outcome_or_request.digest
            request_id = outcome_or_request.request_id
        else:
            request, request_id = outcome_or_request, outcome_or_request.request_id
        return AuditEvent(
            request_id=request_id,
            task=request.task if request else "",
            type=kind,
            actor=self.worker_id,
            input_digest=digest or None,
            details=details or {},
        )

    async def mark_started(
        self, items: Sequence[tuple[InferenceRequest, str]], batch_items: int
    ) -> None:
        """``(request, digest)`` pairs: running (Redis status) and audit STARTED."""
        await self._publisher.mark_running(
            [(r.request_id, r.client_id) for r, _ in items], self.worker_id
        )
        await self._publisher.audit(
            self.audit_event(r, AuditType.STARTED, {"batch_items": str(batch_items)}, digest)
            for r, digest in items
        )


def _awaiting(coro) -> list[str]:
    """Where a suspended coroutine is, down its chain of awaits (a task's own stack shows only
    its top frame)."""
    found = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            found.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None)
    return found


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
