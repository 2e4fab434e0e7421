"""Routes of collections (SPEC §9 "Collections and similar items"): thin adapters over
``schemas.collections.CollectionStore``, the storage the workers share. A caller sees only the
collections of its own client id; another client's collection is 404 COLLECTION_NOT_FOUND,
exactly as one that does not exist. With ``text`` instead of ``embedding`` the gateway embeds it
first: a ``text-embedding`` request through the normal path (Kafka, a worker), awaited."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from streaminfer.schemas.collections import (
    ITEM_ID_PATTERN,
    MAX_DIMENSION,
    MAX_K,
    MAX_METADATA_BYTES,
    NAME_PATTERN,
    CollectionStore,
)

from .apikeys import Principal
from .auth import ANONYMOUS, require
from .dependencies import Caller, service
from .errors import InvalidRequest, collection_errors

router = APIRouter(tags=["collections"])


def _schema_pattern(pattern: re.Pattern) -> str:
    """The pattern in the OpenAPI document's dialect (ECMA 262 has no ``\\Z``)."""
    return pattern.pattern.replace("\\Z", "$")


Name = Annotated[
    str, Path(pattern=_schema_pattern(NAME_PATTERN), description="the collection's name")
]
ItemId = Annotated[str, Path(pattern=_schema_pattern(ITEM_ID_PATTERN), description="the item's id")]
FLOAT32_MAX = 3.4028234e38
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"
Scalar = str | float | bool | None
"""A metadata value: flat, so that filters compare values."""


class _TextOrEmbedding(BaseModel):
    # exactly one of the two: the validator says so, and the schema too (oneOf), so generated and
    # hand-written clients see it; SkipJsonSchema keeps "null" out of the documented types
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["embedding"]}]}
    )

    # not blank: a character that Python's str.strip keeps (ECMA's \s, \x1c-\x1f and \x85 it drops)
    text: str | SkipJsonSchema[None] = Field(
        None,
        pattern=NOT_BLANK,
        json_schema_extra={"pattern": NOT_BLANK},
        description="embedded by the text-embedding task first",
    )
    embedding: (
        list[Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]] | SkipJsonSchema[None]
    ) = Field(
        None,
        min_length=1,
        max_length=MAX_DIMENSION,
        description="the vector itself: finite, not all zero",
        json_schema_extra={"contains": {"not": {"const": 0}}},
    )

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.embedding is None):
            raise ValueError("give exactly one of text and embedding")
        return self


class ItemBody(_TextOrEmbedding):
    """Body of ``PUT /v1/collections/{name}/items/{id}``."""

    metadata: dict[str, Scalar] | SkipJsonSchema[None] = Field(
        None,
        description=f"a flat JSON object, at most {MAX_METADATA_BYTES} bytes",
        json_schema_extra={"maxProperties": 32},
    )


class SearchBody(_TextOrEmbedding):
    """Body of ``POST /v1/collections/{name}/search``."""

    k: int = Field(10, ge=1, description=f"how many matches; at most {MAX_K} are returned")
    filter: dict[str, Scalar] | SkipJsonSchema[None] = Field(
        None, description="metadata keys that must equal these values"
    )


class Stored(BaseModel):
    collection: str
    id: str
    dimension: int


class Item(BaseModel):
    id: str
    embedding: list[float]
    metadata: dict[str, Any]


class MatchBody(BaseModel):
    id: str
    score: float = Field(..., description="cosine similarity, -1 to 1")
    metadata: dict[str, Any]


class Matches(BaseModel):
    matches: list[MatchBody] = Field(..., description="best first")


class CollectionInfo(BaseModel):
    name: str
    count: int
    dimension: int


class Collections(BaseModel):
    collections: list[CollectionInfo]


class Deleted(BaseModel):
    collection: str
    id: str
    status: str = "deleted"


def collections(request: Request) -> CollectionStore:
    return request.app.state.collections


Store = Annotated[CollectionStore, Depends(collections)]


def _owner(principal: Principal) -> str | None:
    """The namespace: the caller's client id (None, the anonymous one, with auth disabled),
    the same ``client_id`` the gateway puts on the caller's inference requests."""
    return None if principal is ANONYMOUS else principal.client_id


async def _vector(request: Request, body: _TextOrEmbedding, principal: Principal) -> list[float]:
    if body.embedding is not None:
        return body.embedding
    if not body.text or not body.text.strip():
        raise InvalidRequest("text is empty")
    require(principal, "inference:submit")
    # JSON may carry lone surrogates ("\ud800"), which no text model takes: U+FFFD instead
    text = body.text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return await service(request).embed(text, _owner(principal))


@router.get("/v1/collections", response_model=Collections, summary="The caller's collections")
async def list_collections(principal: Caller, store: Store) -> dict:
    """The caller's collections, with how many items each holds and their dimension."""
    require(principal, "inference:read")
    with collection_errors():
        return {"collections": await store.list(_owner(principal))}


@router.put(
    "/v1/collections/{name}/items/{item_id}",
    response_model=Stored,
    summary="Insert or replace an item",
)
async def put_item(
    name: Name, item_id: ItemId, body: ItemBody, request: Request, principal: Caller, store: Store
) -> dict:
    """Store the item's vector (given, or the embedding of ``text``) and metadata under its id,
    replacing what was there; the first item creates the collection and fixes its dimension."""
    require(principal, "inference:submit")
    with collection_errors():
        vector = await _vector(request, body, principal)
        dimension = await store.put(_owner(principal), name, item_id, vector, body.metadata)
    return {"collection": name, "id": item_id, "dimension": dimension}


@router.get("/v1/collections/{name}/items/{item_id}", response_model=Item, summary="Read an item")
async def get_item(name: Name, item_id: ItemId, principal: Caller, store: Store) -> dict:
    """The item's vector and metadata; 404 ITEM_NOT_FOUND or COLLECTION_NOT_FOUND."""
    require(principal, "inference:read")
    with collection_errors():
        return await store.get(_owner(principal), name, item_id)


@router.delete(
    "/v1/collections/{name}/items/{item_id}", response_model=Deleted, summary="Delete an item"
)
async def delete_item(name: Name, item_id: ItemId, principal: Caller, store: Store) -> dict:
    """Remove the item; searches of every process stop finding it at once."""
    require(principal, "inference:submit")
    with collection_errors():
        await store.delete(_owner(principal), name, item_id)
    return {"collection": name, "id": item_id, "status": "deleted"}


@router.post("/v1/collections/{name}/search", response_model=Matches, summary="Nearest items")
async def search(
    name: Name, body: SearchBody, request: Request, principal: Caller, store: Store
) -> dict:
    """The ``k`` items nearest to the vector (given, or the embedding of ``text``) by cosine,
    best first; ``filter``: metadata keys that must equal the given values."""
    require(principal, "inference:read")
    with collection_errors():
        await store.dimension(_owner(principal), name)  # 404 before spending a model call
        vector = await _vector(request, body, principal)
        found = await store.search(_owner(principal), name, vector, body.k, where=body.filter)
    return {"matches": [m.to_dict() for m in found]}
