"""The worker's collection step (streams/collections.py), through a real RequestProcessor over
the echo model (y = 2x, one FP32 row per request) and an in-memory collection store: succeeded
requests store their output and get their neighbours; what cannot be served fails that request
alone, with the error code the gateway would give."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.collections import MemoryCollections
from helpers.worker_fakes import FakeModel, FakePublisher, event, feed, make

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import Status


@pytest.fixture
def codec():
    return AvroCodec()


@pytest.fixture
def publisher():
    publisher = FakePublisher()
    publisher.collections = MemoryCollections()
    return publisher


async def answer(processor, publisher, codec, *events) -> list:
    """Feed one event at a time (each sees the ones before stored); their results in order."""
    acked: list[int] = []
    found = []
    for x, parameters, client in events:
        source, request = event(
            codec, x, offset=len(acked), parameters=parameters, client_id=client
        )
        await feed(processor, [source], acked)
        found.append(next(r for r in publisher.results if r.request_id == request.request_id))
    return found


async def test_items_are_stored_and_neighbours_come_back_best_first_without_self(
    publisher, codec
) -> None:
    processor = make(FakeModel(), publisher, codec)
    await processor.start()
    try:
        first, second, third, other = await answer(
            processor,
            publisher,
            codec,
            ([[1.0, 0.0]], {"collection": "c", "item_id": "a"}, "alice"),
            ([[1.0, 1.0]], {"collection": "c", "item_id": "b"}, "alice"),
            ([[1.0, 0.2]], {"collection": "c", "item_id": "q", "similar_k": "5"}, "alice"),
            ([[1.0, 0.2]], {"collection": "c", "similar_k": "5"}, "bob"),
        )
    finally:
        await processor.stop()
    assert first.status is Status.SUCCEEDED and first.similar is None
    assert [m["id"] for m in third.similar] == ["a", "b"]
    assert third.similar[0]["score"] > third.similar[1]["score"]
    assert json.loads(third.similar[0]["metadata"]) == {}
    stored = publisher.collections.spaces["alice"]["c"][1]
    assert set(stored) == {"a", "b", "q"} and np.allclose(stored["q"][0], [2.0, 0.4])
    assert other.status is Status.SUCCEEDED and other.similar == []  # bob's namespace is empty


@pytest.mark.parametrize(
    ("x", "parameters", "code"),
    [
        (
            [[1.0, 0.0], [0.0, 1.0]],
            {"collection": "c", "item_id": "a"},
            "INVALID_REQUEST",
        ),  # two items
        (
            [[1.0, 0.0]],
            {"collection": "c", "similar_k": "many"},
            "INVALID_REQUEST",
        ),  # Kafka-direct, unchecked
        ([[1.0, 0.0]], {"item_id": "a"}, "INVALID_REQUEST"),
        ([[1.0, 0.0]], {"collection": "c", "item_id": "a/b"}, "INVALID_REQUEST"),
        ([[0.0, 0.0]], {"collection": "c", "item_id": "zero"}, "INVALID_REQUEST"),
        ([[1.0, 0.0]], {"collection": "three", "item_id": "a"}, "COLLECTION_DIMENSION_MISMATCH"),
    ],
)
async def test_what_cannot_be_served_fails_the_request_alone(
    publisher, codec, x, parameters, code
) -> None:
    await publisher.collections.put("alice", "three", "first", [1.0, 0.0, 0.0])
    processor = make(FakeModel(), publisher, codec)
    await processor.start()
    try:
        failed, fine = await answer(
            processor, publisher, codec, (x, parameters, "alice"), ([[3.0, 4.0]], {}, "alice")
        )
    finally:
        await processor.stop()
    assert failed.status is Status.FAILED and failed.error.code == code and failed.outputs == []
    assert fine.status is Status.SUCCEEDED
