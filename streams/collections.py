"""The stream side of collections: a succeeded embedding request that names
``parameters.collection`` stores its embedding under ``parameters.item_id`` and, with
``parameters.similar_k``, gets the nearest items of the collection (itself excluded) in its
result's ``similar``. Runs in the :class:`OutcomeWriter` before the result is stored, so by the
time a client reads the result its item is searchable from every process; a write that runs
again (an outage) does the same again, harmlessly (the item is the same, ``similar`` is kept).

The namespace is the request's ``client_id``, the one the gateway set from the caller's
credentials (None with auth disabled), so it matches the caller's collections over HTTP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from streaminfer.schemas.collections import CollectionError, CollectionStore, collection_parameters
from streaminfer.schemas.records import DataType, Error, InferenceResult, Status

if TYPE_CHECKING:  # outcomes.py calls collect()
    from .outcomes import Outcome

logger = logging.getLogger(__name__)


def embedding_of(result: InferenceResult) -> np.ndarray:
    """The result's one embedding: its first FP32 output, of one row."""
    for tensor in result.outputs:
        if tensor.datatype is DataType.FP32:
            array = tensor.to_numpy()
            if array.ndim == 2 and array.shape[0] == 1:
                return array[0]
            if array.ndim == 1:
                return array
            raise CollectionError(
                "INVALID_REQUEST",
                f"collection parameters need a request of one item, not {array.shape[0]}",
            )
    raise CollectionError(
        "INVALID_REQUEST", "collection parameters need a task with an FP32 embedding output"
    )


async def collect(store: CollectionStore | None, outcomes: Sequence[Outcome]) -> None:
    """Store and search for the outcomes that ask it (their results not stored yet)."""
    for outcome in outcomes:
        result, request = outcome.result, outcome.request
        if (
            result is None
            or request is None
            or result.status is not Status.SUCCEEDED
            or store is None
        ):
            continue
        try:
            asked = collection_parameters(request.parameters)
            if asked is None:
                continue
            vector = embedding_of(result)
            if asked.similar_k is not None and result.similar is None:
                try:
                    found = await store.search(
                        request.client_id,
                        asked.collection,
                        vector,
                        asked.similar_k,
                        exclude=asked.item_id,
                    )
                except CollectionError as exc:
                    if exc.code != "COLLECTION_NOT_FOUND":
                        raise
                    found = []  # nothing stored yet: no neighbours
                result.similar = [
                    {"id": m.id, "score": m.score, "metadata": json.dumps(m.metadata)}
                    for m in found
                ]
            if asked.item_id is not None:
                await store.put(request.client_id, asked.collection, asked.item_id, vector)
        except CollectionError as exc:  # the request asked for what cannot be: it fails, alone
            logger.info("request %s: collection call refused: %s", result.request_id, exc.message)
            result.status = Status.FAILED
            result.outputs = []
            result.similar = None
            result.error = Error(exc.code, exc.message[:2000], False)
