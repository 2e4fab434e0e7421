"""Collections of vectors with ids and metadata, shared by every gateway and worker process.

Storage: Redis is the truth, and each process keeps an in-memory :class:`VectorIndex` per
collection it has searched, brought up to date before every search from a compacted changelog.
Why Redis and not an index rebuilt from a compacted Kafka topic: gateway and worker already hold
a Redis connection and read results from it; an upsert is visible to the next search of any
process at once (no consumer lag, no topic per collection to create), and ``GET`` of an item is
one ``HGET``. Per collection (keys in ``schemas.keys``):

- ``...:items`` hash: item id -> its metadata as compact JSON, a newline, its float32 vector;
- ``...:seq`` a counter, and ``...:changes`` a sorted set: item id -> the counter's value at its
  last write. It is the changelog, compacted by construction (one entry per live id), so a
  process catches up with ``ZRANGEBYSCORE (last seq`` pages and an ``HMGET`` of each page's ids
  however long it was away, never holding more than a page (``PAGE_FLOATS``) beside its index;
- ``...:deleted`` a sorted set of tombstones (id -> the counter's value at its delete), capped
  at ``MAX_TOMBSTONES``: the oldest are trimmed, and ``...:trimmed`` keeps the highest sequence
  number trimmed. A process whose index is older than that has missed deletes it can no longer
  see: it rebuilds its index from the items (paged, as a first load).

Writes run as Lua scripts, so the counter, the item and its changelog entry move together and
the dimension check and the limits hold under concurrent writers. The caller's collections
(name -> dimension) are a hash per namespace: the client id of the authenticated caller
(``InferenceRequest.client_id`` on the stream), so a client sees only its own collections; with
auth disabled every caller is the one anonymous namespace. Admins get no view of other
clients' collections either (nothing here needs one; dropping a client's keys is an operator's
``redis-cli`` job).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import keys
from .vectors import Match, VectorIndex

__all__ = [
    "ITEM_ID_PATTERN",
    "MAX_COLLECTIONS",
    "MAX_DIMENSION",
    "MAX_FLOATS",
    "MAX_ITEMS",
    "MAX_K",
    "MAX_METADATA_BYTES",
    "NAME_PATTERN",
    "CollectionError",
    "CollectionParameters",
    "CollectionStore",
    "Match",
    "check_embedding",
    "check_item_id",
    "check_k",
    "check_metadata",
    "check_name",
    "collection_parameters",
]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
"""Collection names: like task names, digits and ``_`` allowed (``\\Z``: no trailing newline)."""
ITEM_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@=+-]{0,255}\Z")
"""Item ids: up to 256 characters, no ``/`` (they are a path segment) and no spaces."""
MAX_DIMENSION = 4096
MAX_METADATA_BYTES = 4096
"""Of the metadata as compact JSON: a flat object of strings, numbers, booleans and nulls."""
MAX_K = 100
"""A larger k is capped to this, not refused (``similar_k`` and ``search`` alike)."""
MAX_ITEMS = 1_000_000
"""Per collection: each process that searches it holds it in memory."""
MAX_FLOATS = 384_000_000
"""Per collection, items x dimension (1.5 GB of float32: 1,000,000 items at 384-d, 93,750 at
4096-d): what one process holds in memory for it. The item limit is the smaller of the two."""
MAX_TOMBSTONES = 100_000
"""Deleted ids kept per collection for processes to catch up with; past it the oldest go, and
a process that had not seen them rebuilds its index."""
PAGE_FLOATS = 4_000_000
"""A catch-up reads the changelog in pages of this many floats (16 MB; 10,416 items at 384-d)."""
MIN_PAGE_ITEMS = 100
MAX_COLLECTIONS = 100
"""Per client."""
MAX_CACHED_ITEMS = 2_000_000
"""Items one process keeps indexed (about 3 GB at 384-d); past it, or past MAX_CACHED_FLOATS,
the collections searched least recently are dropped and loaded again at their next search."""
MAX_CACHED_FLOATS = 768_000_000
"""Floats (items x dimension) one process keeps indexed: 3 GB of float32."""


def max_items(dimension: int) -> int:
    """How many items a collection of ``dimension`` may hold: MAX_ITEMS, or fewer past
    MAX_FLOATS."""
    return max(1, min(MAX_ITEMS, MAX_FLOATS // max(1, dimension)))


def page_items(dimension: int) -> int:
    return max(MIN_PAGE_ITEMS, PAGE_FLOATS // max(1, dimension))


class CollectionError(Exception):
    """A refused collection call; ``code``: INVALID_REQUEST, COLLECTION_NOT_FOUND,
    ITEM_NOT_FOUND, COLLECTION_DIMENSION_MISMATCH or COLLECTION_LIMIT_EXCEEDED."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def _invalid(message: str) -> CollectionError:
    return CollectionError("INVALID_REQUEST", message)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _invalid(f"collection name must match {NAME_PATTERN.pattern}")
    return name


def check_item_id(item_id: str) -> str:
    if not isinstance(item_id, str) or not ITEM_ID_PATTERN.match(item_id):
        raise _invalid(f"item id must match {ITEM_ID_PATTERN.pattern}")
    return item_id


def check_k(k: Any) -> int:
    """A positive integer (an integral string on the stream), capped to MAX_K."""
    try:
        value = int(k) if not isinstance(k, bool | float) else None
    except (TypeError, ValueError):
        value = None
    if value is None or value <= 0:
        raise _invalid(f"k must be a positive integer, not {str(k)[:40]!r}")
    return min(value, MAX_K)


def check_embedding(vector: Any) -> np.ndarray:
    """A flat, finite, non-zero vector of 1..MAX_DIMENSION numbers, as float32."""
    try:
        v = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _invalid("embedding must be a list of numbers") from exc
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or not 0 < v.size <= MAX_DIMENSION:
        raise _invalid(f"embedding must be a flat list of 1 to {MAX_DIMENSION} numbers")
    if not np.all(np.isfinite(v)) or np.any(np.abs(v) > np.finfo(np.float32).max):
        raise _invalid("embedding holds NaN or infinite values (or values past float32)")
    if not np.any(v):
        raise _invalid("embedding is all zeros: it has no direction to compare")
    narrow = v.astype(np.float32)
    if not np.any(narrow):
        # every element below float32's range (e.g. [2.7e-56]): a direction all the same, which
        # cosine keeps when it is scaled up (found by the contract test: a valid body refused)
        narrow = (v / np.max(np.abs(v))).astype(np.float32)
    return narrow


def check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise _invalid("metadata must be a JSON object")
    for key, value in metadata.items():
        if value is not None and not isinstance(value, str | bool | int | float):
            raise _invalid(
                f"metadata value of {key[:40]!r} must be a string, number, boolean or null"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid(f"metadata value of {key[:40]!r} is not a finite number")
    if len(_dump(metadata)) > MAX_METADATA_BYTES:
        raise _invalid(f"metadata is over {MAX_METADATA_BYTES} bytes as JSON")
    return metadata


@dataclass(frozen=True, slots=True)
class CollectionParameters:
    """What an embedding request asks of collections (its ``parameters``): store its output
    under ``item_id`` and/or add the ``similar_k`` nearest items to its result."""

    collection: str
    item_id: str | None = None
    similar_k: int | None = None


def collection_parameters(parameters: dict[str, str]) -> CollectionParameters | None:
    """None when the request names no collection; INVALID_REQUEST when what it names is bad."""
    name, item_id, k = (parameters.get(p) for p in ("collection", "item_id", "similar_k"))
    if name is None:
        if item_id is not None or k is not None:
            raise _invalid("parameters item_id and similar_k need parameters.collection")
        return None
    if item_id is None and k is None:
        raise _invalid("parameters.collection needs item_id (store) or similar_k (search) with it")
    return CollectionParameters(
        check_name(name),
        None if item_id is None else check_item_id(item_id),
        None if k is None else check_k(k),
    )


def _dump(value: Any) -> bytes:
    # compact JSON holds no raw newline, so a newline can end it inside an item's value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _item_value(vector: np.ndarray, metadata: dict[str, Any]) -> bytes:
    return _dump(metadata) + b"\n" + vector.astype("<f4").tobytes()


def _item_of(value: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    head, _, body = value.partition(b"\n")
    return np.frombuffer(body, dtype="<f4").copy(), json.loads(head)


# KEYS: collections of the namespace, items, changes, seq, deleted. ARGV: name, id, value,
# dimension, the collection's entry, its item limit, MAX_COLLECTIONS.
_UPSERT = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry then
  local dimension = cjson.decode(entry)['dimension']
  if tonumber(dimension) ~= tonumber(ARGV[4]) then return {-1, dimension} end
else
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[7]) then return {-3, 0} end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[6]) then
  return {-2, 0}
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], seq, ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
return {seq, 0}
"""
# KEYS: items, changes, seq, deleted, trimmed. ARGV: id, MAX_TOMBSTONES.
_DELETE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[3]), ARGV[1])
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[2])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[4], over)
  redis.call('SET', KEYS[5], popped[#popped])
end
return 1
"""
# KEYS: seq, trimmed: where a catch-up ends, and the oldest point it can start from.
_POINTS = """
return {redis.call('GET', KEYS[1]) or '0', redis.call('GET', KEYS[2]) or '0'}
"""


class _Cached:
    __slots__ = ("index", "seq", "lock")

    def __init__(self, dimension: int) -> None:
        self.index = VectorIndex(dimension)
        self.seq = 0.0
        self.lock = asyncio.Lock()


class CollectionStore:
    """Collection calls over ``redis`` (a ``redis.asyncio`` client returning bytes), with this
    process's indexes. ``client_id`` None is the anonymous namespace (auth disabled)."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._cached: OrderedDict[tuple[str, str], _Cached] = OrderedDict()  # least recent first
        self._upsert = redis.register_script(_UPSERT)
        self._delete = redis.register_script(_DELETE)
        self._points = redis.register_script(_POINTS)

    def _keys(self, client_id: str | None, name: str) -> tuple[str, str, str, str, str]:
        return (
            keys.collections_key(self._prefix, client_id),
            *keys.collection_keys(self._prefix, client_id, name),
            keys.collection_tombstone_keys(self._prefix, client_id, name)[0],
        )

    async def dimension(self, client_id: str | None, name: str) -> int:
        """The collection's dimension; COLLECTION_NOT_FOUND unless it is the caller's."""
        entry = await self._redis.hget(
            keys.collections_key(self._prefix, client_id), check_name(name)
        )
        if entry is None:
            raise CollectionError("COLLECTION_NOT_FOUND", f"no collection {name!r}")
        return int(json.loads(entry)["dimension"])

    async def list(self, client_id: str | None) -> list[dict[str, Any]]:
        entries = await self._redis.hgetall(keys.collections_key(self._prefix, client_id))
        names = sorted(n.decode() for n in entries)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hlen(keys.collection_keys(self._prefix, client_id, name)[0])
            counts = await pipe.execute()
        return [
            {
                "name": name,
                "dimension": int(json.loads(entries[name.encode()])["dimension"]),
                "count": count,
            }
            for name, count in zip(names, counts, strict=True)
        ]

    async def put(
        self, client_id: str | None, name: str, item_id: str, embedding: Any, metadata: Any = None
    ) -> int:
        """Insert or replace an item (creating the collection with its dimension); returns the
        collection's dimension."""
        check_name(name)
        check_item_id(item_id)
        vector = check_embedding(embedding)
        metadata = check_metadata(metadata)
        entry = _dump({"dimension": int(vector.size), "created_at": _now_ms()})
        seq, found = await self._upsert(
            keys=self._keys(client_id, name),
            args=[
                name,
                item_id,
                _item_value(vector, metadata),
                vector.size,
                entry,
                max_items(vector.size),
                MAX_COLLECTIONS,
            ],
        )
        if seq == -1:
            raise CollectionError(
                "COLLECTION_DIMENSION_MISMATCH",
                f"collection {name!r} holds {int(found)}-d vectors, not {vector.size}-d",
                {"dimension": int(found)},
            )
        if seq in (-2, -3):
            what = (
                f"{max_items(vector.size)} items per collection of {vector.size}-d vectors "
                f"({MAX_FLOATS} floats, {MAX_ITEMS} items)"
                if seq == -2
                else f"{MAX_COLLECTIONS} collections"
            )
            raise CollectionError("COLLECTION_LIMIT_EXCEEDED", f"at most {what}")
        return int(vector.size)

    async def get(self, client_id: str | None, name: str, item_id: str) -> dict[str, Any]:
        await self.dimension(client_id, name)
        check_item_id(item_id)
        value = await self._redis.hget(
            keys.collection_keys(self._prefix, client_id, name)[0], item_id
        )
        if value is None:
            raise CollectionError("ITEM_NOT_FOUND", f"no item {item_id!r} in collection {name!r}")
        vector, metadata = _item_of(value)
        return {"id": item_id, "embedding": vector.tolist(), "metadata": metadata}

    async def delete(self, client_id: str | None, name: str, item_id: str) -> None:
        await self.dimension(client_id, name)
        check_item_id(item_id)
        if not await self._delete(
            keys=[
                *keys.collection_keys(self._prefix, client_id, name),
                *keys.collection_tombstone_keys(self._prefix, client_id, name),
            ],
            args=[item_id, MAX_TOMBSTONES],
        ):
            raise CollectionError("ITEM_NOT_FOUND", f"no item {item_id!r} in collection {name!r}")

    async def search(
        self,
        client_id: str | None,
        name: str,
        embedding: Any,
        k: Any,
        *,
        where: dict[str, Any] | None = None,
        exclude: str | None = None,
    ) -> list[Match]:
        """The caller's ``k`` nearest items by cosine (best first); COLLECTION_NOT_FOUND,
        COLLECTION_DIMENSION_MISMATCH and INVALID_REQUEST as for the routes."""
        k = check_k(k)
        where = check_metadata(where)
        vector = check_embedding(embedding)
        dimension = await self.dimension(client_id, name)
        if vector.size != dimension:
            raise CollectionError(
                "COLLECTION_DIMENSION_MISMATCH",
                f"collection {name!r} holds {dimension}-d vectors, not {vector.size}-d",
                {"dimension": dimension},
            )
        key = (client_id or "", name)
        cached = self._cached.get(key)
        if cached is None or cached.index.dimension != dimension:
            cached = self._cached[key] = _Cached(dimension)
        self._cached.move_to_end(key)
        async with cached.lock:  # no search while the index changes, and one catch-up at a time
            await self._catch_up(cached, client_id, name)
            self._evict(key)
            if len(cached.index) > 10_000 or where:  # a few ms of numpy: off the event loop
                return await asyncio.to_thread(
                    cached.index.search, vector, k, where=where, exclude=exclude
                )
            return cached.index.search(vector, k, where=where, exclude=exclude)

    def _evict(self, keep: tuple[str, str]) -> None:
        total = sum(len(c.index) for c in self._cached.values())
        floats = sum(len(c.index) * c.index.dimension for c in self._cached.values())
        for key in list(self._cached):
            if total <= MAX_CACHED_ITEMS and floats <= MAX_CACHED_FLOATS:
                break
            if key != keep and not self._cached[key].lock.locked():
                index = self._cached.pop(key).index
                total -= len(index)
                floats -= len(index) * index.dimension

    async def _catch_up(self, cached: _Cached, client_id: str | None, name: str) -> None:
        """Apply to this process's index every write up to the sequence number now, a page at a
        time; rebuild it when deletes it has not seen were trimmed."""
        items, changes, seq = keys.collection_keys(self._prefix, client_id, name)
        deleted, trimmed = keys.collection_tombstone_keys(self._prefix, client_id, name)
        now, floor = (float(v) for v in await self._points(keys=[seq, trimmed]))
        if now <= cached.seq:
            return
        if cached.seq < floor:  # deletes it never saw are gone: start again from the items
            cached.index = VectorIndex(cached.index.dimension)
            cached.seq = 0.0
        if cached.seq > 0:
            # NOTE: at most MAX_TOMBSTONES of them, a few bytes each: no paging needed
            for item_id in await self._redis.zrangebyscore(deleted, f"({cached.seq!r}", now):
                cached.index.remove(item_id.decode())
        page = page_items(cached.index.dimension)
        start = cached.seq
        while True:  # by score: each write has its own, so a page ends where the next begins
            changed = await self._redis.zrangebyscore(
                changes, f"({start!r}", now, start=0, num=page, withscores=True
            )
            if not changed:
                break
            ids = [item_id for item_id, _ in changed]
            values = await self._redis.hmget(items, ids)
            upserts = []
            for item_id, value in zip(ids, values, strict=True):
                if value is None:  # deleted since (or a tombstone of the older layout)
                    cached.index.remove(item_id.decode())
                else:
                    vector, metadata = _item_of(value)
                    upserts.append((item_id.decode(), vector, metadata))
            del values
            if len(upserts) > 1000:  # a first load: numpy and the graph build off the loop
                await asyncio.to_thread(cached.index.upsert_many, upserts)
            else:
                cached.index.upsert_many(upserts)
            start = changed[-1][1]
            if len(changed) < page:
                break
        cached.seq = now


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
