"""Retries and failure isolation on a real worker, with a test-only model that fails on command."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from helpers.kafka import read_records

from streaminfer.schemas.records import AuditEvent, AuditType, DeadLetter
from streaminfer.schemas.topics import audit_topic, dlq_topic

from .models import flaky

pytestmark = pytest.mark.integration


@pytest.fixture
def flaky_stack(make_stack, redis_server, tmp_path):
    repo = flaky.build(tmp_path / "repo")
    stack = make_stack(
        redis_url=redis_server, STREAMINFER_MODEL_REPOSITORY=str(repo), STREAMINFER_TASKS="flaky"
    )
    stack.add_worker()
    stack.add_gateway()
    return stack


async def test_a_breaking_input_fails_alone_and_a_transient_failure_is_retried(flaky_stack):
    stack = flaky_stack
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        bodies = [
            {"inputs": {"x": [1.0, 1.0]}},
            {"inputs": {"x": [flaky.POISON, 0.0]}},
            {"inputs": {"x": [2.0, 3.0]}},
        ]
        # a slow request holds the one instance; the three sent meanwhile queue into one batch,
        # which the poison breaks (an idle instance would run the first of them alone at once)
        slow = asyncio.create_task(
            client.post(
                "/v1/infer/flaky", params={"wait": 30}, json={"inputs": {"x": [flaky.SLOW, 0.0]}}
            )
        )
        await asyncio.sleep(0.1)
        responses = await asyncio.gather(
            *(client.post("/v1/infer/flaky", params={"wait": 30}, json=b) for b in bodies)
        )
        assert (await slow).json()["status"] == "succeeded"
        good, poisoned, other = (r.json() for r in responses)
        transient = (
            await client.post(
                "/v1/infer/flaky",
                params={"wait": 30},
                json={"inputs": {"x": [flaky.TRANSIENT, 1.0]}},
            )
        ).json()

    assert good["status"] == "succeeded" and good["outputs"]["y"] == [2.0, 2.0]
    assert other["status"] == "succeeded" and other["outputs"]["y"] == [4.0, 6.0]
    assert good["batch_size"] == 3, "the three ran as one batch first"
    assert poisoned["status"] == "failed"
    assert (
        poisoned["error"]["code"] == "INFERENCE_FAILED" and "poison" in poisoned["error"]["message"]
    )
    assert poisoned["attempts"] == 3, "retried up to the configured count"
    assert transient["status"] == "succeeded" and transient["attempts"] == 3
    assert transient["outputs"]["y"] == [2 * flaky.TRANSIENT, 2.0]

    letters = await read_records(
        stack.bootstrap,
        dlq_topic(stack.prefix),
        DeadLetter,
        {poisoned["request_id"].encode()},
        lambda g: len(g) == 1,
        timeout_s=30,
    )
    assert letters[poisoned["request_id"]][0].error_code == "INFERENCE_FAILED"
    ids = {r["request_id"].encode() for r in (poisoned, transient)}
    audits = await read_records(
        stack.bootstrap, audit_topic(stack.prefix), AuditEvent, ids, lambda g: False, timeout_s=5
    )
    retried = {
        rid: sum(e.type is AuditType.RETRIED for e in events) for rid, events in audits.items()
    }
    assert retried == {poisoned["request_id"]: 2, transient["request_id"]: 2}
    assert AuditType.DEAD_LETTERED in {e.type for e in audits[poisoned["request_id"]]}
