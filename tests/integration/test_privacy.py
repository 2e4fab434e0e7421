"""Logs and audit events carry input digests, never the inputs themselves."""

from __future__ import annotations

import uuid

import httpx
import pytest
from helpers.kafka import read_records

from streaminfer.schemas.records import AuditEvent, AuditType
from streaminfer.schemas.topics import audit_topic

pytestmark = pytest.mark.integration


async def test_a_marked_input_never_reaches_logs_or_audit(stack):
    marker = f"PRIVATE-{uuid.uuid4().hex}"
    traceparent = (
        f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"  # traced: the worker logs at INFO
    )
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        ok = await client.post(
            "/v1/infer/text-embedding",
            params={"wait": 30},
            headers={"traceparent": traceparent, "X-Request-ID": f"client-{marker[:8]}"},
            json={"inputs": {"text": f"my secret {marker}"}},
        )
        assert ok.status_code == 200 and ok.headers["x-request-id"] == f"client-{marker[:8]}"
        rejected = await client.post(
            "/v1/infer/tabular-classify", json={"inputs": {"features": {"radius": marker}}}
        )
        assert rejected.status_code == 422
    rid = ok.json()["request_id"]
    trail = await read_records(
        stack.bootstrap,
        audit_topic(stack.prefix),
        AuditEvent,
        {rid.encode()},
        lambda g: any(e.type is AuditType.SUCCEEDED for e in g.get(rid, [])),
        timeout_s=30,
    )
    events = trail[rid]
    assert events and all(e.input_digest and len(e.input_digest) == 64 for e in events)
    assert all(marker not in repr(e) for e in events)
    logs = [path.read_text() for path in stack.worker_logs] + [
        (path.parent / f"gateway-{stack.prefix}-{i}.log").read_text()
        for path in stack.worker_logs[:1]
        for i in range(len(stack.gateways))
    ]
    assert any(rid in log for log in logs), "the request was logged (by id)"
    assert all(marker not in log for log in logs), "but never its input"
