"""The collection store's bounds on the real Redis (schemas/collections.py): a budget of items x
dimension per collection, a catch-up read in pages, and tombstones capped with a rebuild for a
process that fell behind the trim point. Two CollectionStores on one Redis stand for two
processes."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from streaminfer.schemas import collections as module
from streaminfer.schemas import keys
from streaminfer.schemas.collections import CollectionError, CollectionStore, max_items

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(redis_server):
    client = Redis.from_url(redis_server)
    yield client
    await client.aclose()


def test_the_item_limit_shrinks_with_the_dimension() -> None:
    assert max_items(384) == 1_000_000 and max_items(4096) == 93_750
    assert max_items(4096) * 4096 * 4 <= 1.6e9, "at most 1.5 GB of float32 per collection"


async def test_a_collection_holds_at_most_its_float_budget(redis, monkeypatch) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = CollectionStore(redis, prefix)
    monkeypatch.setattr(module, "MAX_FLOATS", 10)
    await store.put("alice", "wide", "a", [1.0] * 4)
    await store.put("alice", "wide", "b", [1.0] * 4)
    await store.put("alice", "wide", "a", [2.0] * 4)  # a replacement is no new item
    with pytest.raises(CollectionError) as caught:
        await store.put("alice", "wide", "c", [1.0] * 4)  # 3 x 4 = 12 floats > 10
    assert caught.value.code == "COLLECTION_LIMIT_EXCEEDED"
    assert "2 items per collection of 4-d vectors" in caught.value.message
    for i in range(5):  # 5 x 2 = 10: a narrower collection holds more
        await store.put("alice", "narrow", f"i{i}", [1.0, float(i)])
    with pytest.raises(CollectionError):
        await store.put("alice", "narrow", "i5", [1.0, 5.0])
    assert {c["name"]: c["count"] for c in await store.list("alice")} == {"wide": 2, "narrow": 5}


async def test_a_catch_up_reads_the_changelog_in_pages(redis, monkeypatch) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    writer, reader = CollectionStore(redis, prefix), CollectionStore(redis, prefix)
    monkeypatch.setattr(module, "PAGE_FLOATS", 6)  # 3 items of 2-d per page
    monkeypatch.setattr(module, "MIN_PAGE_ITEMS", 1)
    for i in range(20):
        await writer.put(None, "c", f"i{i}", [1.0, i / 20])
    pages: list[int] = []
    read = redis.zrangebyscore

    async def counted(*args, **kwargs):
        found = await read(*args, **kwargs)
        if kwargs.get("num") is not None:
            pages.append(len(found))
        return found

    monkeypatch.setattr(redis, "zrangebyscore", counted)
    found = await reader.search(None, "c", [1.0, 1.0], 100)
    assert (
        sorted(m.id for m in found) == sorted(f"i{i}" for i in range(20)) and found[0].id == "i19"
    )
    assert max(pages) == 3 and sum(pages) == 20 and len(pages) == 7, pages
    pages.clear()
    await writer.put(None, "c", "i0", [-1.0, 0.0])  # then only what changed, in one page
    await writer.delete(None, "c", "i1")
    found = await reader.search(None, "c", [-1.0, 0.0], 1)
    assert found[0].id == "i0" and pages == [1]
    assert "i1" not in {m.id for m in await reader.search(None, "c", [1.0, 1.0], 100)}


async def test_tombstones_are_capped_and_a_reader_behind_the_trim_point_rebuilds(
    redis, monkeypatch
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(module, "MAX_TOMBSTONES", 5)
    writer, behind, current = (CollectionStore(redis, prefix) for _ in range(3))
    for i in range(30):
        await writer.put(None, "c", f"i{i}", [1.0, float(i)])
    assert len(await behind.search(None, "c", [1.0, 0.0], 100)) == 30
    stale = behind._cached[("", "c")].index
    for i in range(10):
        await writer.delete(None, "c", f"i{i}")
    await current.search(None, "c", [1.0, 0.0], 1)  # up to date after the first 10 deletes
    kept = current._cached[("", "c")].index
    for i in range(10, 13):
        await writer.delete(None, "c", f"i{i}")
    deleted, trimmed = keys.collection_tombstone_keys(prefix, None, "c")
    _, changes, _ = keys.collection_keys(prefix, None, "c")
    assert await redis.zcard(deleted) == 5, "tombstones capped"
    assert await redis.zcard(changes) == 17, "the changelog holds live items only"
    assert int(await redis.get(trimmed)) > 0
    for store in (behind, current):
        found = {m.id for m in await store.search(None, "c", [1.0, 0.0], 100)}
        assert found == {f"i{i}" for i in range(13, 30)}, "no deleted item comes back"
    assert current._cached[("", "c")].index is kept, (
        "a reader within the tombstones just applies them"
    )
    assert behind._cached[("", "c")].index is not stale, "a reader behind the trim point rebuilt"
    await writer.put(None, "c", "i3", [1.0, 3.0])  # a deleted id written again is live again
    assert await redis.zscore(deleted, "i3") is None
    assert "i3" in {m.id for m in await behind.search(None, "c", [1.0, 3.0], 100)}
