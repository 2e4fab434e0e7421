"""Collections through the real stack (broker, Redis, a worker and a gateway as processes, API
keys on): embedding requests store items and get their neighbours from the stream; the routes
put, read, search and delete; items the gateway writes are found by the worker's searches (one
storage for every process); another client sees none of it."""

from __future__ import annotations

import math
import uuid

import httpx
import pytest
from helpers.keys import create_api_key

pytestmark = pytest.mark.integration

TASK = "text-embedding"


@pytest.fixture(scope="module")
def authed_stack(kafka_server, redis_server, model_repository):
    """One stack for the module (its tests name their own requests, items and collections)."""
    from conftest import serving

    yield from serving(
        kafka_server,
        redis_server,
        model_repository,
        STREAMINFER_AUTH="apikey",
        STREAMINFER_TASKS=TASK,
    )


@pytest.fixture
async def authed(authed_stack, redis_server):
    stack = authed_stack
    keys = {
        c: {"X-API-Key": await create_api_key(redis_server, stack.prefix, c)}
        for c in ("alice", "bob")
    }
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        yield client, keys


async def embed(client: httpx.AsyncClient, key: dict, text: str, **parameters) -> dict:
    response = await client.post(
        f"/v1/infer/{TASK}?wait=30",
        headers=key,
        json={"inputs": {"text": text}, "parameters": parameters},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_stream_routes_sharing_and_ownership(authed) -> None:
    client, keys = authed
    alice, bob = keys["alice"], keys["bob"]
    name = f"songs-{uuid.uuid4().hex[:6]}"

    # the stream path: two requests store their embeddings; a third gets them back, not itself
    first = await embed(
        client, alice, "Kafka is a distributed event log", collection=name, item_id="log"
    )
    assert first["status"] == "succeeded" and "similar" not in first["outputs"]
    await embed(client, alice, "Bananas are a yellow fruit", collection=name, item_id="banana")
    third = await embed(
        client,
        alice,
        "an event log that is distributed",
        collection=name,
        item_id="query",
        similar_k=5,
    )
    similar = third["outputs"]["similar"]
    assert [m["id"] for m in similar] == ["log", "banana"]  # best first, itself excluded
    assert similar[0]["score"] > similar[1]["score"] and all(m["metadata"] == {} for m in similar)
    assert len(third["outputs"]["embedding"]) == 384

    listed = (await client.get("/v1/collections", headers=alice)).json()["collections"]
    assert {"name": name, "count": 3, "dimension": 384} in listed

    # the routes: the gateway embeds text through a worker and writes; the worker's search sees it
    put = await client.put(
        f"/v1/collections/{name}/items/cat",
        headers=alice,
        json={"text": "cats purr and sleep all day", "metadata": {"kind": "animal"}},
    )
    assert put.status_code == 200, put.text
    assert put.json() == {"collection": name, "id": "cat", "dimension": 384}
    found = await embed(client, alice, "a sleepy purring cat", collection=name, similar_k=1)
    assert found["outputs"]["similar"][0]["id"] == "cat"
    assert found["outputs"]["similar"][0]["metadata"] == {"kind": "animal"}

    item = (await client.get(f"/v1/collections/{name}/items/cat", headers=alice)).json()
    assert item["id"] == "cat" and item["metadata"] == {"kind": "animal"}
    assert math.isclose(sum(x * x for x in item["embedding"]), 1.0, rel_tol=1e-3)
    search = await client.post(
        f"/v1/collections/{name}/search",
        headers=alice,
        json={"embedding": item["embedding"], "k": 2},
    )
    assert search.status_code == 200, search.text
    matches = search.json()["matches"]
    assert matches[0]["id"] == "cat" and matches[0]["score"] == pytest.approx(1.0, abs=1e-4)
    filtered = await client.post(
        f"/v1/collections/{name}/search",
        headers=alice,
        json={"text": "event log", "k": 10, "filter": {"kind": "animal"}},
    )
    assert [m["id"] for m in filtered.json()["matches"]] == ["cat"]

    # another client: no collection of alice's exists for bob (404, as for none at all)
    assert (await client.get("/v1/collections", headers=bob)).json() == {"collections": []}
    for call in (
        client.get(f"/v1/collections/{name}/items/cat", headers=bob),
        client.post(
            f"/v1/collections/{name}/search",
            headers=bob,
            json={"embedding": item["embedding"], "k": 1},
        ),
        client.delete(f"/v1/collections/{name}/items/cat", headers=bob),
    ):
        response = await call
        assert (
            response.status_code == 404 and response.json()["error_code"] == "COLLECTION_NOT_FOUND"
        )
    # bob's stream requests name his own (empty) namespace: alice's items are not his neighbours
    theirs = await embed(client, bob, "a sleepy purring cat", collection=name, similar_k=3)
    assert theirs["outputs"]["similar"] == []

    deleted = await client.delete(f"/v1/collections/{name}/items/cat", headers=alice)
    assert deleted.json() == {"collection": name, "id": "cat", "status": "deleted"}
    gone = await client.get(f"/v1/collections/{name}/items/cat", headers=alice)
    assert gone.status_code == 404 and gone.json()["error_code"] == "ITEM_NOT_FOUND"
    again = await embed(client, alice, "a sleepy purring cat", collection=name, similar_k=10)
    assert "cat" not in {
        m["id"] for m in again["outputs"]["similar"]
    }  # the worker's index caught up


async def test_hostile_collection_calls(authed) -> None:
    client, keys = authed
    alice = keys["alice"]
    name = f"vecs-{uuid.uuid4().hex[:6]}"
    ok = await client.put(
        f"/v1/collections/{name}/items/a", headers=alice, json={"embedding": [1.0, 0.0, 0.0]}
    )
    assert ok.status_code == 200, ok.text

    async def refused(
        method: str, path: str, body: dict | None, code: str, status: int = 422
    ) -> None:
        response = await client.request(method, path, headers=alice, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert response.json()["error_code"] == code

    items = f"/v1/collections/{name}/items"
    await refused(
        "PUT", f"{items}/b", {"embedding": [1.0, 0.0]}, "COLLECTION_DIMENSION_MISMATCH", 409
    )
    await refused("PUT", f"{items}/b", {"embedding": [0.0, 0.0, 0.0]}, "INVALID_REQUEST")
    await refused("PUT", f"{items}/b", {"embedding": []}, "INVALID_REQUEST")
    await refused(
        "PUT", f"{items}/b", {"embedding": [1.0, 1e39, 0.0]}, "INVALID_REQUEST"
    )  # inf in float32
    await refused(
        "PUT",
        f"{items}/b",
        {"embedding": [1.0, 0.0, 0.0], "metadata": {"x": "y" * 5000}},
        "INVALID_REQUEST",
    )
    await refused(
        "PUT",
        f"{items}/b",
        {"embedding": [1.0, 0.0, 0.0], "metadata": {"x": {"nested": 1}}},
        "INVALID_REQUEST",
    )
    await refused("PUT", f"{items}/b", {"embedding": [1.0], "text": "both"}, "INVALID_REQUEST")
    await refused("PUT", f"{items}/{'x' * 257}", {"embedding": [1.0, 0.0, 0.0]}, "INVALID_REQUEST")
    await refused(
        "PUT", "/v1/collections/Bad.Name/items/a", {"embedding": [1.0]}, "INVALID_REQUEST"
    )
    await refused(
        "POST",
        f"/v1/collections/{name}/search",
        {"embedding": [1.0, 0.0, 0.0], "k": 0},
        "INVALID_REQUEST",
    )
    await refused(
        "POST",
        "/v1/collections/nothing-here/search",
        {"embedding": [1.0], "k": 1},
        "COLLECTION_NOT_FOUND",
        404,
    )
    await refused("GET", f"{items}/missing", None, "ITEM_NOT_FOUND", 404)
    huge = await client.post(
        f"/v1/collections/{name}/search",
        headers=alice,
        json={"embedding": [1.0, 0.1, 0.0], "k": 10**9},
    )
    assert huge.status_code == 200 and [m["id"] for m in huge.json()["matches"]] == ["a"]  # capped

    # the stream path checks its parameters too: at the gateway (422) ...
    for parameters in (
        {"item_id": "x"},
        {"collection": name},
        {"collection": name, "similar_k": "-1"},
        {"collection": "No Spaces", "item_id": "x"},
    ):
        response = await client.post(
            f"/v1/infer/{TASK}",
            headers=alice,
            json={"inputs": {"text": "hi"}, "parameters": parameters},
        )
        assert response.status_code == 422, (parameters, response.text)
    # ... and in the worker: a 384-d embedding cannot join a 3-d collection; the request fails alone
    failed = await embed(client, alice, "hello", collection=name, item_id="b")
    assert (
        failed["status"] == "failed" and failed["error"]["code"] == "COLLECTION_DIMENSION_MISMATCH"
    )


async def test_the_redis_store_across_two_processes_indexes(redis_server, monkeypatch) -> None:
    """Two CollectionStores on one real Redis stand for two processes: each index catches up
    with the other's puts, replacements and deletes; the Lua scripts hold the dimension and
    the limits under concurrent writers."""
    import asyncio

    from redis.asyncio import Redis

    from streaminfer.schemas import collections as module
    from streaminfer.schemas.collections import CollectionError, CollectionStore

    prefix = f"t{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_server)
    gateway, worker = CollectionStore(redis, prefix), CollectionStore(redis, prefix)
    try:
        await gateway.put("alice", "c", "a", [1.0, 0.0], {"n": 1})
        await gateway.put("alice", "c", "b", [0.0, 1.0])
        assert [m.id for m in await worker.search("alice", "c", [1.0, 0.1], 5)] == ["a", "b"]
        await gateway.put("alice", "c", "a", [0.0, -1.0], {"n": 2})  # replaced
        await gateway.delete("alice", "c", "b")
        found = await worker.search("alice", "c", [1.0, 0.1], 5)
        assert [(m.id, m.metadata) for m in found] == [("a", {"n": 2})] and found[0].score < 0
        assert await worker.get("alice", "c", "a") == {
            "id": "a",
            "embedding": [0.0, -1.0],
            "metadata": {"n": 2},
        }
        assert await worker.list("alice") == [{"name": "c", "dimension": 2, "count": 1}]
        assert await worker.list("bob") == [] and await worker.list(None) == []
        with pytest.raises(CollectionError) as caught:
            await worker.search("bob", "c", [1.0, 0.0], 1)
        assert caught.value.code == "COLLECTION_NOT_FOUND"

        # concurrent first writes of two dimensions: one wins, the other is refused
        outcomes = await asyncio.gather(
            gateway.put("alice", "race", "x", [1.0] * 3),
            worker.put("alice", "race", "y", [1.0] * 4),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, CollectionError)]
        assert len(refused) == 1 and refused[0].code == "COLLECTION_DIMENSION_MISMATCH"

        # a process past its indexed items drops the least recently searched index, reloads it later
        monkeypatch.setattr(module, "MAX_CACHED_ITEMS", 1)
        await gateway.put("alice", "d", "z", [1.0, 1.0])
        await worker.search("alice", "c", [1.0, 0.0], 1)
        await worker.search("alice", "d", [1.0, 0.0], 1)
        assert list(worker._cached) == [("alice", "d")]
        assert [m.id for m in await worker.search("alice", "c", [0.0, -1.0], 1)] == ["a"]
        assert list(worker._cached) == [("alice", "c")]

        monkeypatch.setattr(module, "MAX_ITEMS", 2)
        monkeypatch.setattr(module, "MAX_COLLECTIONS", 2)
        await gateway.put("alice", "c", "b", [1.0, 1.0])
        await gateway.put("alice", "c", "a", [1.0, 1.0])  # a replacement is no new item
        for call in (
            gateway.put("alice", "c", "third", [1.0, 1.0]),
            gateway.put("alice", "new", "a", [1.0]),
        ):
            with pytest.raises(CollectionError) as caught:
                await call
            assert caught.value.code == "COLLECTION_LIMIT_EXCEEDED"
    finally:
        await redis.aclose()
