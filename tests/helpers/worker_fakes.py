"""Fakes of the worker's surroundings for unit tests: a model, a repository and a publisher over
dicts (no broker, no Redis), and helpers that run events through a RequestProcessor."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError

from streaminfer.models.config import ModelConfig
from streaminfer.models.errors import InferenceFailed
from streaminfer.models.signature import TensorSpec
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import InferenceRequest, InferenceResult, Tensor
from streaminfer.streams.processor import RequestProcessor
from streaminfer.streams.publisher import Prior, StoredResult
from streaminfer.streams.requests import SourceEvent

PREFIX = "unit"
TASK = "echo"


def config(max_batch_size: int = 8) -> ModelConfig:
    return ModelConfig(
        name="echo-model",
        task=TASK,
        backend="onnxruntime",
        inputs=(TensorSpec("x", "FP32", (2,)),),
        outputs=(TensorSpec("y", "FP32", (2,)),),
        max_batch_size=max_batch_size,
        max_batch_delay_ms=20,
        instances=1,
        device="cpu",
        warmup=False,
        path=Path("/nonexistent"),
        versions=("1",),
        default_version="1",
    )


class FakeModel:
    name, version, device = "echo-model", "1", "cpu"

    def __init__(self, transient_failures: int = 0) -> None:
        self.calls: list[int] = []
        self.transient_failures = transient_failures

    def predict_batch(self, inputs):
        x = inputs["x"]
        self.calls.append(len(x))
        if self.transient_failures:
            self.transient_failures -= 1
            raise InferenceFailed("GPU hiccup")
        if (x < 0).any():
            raise InferenceFailed("negative input breaks the model")
        return {"y": x * 2}


class FakeRepository:
    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.configs = {TASK: config()}

    def get_config(self, task):
        return self.configs[task]

    def load(self, task, version=None):
        return self.model


class FakePublisher:
    """The publisher's interface over dicts: results stored once, flagged published, letters marked."""

    def __init__(self, stored: dict[str, StoredResult] | None = None) -> None:
        self.stored = stored or {}
        self.results = []
        self.published: list[str] = []
        self.audits = []
        self.letters = []
        self.lettered: set[tuple[str, int, int]] = set()
        self.cancelled_ids: set[str] = set()
        self.cache: dict[str, bytes] = {}
        self.owners: dict[str, str] = {}
        self.codec = AvroCodec()

    async def lookup(self, ids, cache_keys):
        return [
            Prior(self.stored.get(i), i in self.cancelled_ids, self.cache.get(k) if k else None)
            for i, k in zip(ids, cache_keys, strict=True)
        ]

    def cache_key(self, task, version, digest):
        return f"{task}:{version}:{digest}"

    async def store_cache(self, entries):
        self.cache.update(entries)

    async def mark_running(self, ids, worker_id):
        pass

    async def store_results(self, results):
        out = []
        for rid, avro, client_id in results:
            owner = self.owners.setdefault(rid, client_id or "")
            held = self.stored.get(rid)
            if owner != (client_id or ""):
                out.append(None)
            elif held is None:
                self.stored[rid] = StoredResult(avro, False)
                self.results.append(self.codec.decode(avro, InferenceResult))
                out.append(StoredResult(avro, False, won=True))
            else:
                out.append(held)
        return out

    async def publish_results(self, items):
        for item in items:
            self.published.append(item.request_id)
            self.stored[item.request_id] = StoredResult(item.avro, True)

    async def audit(self, events):
        self.audits.extend(events)

    async def claim_dead_letters(self, letters):
        return [
            (lt.at, (lt.source_topic, lt.partition, lt.offset) in self.lettered) for lt in letters
        ]

    async def dead_letter(self, letter, error_type):
        self.letters.append((letter, error_type))
        self.lettered.add((letter.source_topic, letter.partition, letter.offset))
        return letter


def event(codec: AvroCodec, x, offset: int = 0, **fields) -> tuple[SourceEvent, InferenceRequest]:
    request = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        inputs=[Tensor.from_numpy("x", np.asarray(x, dtype=np.float32))],
        **fields,
    )
    return SourceEvent(
        f"{PREFIX}.requests.{TASK}.normal",
        0,
        offset,
        request.request_id.encode(),
        codec.encode(request),
    ), request


async def feed(
    processor: RequestProcessor, events, acked: list[int], timeout_s: float = 2.0
) -> None:
    """Hand ``events`` to a started processor, then wait until all are acked (or the timeout)."""
    expected = len(acked) + len(events)
    for source in events:

        async def ack(offset=source.offset):
            acked.append(offset)

        await processor.handle(source, ack)
    await until_acked(acked, expected, timeout_s)


async def until_acked(acked: list[int], count: int, timeout_s: float = 2.0) -> None:
    """Until ``count`` events are acked (or the timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(acked) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


async def run(processor: RequestProcessor, events, timeout_s: float = 2.0) -> list[int]:
    """Start ``processor``, feed it ``events``, stop it; the offsets acked, in ack order."""
    acked: list[int] = []
    await processor.start()
    try:
        await feed(processor, events, acked, timeout_s)
    finally:
        await processor.stop()
    return acked


def make(model: FakeModel, publisher: FakePublisher, codec) -> RequestProcessor:
    return RequestProcessor(
        repository=FakeRepository(model),
        publisher=publisher,
        codec=codec,
        prefix=PREFIX,
        worker_id="w1",
        tasks=[TASK],
        retry_backoff_s=0.001,
    )


class Faulty(FakePublisher):
    """Fails ``method`` the first ``times`` calls, or (``times=None``) on every call for ``for_s``
    seconds from the first one, raising ``error`` (a Redis connection error by default)."""

    def __init__(
        self, method: str, times: int | None = 1, for_s: float = 0.0, error: Exception | None = None
    ) -> None:
        super().__init__()
        self.failed = 0
        since: list[float] = []
        original = getattr(super(), method)

        async def failing(*args, **kwargs):
            since.append(time.monotonic())
            failing_now = self.failed < times if times is not None else since[-1] - since[0] < for_s
            if failing_now:
                self.failed += 1
                raise error or RedisConnectionError(f"{method} fails")
            return await original(*args, **kwargs)

        setattr(self, method, failing)
