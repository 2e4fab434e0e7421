"""An in-memory stand-in for ``schemas.collections.CollectionStore`` (same calls, same checks
and error codes), for unit tests of the gateway routes and the worker's collection step."""

from __future__ import annotations

from streaminfer.schemas.collections import (
    CollectionError,
    check_embedding,
    check_item_id,
    check_k,
    check_metadata,
    check_name,
)
from streaminfer.schemas.vectors import VectorIndex


class MemoryCollections:
    """CollectionStore's calls over dicts: namespace -> name -> index and items."""

    def __init__(self) -> None:
        self.spaces: dict[str | None, dict[str, tuple[VectorIndex, dict]]] = {}

    def _of(self, client_id, name):
        found = self.spaces.get(client_id, {}).get(check_name(name))
        if found is None:
            raise CollectionError("COLLECTION_NOT_FOUND", f"no collection {name!r}")
        return found

    async def dimension(self, client_id, name):
        return self._of(client_id, name)[0].dimension

    async def list(self, client_id):
        return [
            {"name": n, "count": len(i), "dimension": i.dimension}
            for n, (i, _) in sorted(self.spaces.get(client_id, {}).items())
        ]

    async def put(self, client_id, name, item_id, embedding, metadata=None):
        check_name(name), check_item_id(item_id)
        vector, metadata = check_embedding(embedding), check_metadata(metadata)
        index, items = self.spaces.setdefault(client_id, {}).setdefault(
            name, (VectorIndex(vector.size), {})
        )
        if index.dimension != vector.size:
            raise CollectionError("COLLECTION_DIMENSION_MISMATCH", "wrong dimension")
        index.upsert(item_id, vector, metadata)
        items[item_id] = (vector, metadata)
        return vector.size

    async def get(self, client_id, name, item_id):
        _, items = self._of(client_id, name)
        if item_id not in items:
            raise CollectionError("ITEM_NOT_FOUND", "no item")
        return {
            "id": item_id,
            "embedding": items[item_id][0].tolist(),
            "metadata": items[item_id][1],
        }

    async def delete(self, client_id, name, item_id):
        index, items = self._of(client_id, name)
        if items.pop(item_id, None) is None:
            raise CollectionError("ITEM_NOT_FOUND", "no item")
        index.remove(item_id)

    async def search(self, client_id, name, embedding, k, *, where=None, exclude=None):
        k, where, vector = check_k(k), check_metadata(where), check_embedding(embedding)
        index, _ = self._of(client_id, name)
        if vector.size != index.dimension:
            raise CollectionError("COLLECTION_DIMENSION_MISMATCH", "wrong dimension")
        return index.search(vector, k, where=where, exclude=exclude)
