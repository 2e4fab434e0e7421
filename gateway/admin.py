"""Admin endpoints: per task and priority, consumer lag, throughput over the last minute, latency
percentiles and live workers; and purging old results. Admins only."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from streaminfer.schemas import keys
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import SchemaError
from streaminfer.schemas.records import InferenceResult
from streaminfer.schemas.topics import PRIORITIES

from .apikeys import Principal
from .errors import Forbidden
from .routes import Caller, service

router = APIRouter(prefix="/admin", tags=["admin"])


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("admin only")


@router.get("/stats")
async def stats(request: Request, principal: Caller) -> dict:
    """Per task and priority: consumer lag, results in the last minute (throughput), their
    end-to-end latency percentiles (ms), and the live workers."""
    require_admin(principal)
    svc = service(request)
    redis = svc.store.redis
    now_ms = int(time.time() * 1000)
    workers = await svc.live_workers()
    tasks = {}
    for task in sorted(svc.configs):
        per_priority = {}
        for priority in PRIORITIES:
            level = priority.topic_suffix
            members = await redis.zrangebyscore(keys.latency_key(svc.prefix, task, level), now_ms - 60_000, "+inf")
            latencies = np.array([float(m.rsplit(b":", 1)[1]) for m in members]) if members else np.array([])
            per_priority[level] = {
                "lag": svc.lag.lag.get((task, priority), 0) if svc.lag is not None else None,
                "throughput_per_s": round(len(latencies) / 60.0, 3),
                "latency_ms": {f"p{q}": round(float(np.percentile(latencies, q)), 1) for q in (50, 95, 99)}
                if len(latencies) else None,
            }
        tasks[task] = {"priorities": per_priority,
                       "live_workers": sorted(w for w, served in workers.items() if task in served)}
    body = {"tasks": tasks, "workers": len(workers), "at": now_ms}
    if (breakers := getattr(request.app.state, "breakers", None)) is not None:
        body["circuits"] = breakers.describe()
    return body


@router.post("/cleanup")
async def cleanup(request: Request, principal: Caller,
                  older_than_s: Annotated[float, Query(ge=0, le=10 * 365 * 86400,
                                                       description="purge results completed before")] = 3600,
                  limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> dict:
    """Purge stored results (and their status) completed more than ``older_than_s`` ago; at most
    ``limit`` per call. Results also expire by themselves after the result TTL."""
    require_admin(principal)
    svc = service(request)
    redis = svc.store.redis
    codec = AvroCodec()
    cutoff = int(time.time() * 1000 - older_than_s * 1000)
    scanned = purged = 0
    async for key in redis.scan_iter(match=keys.result_key(svc.prefix, "*"), count=500):
        if scanned >= limit:
            break
        scanned += 1
        avro = await redis.hget(key, keys.RESULT_FIELD_AVRO)
        try:
            result = codec.decode(avro, InferenceResult) if avro else None
        except SchemaError:
            result = None
        if result is None or result.completed_at < cutoff:
            request_id = key.decode().rsplit(":", 1)[1]
            purged += await redis.delete(key, keys.status_key(svc.prefix, request_id))
    return {"scanned": scanned, "purged_keys": purged, "older_than_s": older_than_s}
