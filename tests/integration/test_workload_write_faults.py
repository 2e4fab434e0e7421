"""The seeds' workloads' Redis writes failing once, and for a while, on the real broker and
Redis, as tests/integration/test_write_faults.py does for the result writes: the worker's real
publisher with a fault injected at the write, under a RequestProcessor fed by the test.

- the collection store (``parameters.collection`` + ``item_id``, inside the retried write step),
  failing before its write lands, or after (the reply lost): every request is answered once,
  each item is stored once with its embedding, nothing is lost;
- the feature cache's write (``SET ... EX``) after a database lookup: every request is answered
  with its row's features, each row cached once it can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers.kafka import read_records
from helpers.worker_fakes import TASK, FakeModel, FakeRepository, config
from redis.exceptions import ConnectionError as RedisConnectionError

from integration.test_write_faults import Fault, started_publisher
from streaminfer.models.features import parse_features, resolve_url
from streaminfer.schemas import keys
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import InferenceRequest, InferenceResult, Priority, Status, Tensor
from streaminfer.schemas.topics import request_topic, results_topic
from streaminfer.streams.features import store_id
from streaminfer.streams.processor import RequestProcessor
from streaminfer.streams.publisher import ResultPublisher
from streaminfer.streams.requests import SourceEvent

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
COUNT = 30


async def serve(
    kafka_server: str,
    publisher: ResultPublisher,
    processor: RequestProcessor,
    requests: list[InferenceRequest],
    prefix: str,
) -> dict[str, list[InferenceResult]]:
    """Feed ``requests`` (3 partitions), wait until all are acked in order; their results."""
    topic = request_topic(prefix, TASK, Priority.NORMAL)
    offsets = [0, 0, 0]
    acked: list[tuple[int, int]] = []
    started = time.monotonic()
    await processor.start()
    try:
        for i, request in enumerate(requests):
            p = i % 3
            source = SourceEvent(
                topic, p, offsets[p], request.request_id.encode(), CODEC.encode(request)
            )
            offsets[p] += 1

            async def ack(at=(p, source.offset)):
                acked.append(at)

            await processor.handle(source, ack)
        while len(acked) < len(requests) and time.monotonic() - started < 60:
            await asyncio.sleep(0.05)
    finally:
        await processor.stop()
    assert len(acked) == len(requests), f"{len(requests) - len(acked)} events never acked"
    for p in range(3):
        mine = [o for pp, o in acked if pp == p]
        assert mine == list(range(len(mine))), f"partition {p} acked out of order"
    wanted = {r.request_id.encode() for r in requests}
    results = await read_records(
        kafka_server,
        results_topic(prefix, TASK),
        InferenceResult,
        wanted,
        lambda g: len(g) >= len(wanted),
        timeout_s=30,
    )
    assert set(results) == {r.request_id for r in requests}, "a result per request on its topic"
    for rid, copies in results.items():
        assert len({(c.worker_id, c.completed_at) for c in copies}) == 1, f"{rid}: several results"
    return results


@pytest.mark.parametrize("when", ["before", "after"], ids=["refused", "reply-lost"])
@pytest.mark.parametrize("once", [True, False], ids=["once", "for-3s"])
async def test_a_failing_collection_write_stores_each_item_once(
    kafka_server, redis_server, when, once
):
    prefix, publisher = await started_publisher(kafka_server, redis_server)
    fault, store = Fault(once, for_s=3.0), publisher.collections
    upsert = store._upsert

    async def failing_upsert(*args, **kwargs):
        if when == "before" and fault.fail():
            raise RedisConnectionError("injected: the collection write fails")
        done = await upsert(*args, **kwargs)
        if when == "after" and fault.fail():
            raise RedisConnectionError("injected: the collection write's reply is lost")
        return done

    store._upsert = failing_upsert
    processor = RequestProcessor(
        repository=FakeRepository(FakeModel()),
        publisher=publisher,
        codec=CODEC,
        prefix=prefix,
        worker_id="w-collections",
        tasks=[TASK],
        retry_backoff_s=0.001,
    )
    requests = [
        InferenceRequest(
            request_id=str(uuid.uuid4()),
            task=TASK,
            parameters={"collection": "docs", "item_id": f"item-{i}"},
            inputs=[Tensor.from_numpy("x", np.array([[i + 1.0, 1.0]], np.float32))],
        )
        for i in range(COUNT)
    ]
    try:
        results = await serve(kafka_server, publisher, processor, requests, prefix)
        assert fault.fired, "the fault fired"
        assert all(copies[0].status is Status.SUCCEEDED for copies in results.values())
        items, changes, _ = keys.collection_keys(prefix, None, "docs")
        assert await publisher.redis.hlen(items) == COUNT, "each item stored, none twice"
        assert await publisher.redis.zcard(changes) == COUNT
        for i in (0, COUNT - 1):
            got = await store.get(None, "docs", f"item-{i}")
            assert got["embedding"] == [2 * (i + 1.0), 2.0]  # the model's output, stored
        [top] = await store.search(None, "docs", [2.0 * COUNT, 2.0], 1)
        assert top.id == f"item-{COUNT - 1}"
    finally:
        await publisher.stop()
    print(
        f"\ncollection write failing {'once' if once else 'for 3 s'} ({when} it lands): "
        f"fired {fault.fired}x, {COUNT} items stored once"
    )


COLUMNS = ["a", "b"]


def feature_model(tmp_path: Path) -> FakeModel:
    """FakeModel (doubles ``x``) with a features section over a SQLite table in its version dir."""
    import dataclasses

    (tmp_path / "1").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "1" / "features.sqlite")) as db, db:
        db.execute('CREATE TABLE features (entity_id TEXT PRIMARY KEY, "a" REAL, "b" REAL)')
        db.executemany(
            "INSERT INTO features VALUES (?, ?, ?)", [(str(i), i, 1.0) for i in range(COUNT)]
        )
    base = config()
    features = parse_features(
        {"url": "sqlite:///{version_dir}/features.sqlite", "columns": COLUMNS, "cache_ttl_s": 600},
        base.inputs,
        {},
    )
    model = FakeModel()
    model.config = dataclasses.replace(base, path=tmp_path, features=features)
    model.path = tmp_path / "1"
    return model


@pytest.mark.parametrize("once", [True, False], ids=["once", "for-3s"])
async def test_a_failing_feature_cache_write_answers_every_request(
    kafka_server, redis_server, tmp_path, once
):
    prefix, publisher = await started_publisher(kafka_server, redis_server)
    model = feature_model(tmp_path)
    repository = FakeRepository(model)
    repository.configs = {TASK: model.config}
    processor = RequestProcessor(
        repository=repository,
        publisher=publisher,
        codec=CODEC,
        prefix=prefix,
        worker_id="w-features",
        tasks=[TASK],
        retry_backoff_s=0.001,
    )
    fault, lookup = Fault(once, for_s=3.0), processor._features
    to_cache = lookup._to_cache

    async def failing_to_cache(*args, **kwargs):
        if fault.fail():
            raise RedisConnectionError("injected: the feature cache write fails")
        return await to_cache(*args, **kwargs)

    lookup._to_cache = failing_to_cache
    requests = [
        InferenceRequest(
            request_id=str(uuid.uuid4()),
            task=TASK,
            inputs=[Tensor.from_numpy("entity_id", np.array([str(i)], dtype=object))],
        )
        for i in range(COUNT)
    ]
    try:
        results = await serve(kafka_server, publisher, processor, requests, prefix)
        assert fault.fired, "the fault fired"
        for i, request in enumerate(requests):
            result = results[request.request_id][0]
            assert result.status is Status.SUCCEEDED, result.error
            assert result.outputs[0].to_numpy().tolist() == [
                [2.0 * i, 2.0]
            ]  # its row's features, doubled
        url = resolve_url(model.config.features["url"], tmp_path, tmp_path / "1")
        store = store_id(url, "features")
        for i in range(COUNT):
            key = keys.feature_key(prefix, TASK, model.version, store, str(i))
            assert json.loads(await publisher.redis.get(key)) == {"a": float(i), "b": 1.0}
            assert 0 < await publisher.redis.ttl(key) <= 600
    finally:
        await publisher.stop()
    print(
        f"\nfeature cache write failing {'once' if once else 'for 3 s'}: fired {fault.fired}x, "
        f"{COUNT} requests answered, {COUNT} rows cached"
    )
