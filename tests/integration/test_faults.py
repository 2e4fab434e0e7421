"""Delivery guarantees under faults, on real servers: a worker killed with SIGKILL, a worker
stopped with SIGTERM, Redis stopped and restarted, the broker paused, a starved task."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import httpx
import pytest
from helpers.kafka import produce_requests, read_records, read_results
from helpers.waiting import count_results

from streaminfer.schemas.records import AuditEvent, AuditType, Status
from streaminfer.schemas.topics import audit_topic

pytestmark = pytest.mark.integration

TASK_ONLY = {"STREAMINFER_TASKS": "text-embedding"}


async def wait_for(predicate, timeout_s: float, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise TimeoutError("condition not met in time")


async def test_sigkill_of_one_of_two_workers_loses_nothing(make_stack, own_redis):
    from streaminfer.embedded import redis_address

    stack = make_stack(redis_url=redis_address(own_redis), **TASK_ONLY)
    stack.add_worker()
    stack.add_worker()
    ids = await produce_requests(stack.bootstrap, stack.prefix, 3000)
    await wait_for(lambda: _at_least(stack, 300), timeout_s=120)
    victim = stack.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    in_flight = 3000 - await count_results(stack.redis_url, stack.prefix)

    results = await read_results(stack.bootstrap, stack.prefix, ids, timeout_s=240)
    assert set(results) == set(ids), f"lost {len(set(ids) - set(results))}"
    for rid, copies in results.items():
        assert all(c.status is Status.SUCCEEDED for c in copies), rid
        # a copy can only be the same stored result published again after the kill
        assert len({(c.worker_id, c.completed_at) for c in copies}) == 1, rid
    assert await count_results(stack.redis_url, stack.prefix) == 3000
    audits = await read_records(
        stack.bootstrap, audit_topic(stack.prefix), AuditEvent, None, lambda g: False, timeout_s=5
    )
    suppressed = sum(
        1 for events in audits.values() for e in events if e.type is AuditType.DUPLICATE
    )
    republished = sum(len(c) - 1 for c in results.values())
    print(
        f"\nkill -9 with {in_flight} of 3000 requests not yet done: lost 0, "
        f"redeliveries suppressed {suppressed}, results re-published {republished}"
    )


async def _at_least(stack, n: int) -> bool:
    return await count_results(stack.redis_url, stack.prefix) >= n


async def test_sigterm_finishes_in_flight_work_and_nothing_runs_twice(make_stack, own_redis):
    from streaminfer.embedded import redis_address

    stack = make_stack(redis_url=redis_address(own_redis), **TASK_ONLY)
    worker = stack.add_worker()
    ids = await produce_requests(stack.bootstrap, stack.prefix, 1500)
    await wait_for(lambda: _at_least(stack, 200), timeout_s=120)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(worker.wait, 20)
    stopped_in = time.monotonic() - started
    assert code == 0 and stopped_in < 10, (code, stopped_in)
    done_at_stop = await count_results(stack.redis_url, stack.prefix)
    stack.add_worker()
    results = await read_results(stack.bootstrap, stack.prefix, ids, timeout_s=180)
    assert set(results) == set(ids)
    audits = await read_records(
        stack.bootstrap, audit_topic(stack.prefix), AuditEvent, None, lambda g: False, timeout_s=5
    )
    runs = Counter(
        e.request_id for events in audits.values() for e in events if e.type is AuditType.STARTED
    )
    duplicates = [e for events in audits.values() for e in events if e.type is AuditType.DUPLICATE]
    assert set(runs.values()) == {1}, "no request ran twice"
    assert duplicates == [], "nothing done before SIGTERM was redelivered"
    print(
        f"\nSIGTERM: stopped in {stopped_in:.2f}s with {done_at_stop} of 1500 done; nothing reprocessed"
    )


async def test_redis_outage_gateway_503_then_everything_completes(make_stack, own_redis):
    from streaminfer.embedded import redis_address

    stack = make_stack(redis_url=redis_address(own_redis), **TASK_ONLY)
    stack.add_worker()
    url = stack.add_gateway()
    own_redis._terminate(5.0)  # Redis goes away
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        started = time.monotonic()
        response = await client.post(
            "/v1/infer/text-embedding", json={"inputs": {"text": "redis is down"}}
        )
        assert (
            response.status_code == 503 and response.json()["error_code"] == "SERVICE_UNAVAILABLE"
        )
        assert "retry-after" in response.headers and time.monotonic() - started < 15
        assert (await client.get("/ready")).status_code == 503
        ids = await produce_requests(stack.bootstrap, stack.prefix, 20)  # upstream keeps writing
        await asyncio.sleep(3)
        own_redis.restart()
        results = await read_results(stack.bootstrap, stack.prefix, ids, timeout_s=120)
        assert set(results) == set(ids)
        assert all(len(r) == 1 and r[0].status is Status.SUCCEEDED for r in results.values())
        body = (await client.get(f"/v1/results/{ids[0]}")).json()
        assert body["status"] == "succeeded", "the result was stored in the restarted Redis"
        ok = await client.post(
            "/v1/infer/text-embedding",
            params={"wait": 30},
            json={"inputs": {"text": "redis is back"}},
        )
        assert ok.status_code == 200


async def test_broker_pause_gateway_503_then_recovers(make_stack, own_kafka, redis_server):
    from streaminfer.embedded import bootstrap_address

    stack = make_stack(
        bootstrap=bootstrap_address(own_kafka),
        redis_url=redis_server,
        STREAMINFER_KAFKA_REQUEST_TIMEOUT_MS="2000",
        **TASK_ONLY,
    )
    stack.add_worker()
    url = stack.add_gateway()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (
            await client.post(
                "/v1/infer/text-embedding", params={"wait": 30}, json={"inputs": {"text": "before"}}
            )
        ).status_code == 200
        os.kill(own_kafka.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = await client.post(
                "/v1/infer/text-embedding", json={"inputs": {"text": "paused"}}
            )
            assert response.status_code == 503, response.text
            assert time.monotonic() - started < 10
        finally:
            os.kill(own_kafka.proc.pid, signal.SIGCONT)
        after = await client.post(
            "/v1/infer/text-embedding", params={"wait": 60}, json={"inputs": {"text": "after"}}
        )
        assert after.status_code == 200 and after.json()["status"] == "succeeded"


async def test_lag_past_the_bound_answers_429_overloaded(make_stack, redis_server):
    stack = make_stack(redis_url=redis_server, STREAMINFER_MAX_LAG_PER_TASK="20", **TASK_ONLY)
    worker = stack.add_worker()
    url = stack.add_gateway()
    os.kill(worker.pid, signal.SIGSTOP)  # the worker stalls; work piles up
    try:
        await produce_requests(stack.bootstrap, stack.prefix, 60)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def overloaded():
                r = await client.post("/v1/infer/text-embedding", json={"inputs": {"text": "more"}})
                return r if r.status_code == 429 else None

            response = await wait_for(overloaded, timeout_s=20, interval_s=0.5)
            assert response.json()["error_code"] == "OVERLOADED" and response.headers["retry-after"]
            os.kill(worker.pid, signal.SIGCONT)

            async def accepted():
                r = await client.post(
                    "/v1/infer/text-embedding", json={"inputs": {"text": "drained"}}
                )
                return r.status_code == 202

            await wait_for(accepted, timeout_s=60, interval_s=0.5)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
