"""Who owns a request, with auth on: a Kafka-direct producer reads its own cache hits, expiries
and rejections through the gateway; an event reusing another client's request_id takes nothing
over; the content cache answers a client only from its own earlier requests."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from helpers.kafka import read_records
from helpers.keys import create_api_key
from helpers.waiting import until

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import (
    AuditEvent,
    AuditType,
    DeadLetter,
    InferenceRequest,
    Priority,
    Tensor,
    now_ms,
)
from streaminfer.schemas.tensors import DataType
from streaminfer.schemas.topics import audit_topic, dlq_topic, request_topic

pytestmark = pytest.mark.integration

TASK = "text-embedding"
CODEC = AvroCodec()


def request(
    client: str | None, text: str = "", request_id: str | None = None, **fields
) -> InferenceRequest:
    inputs = fields.pop("inputs", None) or [
        Tensor.from_numpy("text", np.array([text or uuid.uuid4().hex], dtype=object))
    ]
    return InferenceRequest(
        request_id=request_id or str(uuid.uuid4()),
        task=TASK,
        client_id=client,
        inputs=inputs,
        **fields,
    )


async def send(bootstrap: str, prefix: str, *requests: InferenceRequest) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for r in requests:
            await producer.send_and_wait(
                request_topic(prefix, TASK, Priority.NORMAL),
                CODEC.encode(r),
                key=r.request_id.encode(),
            )
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def authed_stack(kafka_server, redis_server, model_repository):
    """One stack for the module (its tests name their own requests, items and collections)."""
    from conftest import serving

    yield from serving(
        kafka_server,
        redis_server,
        model_repository,
        STREAMINFER_AUTH="apikey",
        STREAMINFER_TASKS=TASK,
    )


@pytest.fixture
async def authed(authed_stack, redis_server):
    stack = authed_stack
    keys = {
        c: {"X-API-Key": await create_api_key(redis_server, stack.prefix, c)}
        for c in ("alice", "bob")
    }
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        yield stack, client, keys


async def result_of(client, rid: str, headers) -> httpx.Response:
    async def done():
        r = await client.get(f"/v1/results/{rid}", params={"wait": 5}, headers=headers)
        return (
            r if r.status_code != 200 or r.json()["status"] not in ("queued", "running") else None
        )

    return await until(done, timeout_s=60)


async def test_a_kafka_direct_producer_reads_its_own_hits_expiries_and_rejections(authed):
    stack, client, keys = authed
    text = f"owned {uuid.uuid4().hex}"
    first = request("alice", text)
    hit = request("alice", text)
    expired = request("alice", deadline_at=now_ms() - 1000)
    rejected = request("alice", inputs=[Tensor("text", DataType.BYTES, [2**62, 0], [])])
    await send(stack.bootstrap, stack.prefix, first)
    assert (await result_of(client, first.request_id, keys["alice"])).json()[
        "status"
    ] == "succeeded"
    await send(stack.bootstrap, stack.prefix, hit, expired, rejected)
    statuses = {}
    for r in (hit, expired, rejected):
        answer = await result_of(client, r.request_id, keys["alice"])
        assert answer.status_code == 200, (r.request_id, answer.text)
        statuses[r.request_id] = answer.json()["status"]
        assert (
            await client.get(f"/v1/results/{r.request_id}", headers=keys["bob"])
        ).status_code == 404
    assert statuses == {
        hit.request_id: "succeeded",
        expired.request_id: "expired",
        rejected.request_id: "rejected",
    }
    body = (await client.get(f"/v1/results/{hit.request_id}", headers=keys["alice"])).json()
    original = (await client.get(f"/v1/results/{first.request_id}", headers=keys["alice"])).json()
    assert body["batch_size"] == original["batch_size"] >= 1, (
        "a hit carries the original run's figures"
    )


async def test_an_event_reusing_another_clients_request_id_takes_nothing_over(authed):
    stack, client, keys = authed
    submitted = await client.post(
        f"/v1/infer/{TASK}", json={"inputs": {"text": "alice's"}}, headers=keys["alice"]
    )
    rid = submitted.json()["request_id"]
    # bob read the id off the audit topic and sends a failing event under it, before and after it ran
    hijack = request("bob", request_id=rid, inputs=[Tensor("text", DataType.FP32, [1], b"\0" * 4)])
    await send(stack.bootstrap, stack.prefix, hijack)
    answer = await result_of(client, rid, keys["alice"])
    assert answer.json()["status"] == "succeeded", "alice's request keeps its own result"
    await send(stack.bootstrap, stack.prefix, hijack)
    assert (await client.get(f"/v1/results/{rid}", headers=keys["bob"])).status_code == 404
    assert (await client.get(f"/v1/results/{rid}", headers=keys["alice"])).json()[
        "status"
    ] == "succeeded"
    letters = await read_records(
        stack.bootstrap,
        dlq_topic(stack.prefix),
        DeadLetter,
        {rid.encode()},
        lambda g: len(g.get(rid, [])) >= 2,
        timeout_s=30,
    )
    assert len(letters[rid]) == 2, "both hijacking events are dead-lettered"


async def test_the_content_cache_answers_a_client_only_from_its_own_requests(authed):
    stack, client, keys = authed
    text = f"secret {uuid.uuid4().hex}"
    rids = {}
    for who in ("alice", "bob", "alice"):
        r = await client.post(
            f"/v1/infer/{TASK}",
            params={"wait": 30},
            json={"inputs": {"text": text}},
            headers=keys[who],
        )
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        rids.setdefault(who, []).append(r.json()["request_id"])
    audits = await read_records(
        stack.bootstrap,
        audit_topic(stack.prefix),
        AuditEvent,
        None,
        lambda g: all(
            any(e.type is AuditType.SUCCEEDED for e in g.get(rid, []))
            for ids in rids.values()
            for rid in ids
        ),
        timeout_s=30,
    )
    hits = {rid for rid, events in audits.items() for e in events if e.type is AuditType.CACHE_HIT}
    assert rids["bob"][0] not in hits, "bob is not answered from alice's entry"
    assert rids["alice"][1] in hits, "alice's second request is"
