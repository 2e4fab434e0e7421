"""JSON bodies the gateway answers with (SPEC §8 "Result JSON")."""

from __future__ import annotations

import json

from streaminfer.models.config import ModelConfig
from streaminfer.models.friendly import tensors_to_friendly
from streaminfer.schemas.keys import STATUS_FIELD, RequestState
from streaminfer.schemas.records import InferenceResult


def result_body(result: InferenceResult, config: ModelConfig | None) -> dict:
    outputs: dict = {}
    if result.outputs:
        arrays = {t.name: t.to_numpy() for t in result.outputs}
        outputs = (
            tensors_to_friendly(config, arrays)
            if config is not None
            else {name: array.tolist() for name, array in arrays.items()}
        )
    if result.similar is not None:  # parameters.similar_k (SPEC §9)
        outputs["similar"] = [
            {"id": m["id"], "score": m["score"], "metadata": json.loads(m["metadata"])}
            for m in result.similar
        ]
    return {
        "request_id": result.request_id,
        "task": result.task,
        "status": result.status.value.lower(),
        "model": {"name": result.model_name, "version": result.model_version},
        "outputs": outputs,
        "timings": {
            "queued_ms": result.timings.queued_ms,
            "inference_ms": result.timings.inference_ms,
            "total_ms": result.timings.total_ms,
            **_lookup_timings(result),
        },
        "batch_size": result.batch_size,
        "attempts": result.attempts,
        "error": None
        if result.error is None
        else {
            "code": result.error.code,
            "message": result.error.message,
            "retriable": result.error.retriable,
        },
    }


def _lookup_timings(result: InferenceResult) -> dict:
    """Feature lookup tasks: how long the lookup took and whether it came from the cache."""
    if result.timings.feature_source is None:
        return {}
    return {
        "feature_lookup_ms": result.timings.feature_lookup_ms,
        "feature_source": result.timings.feature_source,
    }


def pending_body(request_id: str, status: dict[str, str]) -> dict:
    # a result published but not yet readable here is still "running"; no state (or one no
    # writer writes) is "queued"
    state = RequestState.decode(status.get(STATUS_FIELD))
    running = state in (RequestState.RUNNING, RequestState.DONE)
    return {
        "request_id": request_id,
        "task": status.get("task"),
        "status": (RequestState.RUNNING if running else RequestState.QUEUED).value,
    }


def links(request_id: str) -> dict[str, str]:
    return {"result": f"/v1/results/{request_id}", "cancel": f"/v1/requests/{request_id}"}
