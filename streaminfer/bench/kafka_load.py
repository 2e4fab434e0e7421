"""Load through Kafka as an upstream producer and a downstream consumer see it: Avro requests
written straight to the request topics, results read from the results topic. Closed loop
(``drive_kafka``: a fixed number of requests in flight), open loop (``drive_open_loop``: a fixed
offered rate) and a priority burst (``drive_priority_burst``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from streaminfer.schemas.records import InferenceRequest, InferenceResult, Priority, now_ms

from ..client import RequestProducer, ResultConsumer, build_request
from ..settings import Settings
from .figures import NO_CACHE, TASK, Figures, figures


@dataclass
class LoadRun:
    """What one drive saw: per result, its latency and the batch that computed it."""

    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    """The compute time of each result's batch (every item of a batch carries the same)."""
    workers: Counter[str] = field(default_factory=Counter)
    """Results per worker id."""
    seconds: float = 0.0
    """From the first send to the last result."""
    arrivals_s: list[float] = field(default_factory=list)
    """When each result came back, in seconds after the first send (arrival order)."""

    def record(self, latency_s: float, result: InferenceResult, arrival_s: float = 0.0) -> None:
        self.latencies_s.append(latency_s)
        self.arrivals_s.append(arrival_s)
        self.batch_sizes.append(result.batch_size)
        self.inference_ms.append(result.timings.inference_ms)
        self.workers[result.worker_id] += 1

    def figures(self, scenario: str, max_batch_size: int) -> Figures:
        return figures(
            scenario,
            max_batch_size,
            self.latencies_s,
            self.seconds,
            len(self.latencies_s),
            float(np.mean(self.batch_sizes)),
        )


def full_batch_ms(runs: Sequence[LoadRun], max_batch_size: int) -> float | None:
    """Mean compute time of the full batches among ``runs``; None when none was full."""
    ms = [
        t
        for run in runs
        for t, size in zip(run.inference_ms, run.batch_sizes, strict=True)
        if size >= max_batch_size
    ]
    return float(np.mean(ms)) if ms else None


def results_consumer(
    bootstrap: str, prefix: str, on_record: Callable[[InferenceResult], None]
) -> ResultConsumer:
    """A downstream consumer of text-embedding results from the moment it starts, handing each to
    ``on_record`` and keeping none (the drives match results to their requests themselves)."""
    return ResultConsumer(
        bootstrap,
        TASK,
        prefix=prefix,
        max_buffered=0,
        on_record=on_record,
        fetch_max_wait_ms=Settings().kafka_fetch_max_wait_ms,
    )


def request_producer(bootstrap: str, prefix: str, linger_ms: int) -> RequestProducer:
    # NOTE: acks=1, aiokafka's default, as these drives measured before they used the client
    return RequestProducer(bootstrap, prefix=prefix, linger_ms=linger_ms, acks=1)


def text_request(
    text: str,
    priority: Priority = Priority.NORMAL,
    *,
    created_at: int | None = None,
    deadline_at: int | None = None,
) -> InferenceRequest:
    """A one-text embedding request that skips the content cache; ``created_at`` (default now)
    and ``deadline_at`` in epoch milliseconds."""
    created = now_ms() if created_at is None else created_at
    return build_request(
        TASK,
        {"text": [text]},
        priority=priority,
        parameters=NO_CACHE,
        created_at=created,
        deadline_ms=None if deadline_at is None else max(1, deadline_at - created),
    )


@dataclass(frozen=True)
class Received:
    """One result as the downstream consumer saw it."""

    result: InferenceResult
    arrival_ms: int
    """Epoch milliseconds at which the consumer read it."""


class _Exchange:
    """A producer writing text-embedding requests at NORMAL priority and a consumer matching the
    results to them by request id, until ``total`` have come back."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        total: int,
        desc: str,
        on_result: Callable[[], None] = lambda: None,
    ) -> None:
        self._bootstrap = bootstrap
        self._prefix = prefix
        self._total = total
        self._desc = desc
        self._on_result = on_result
        self._sent: dict[str, float] = {}
        self.run = LoadRun()
        self.received: dict[str, Received] = {}
        """Every result of this drive by request id."""
        self.started = 0.0
        self.started_epoch_ms = 0.0
        """``started`` on the wall clock, epoch milliseconds (the clock of created_at and deadline_at)."""

    async def __aenter__(self) -> _Exchange:
        self._all_back = asyncio.Event()
        self._consumer = results_consumer(self._bootstrap, self._prefix, self._receive)
        self._producer = request_producer(self._bootstrap, self._prefix, linger_ms=2)
        await self._consumer.start()
        await self._producer.start()
        self._progress = tqdm(total=self._total, desc=self._desc, unit="req", leave=False)
        self.started = time.perf_counter()
        self.started_epoch_ms = time.time() * 1000.0
        return self

    def epoch_ms(self, at: float) -> int:
        """A ``perf_counter`` time of this drive on the wall clock, epoch milliseconds."""
        return int(self.started_epoch_ms + (at - self.started) * 1000.0)

    async def send(self, text: str, sent_at: float, deadline_in_ms: float | None = None) -> str:
        """Write one request; its latency will count from ``sent_at`` (a ``perf_counter`` time),
        and so do its ``created_at`` and, with ``deadline_in_ms``, its ``deadline_at``. Returns its id."""
        created = self.epoch_ms(sent_at)
        request = text_request(
            text,
            created_at=created,
            deadline_at=None if deadline_in_ms is None else created + round(deadline_in_ms),
        )
        self._sent[request.request_id] = sent_at
        await self._producer.produce(request)  # delivery not awaited: the schedule is not held up
        return request.request_id

    async def results(self, timeout_s: float = 600.0) -> LoadRun:
        """Every result, once all ``total`` are back (TimeoutError past ``timeout_s``; the consumer's
        error, if it failed)."""
        deadline = time.monotonic() + timeout_s
        while not self._all_back.is_set():
            if self._consumer.failure is not None:
                raise self._consumer.failure
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(self.run.latencies_s)} of {self._total} results in {timeout_s:g} s"
                )
            try:
                await asyncio.wait_for(self._all_back.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        return self.run

    def _receive(self, result: InferenceResult) -> None:
        sent_at = self._sent.pop(result.request_id, None)
        if sent_at is None:  # a result of an earlier drive on this prefix
            return
        now = time.perf_counter()
        self.received[result.request_id] = Received(result, self.epoch_ms(now))
        self.run.record(now - sent_at, result, now - self.started)
        self.run.seconds = now - self.started
        self._on_result()
        self._progress.update()
        if len(self.run.latencies_s) >= self._total:
            self._all_back.set()

    async def __aexit__(self, *exc) -> None:
        self._progress.close()
        await self._producer.stop()
        await self._consumer.stop()


async def drive_kafka(
    bootstrap: str, prefix: str, texts: list[str], concurrency: int, desc: str
) -> LoadRun:
    """Closed loop: ``concurrency`` requests in flight, the next sent as soon as a result is back."""
    window = asyncio.Semaphore(concurrency)
    async with _Exchange(bootstrap, prefix, len(texts), desc, on_result=window.release) as exchange:
        for text in texts:
            await window.acquire()
            await exchange.send(text, time.perf_counter())
        return await exchange.results()


def send_offsets(rate_per_s: float, count: int) -> list[float]:
    """When each of ``count`` requests is due, in seconds after the start: evenly spaced at ``rate_per_s``."""
    return [i / rate_per_s for i in range(count)]


async def paced(
    offsets: Sequence[float],
    start: float,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncIterator[float]:
    """Each due time (``start`` + offset), yielded no earlier than it falls due. The schedule runs
    against the clock, not from the previous send: after a slow send the requests already due go
    out at once, so slow sends do not lower the offered rate."""
    for offset in offsets:
        due = start + offset
        delay = due - clock()
        if delay > 0:
            await sleep(delay)
        yield due


async def drive_open_loop(
    bootstrap: str,
    prefix: str,
    texts: list[str],
    rate_per_s: float,
    desc: str,
    duration_s: float | None = None,
) -> LoadRun:
    """Open loop: requests offered at ``rate_per_s`` whatever the worker's pace, ``len(texts)`` of
    them or as many as ``duration_s`` holds (texts reused). Latency counts from each request's
    scheduled send time, so a send that goes out late still counts its wait."""
    count = len(texts) if duration_s is None else max(1, round(rate_per_s * duration_s))
    async with _Exchange(bootstrap, prefix, count, desc) as exchange:
        i = 0
        async for due in paced(send_offsets(rate_per_s, count), exchange.started):
            await exchange.send(texts[i % len(texts)], due)
            i += 1
        return await exchange.results()


async def drive_priority_burst(
    bootstrap: str, prefix: str, texts: list[str], mix: tuple[float, float, float], seed: int = 1
) -> dict[str, list[float]]:
    """Write every request at once (a backlog: saturation), priorities drawn by ``mix``
    (high, normal, low); return each priority's queueing times (created -> batch start), ms."""
    rng = np.random.default_rng(seed)
    levels = [Priority.HIGH, Priority.NORMAL, Priority.LOW]
    drawn = rng.choice(3, size=len(texts), p=list(mix))
    priority_of: dict[str, str] = {}
    queued: dict[str, list[float]] = {p.topic_suffix: [] for p in levels}
    all_back = asyncio.Event()
    progress = tqdm(total=len(texts), desc="priority burst", unit="req", leave=False)

    def receive(result: InferenceResult) -> None:
        level = priority_of.pop(result.request_id, None)
        if level is not None:
            queued[level].append(result.timings.queued_ms)
            progress.update()
            if sum(map(len, queued.values())) == len(texts):
                all_back.set()

    try:
        async with (
            results_consumer(bootstrap, prefix, receive) as consumer,
            request_producer(bootstrap, prefix, linger_ms=5) as producer,
        ):
            deliveries = []
            for text, level in zip(texts, drawn, strict=True):
                request = text_request(text, levels[level])
                priority_of[request.request_id] = levels[level].topic_suffix
                deliveries.append(await producer.produce(request))
            await asyncio.gather(*deliveries)
            while not all_back.is_set():
                if consumer.failure is not None:
                    raise consumer.failure
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_back.wait(), 1.0)
    finally:
        progress.close()
    return queued


@dataclass
class DeadlineDrive:
    """An open-loop drive with a deadline on every request: what was sent, and what came back."""

    sent: dict[str, str] = field(default_factory=dict)
    """Request id -> its class (the key of the budget it was sent with)."""
    deadlines_ms: dict[str, int] = field(default_factory=dict)
    """Request id -> its deadline_at (epoch ms)."""
    received: dict[str, Received] = field(default_factory=dict)
    started_ms: float = 0.0
    """The first scheduled send, epoch ms."""
    offered_s: float = 0.0
    """The length of the offered schedule: count / rate."""
    timed_out: bool = False
    """Not every result came back within the wait."""


async def drive_deadlines(
    bootstrap: str,
    prefix: str,
    texts: list[str],
    rate_per_s: float,
    duration_s: float,
    classes: Sequence[str],
    budgets_ms: dict[str, float],
    desc: str,
    wait_s: float = 60.0,
) -> DeadlineDrive:
    """Open loop at ``rate_per_s`` for ``duration_s``; request i has class ``classes[i % len]`` and
    ``deadline_at`` = its scheduled send (= ``created_at``) + that class's budget. Waits for every
    result, at most ``wait_s`` after the last send; what did not come back is absent from ``received``."""
    count = max(1, round(rate_per_s * duration_s))
    drive = DeadlineDrive(offered_s=count / rate_per_s)
    async with _Exchange(bootstrap, prefix, count, desc) as exchange:
        drive.started_ms = exchange.started_epoch_ms
        i = 0
        async for due in paced(send_offsets(rate_per_s, count), exchange.started):
            kind = classes[i % len(classes)]
            request_id = await exchange.send(texts[i % len(texts)], due, budgets_ms[kind])
            drive.sent[request_id] = kind
            drive.deadlines_ms[request_id] = exchange.epoch_ms(due) + round(budgets_ms[kind])
            i += 1
        try:
            await exchange.results(wait_s)
        except TimeoutError:
            drive.timed_out = True
        drive.received = dict(exchange.received)
    return drive
