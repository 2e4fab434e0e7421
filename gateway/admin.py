"""Admin endpoints: per task and priority, consumer lag, throughput over the last minute, latency
percentiles and live workers; and purging old results. Admins only."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from streaminfer.schemas.topics import PRIORITIES

from .apikeys import Principal
from .dependencies import Caller, service
from .errors import Forbidden

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
    now_ms = int(time.time() * 1000)
    workers = await svc.live_workers()
    tasks = {}
    for task in sorted(svc.configs):
        per_priority = {}
        for priority in PRIORITIES:
            level = priority.topic_suffix
            latencies = np.array(await svc.store.recent_latencies(task, level, now_ms - 60_000))
            per_priority[level] = {
                "lag": svc.lag.lag.get((task, priority), 0) if svc.lag is not None else None,
                "throughput_per_s": round(len(latencies) / 60.0, 3),
                "latency_ms": {
                    f"p{q}": round(float(np.percentile(latencies, q)), 1) for q in (50, 95, 99)
                }
                if len(latencies)
                else None,
            }
        tasks[task] = {
            "priorities": per_priority,
            "live_workers": sorted(w for w, served in workers.items() if task in served),
        }
    body = {"tasks": tasks, "workers": len(workers), "at": now_ms}
    if (breakers := getattr(request.app.state, "breakers", None)) is not None:
        body["circuits"] = breakers.describe()
    return body


@router.post("/cleanup")
async def cleanup(
    request: Request,
    principal: Caller,
    older_than_s: Annotated[
        float, Query(ge=0, le=10 * 365 * 86400, description="purge results completed before")
    ] = 3600,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict:
    """Purge stored results (and their status) completed more than ``older_than_s`` ago; at most
    ``limit`` per call. Results also expire by themselves after the result TTL."""
    require_admin(principal)
    cutoff = int(time.time() * 1000 - older_than_s * 1000)
    scanned, purged = await service(request).store.purge_results(cutoff, limit)
    return {"scanned": scanned, "purged_keys": purged, "older_than_s": older_than_s}
