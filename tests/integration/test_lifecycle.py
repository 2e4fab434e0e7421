"""Request lifecycles on the shared stack: deadlines, cancellation, idempotency across gateway
instances, the content cache, poison events (hypothesis), and an audit trail with no gaps."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from helpers.kafka import read_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import (
    AuditEvent,
    AuditType,
    DeadLetter,
    InferenceRequest,
    Priority,
    Tensor,
)
from streaminfer.schemas.topics import audit_topic, dlq_topic, request_topic

pytestmark = pytest.mark.integration

TERMINAL = {AuditType.SUCCEEDED, AuditType.FAILED, AuditType.EXPIRED, AuditType.CANCELLED}


@pytest.fixture
async def client(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
        yield http


async def test_expired_deadline_is_not_run(client):
    response = await client.post(
        "/v1/infer/text-embedding",
        params={"wait": 30},
        json={"inputs": {"text": "too late"}, "deadline_ms": 1},
    )
    body = response.json()
    assert body["status"] == "expired" and body["error"]["code"] == "DEADLINE_EXCEEDED"
    assert body["outputs"] == {} and body["batch_size"] == 0


async def test_cancel_before_it_runs(stack, client):
    # a backlog of low-priority work in front, so the request is still queued when cancelled
    backlog = [
        {"inputs": {"text": [f"backlog {i} {j}" for j in range(8)]}, "priority": "low"}
        for i in range(60)
    ]
    for attempt in range(5):
        await asyncio.gather(*(client.post("/v1/infer/text-embedding", json=b) for b in backlog))
        queued = (
            await client.post(
                "/v1/infer/text-embedding",
                json={"inputs": {"text": f"cancel me {attempt}"}, "priority": "low"},
            )
        ).json()
        cancel = (await client.delete(f"/v1/requests/{queued['request_id']}")).json()
        if cancel["status"] == "cancelling":
            break
    body = (await client.get(f"/v1/results/{queued['request_id']}", params={"wait": 60})).json()
    assert body["status"] == "cancelled"
    assert (await client.delete(f"/v1/requests/{queued['request_id']}")).json()[
        "status"
    ] == "deleted"
    assert (await client.get(f"/v1/results/{queued['request_id']}")).status_code == 404


async def test_idempotency_holds_across_gateway_instances(stack, client):
    other_url = stack.add_gateway()
    key = f"order-{uuid.uuid4()}"
    body = {"inputs": {"text": "pay once"}}
    first = await client.post(
        "/v1/infer/text-embedding", json=body, headers={"Idempotency-Key": key}
    )
    async with httpx.AsyncClient(base_url=other_url, timeout=60) as other:
        again = await other.post(
            "/v1/infer/text-embedding",
            json=body,
            headers={"Idempotency-Key": key},
            params={"wait": 30},
        )
        conflict = await other.post(
            "/v1/infer/text-embedding",
            json={"inputs": {"text": "pay twice"}},
            headers={"Idempotency-Key": key},
        )
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["request_id"] == first.json()["request_id"]
    assert conflict.status_code == 409 and conflict.json()["error_code"] == "IDEMPOTENCY_CONFLICT"
    accepted = await _audit_types(
        stack, [first.json()["request_id"]], until_type=AuditType.SUCCEEDED
    )
    assert accepted[first.json()["request_id"]].count(AuditType.ACCEPTED) == 1, "one event, not two"


async def test_identical_inputs_hit_the_content_cache_unless_opted_out(stack, client):
    text = f"cache me {uuid.uuid4()}"
    first = (
        await client.post(
            "/v1/infer/text-embedding", params={"wait": 30}, json={"inputs": {"text": text}}
        )
    ).json()
    second = (
        await client.post(
            "/v1/infer/text-embedding", params={"wait": 30}, json={"inputs": {"text": text}}
        )
    ).json()
    fresh = (
        await client.post(
            "/v1/infer/text-embedding",
            params={"wait": 30},
            json={"inputs": {"text": text}, "parameters": {"cache": "false"}},
        )
    ).json()
    assert first["outputs"] == second["outputs"] and np.allclose(
        first["outputs"]["embedding"], fresh["outputs"]["embedding"], atol=1e-5
    )
    trail = await _audit_types(
        stack,
        [first["request_id"], second["request_id"], fresh["request_id"]],
        until_type=AuditType.SUCCEEDED,
    )
    assert AuditType.CACHE_HIT in trail[second["request_id"]]
    assert AuditType.STARTED not in trail[second["request_id"]], "served without running the model"
    assert (
        AuditType.CACHE_HIT not in trail[fresh["request_id"]]
        and AuditType.STARTED in trail[fresh["request_id"]]
    )


def _valid_request(task: str = "text-embedding", shape=None) -> InferenceRequest:
    tensor = Tensor.from_numpy("text", np.array(["poison test"], dtype=object))
    if shape is not None:
        tensor = Tensor.from_numpy("pixels", np.zeros(shape, dtype=np.float32))
    return InferenceRequest(request_id=str(uuid.uuid4()), task=task, inputs=[tensor])


def malformed_events():
    codec = AvroCodec()
    valid = codec.encode(_valid_request())
    random_bytes = st.binary(max_size=300).filter(
        lambda b: not b.startswith((b"\xc3\x01", b"\x00"))
    )
    truncated = st.integers(min_value=0, max_value=len(valid) - 1).map(lambda n: valid[:n])
    unknown_fingerprint = (
        st.binary(min_size=8, max_size=8)
        .map(lambda fp: b"\xc3\x01" + fp + valid[10:])
        .filter(lambda b: b[2:10] != valid[2:10])
    )
    unknown_task = st.from_regex(r"\Azz-[a-z]{1,10}\Z").map(
        lambda t: codec.encode(_valid_request(task=t))
    )
    wrong_shape = st.integers(min_value=1, max_value=7).map(
        lambda n: codec.encode(
            InferenceRequest(
                request_id=str(uuid.uuid4()),
                task="image-classify",
                inputs=[Tensor.from_numpy("pixels", np.zeros((1, n, 8), np.float32))],
            )
        )
    )
    return st.one_of(random_bytes, truncated, unknown_fingerprint, unknown_task, wrong_shape)


def test_a_thousand_malformed_events_all_reach_the_dlq(stack):
    payloads: list[bytes] = []

    @settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(malformed_events())
    def collect(payload: bytes) -> None:
        payloads.append(payload)

    collect()
    assert len(payloads) >= 1000
    asyncio.run(_send_poison_and_check(stack, payloads))


async def _send_poison_and_check(stack, payloads: list[bytes]) -> None:
    keys = [f"poison-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(len(payloads))]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=5)
    await producer.start()
    try:
        topics = [
            request_topic(stack.prefix, t, Priority.NORMAL)
            for t in ("text-embedding", "image-classify")
        ]
        futures = [
            await producer.send(topics[i % 2], value, key=key)
            for i, (key, value) in enumerate(zip(keys, payloads, strict=True))
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    wanted = set(keys)
    letters = await read_records(
        stack.bootstrap,
        dlq_topic(stack.prefix),
        DeadLetter,
        wanted,
        lambda g: len(g) >= len(wanted),
        timeout_s=180,
    )
    assert len(letters) == len(wanted), (
        f"{len(wanted) - len(letters)} malformed events unaccounted for"
    )
    by_key = dict(zip(keys, payloads, strict=True))
    for key, copies in letters.items():
        assert copies[0].payload == by_key[key.encode()] and copies[0].error_code
    kinds = {copies[0].error_code for copies in letters.values()}
    print(
        f"\n{len(payloads)} malformed events -> {len(letters)} dead letters; error codes {sorted(kinds)}"
    )
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        ok = await client.post(
            "/v1/infer/text-embedding", params={"wait": 30}, json={"inputs": {"text": "still up"}}
        )
    assert ok.json()["status"] == "succeeded", "the worker kept serving"
    assert stack.workers[0].poll() is None


async def _audit_types(stack, ids: list[str], until_type: AuditType) -> dict[str, list[AuditType]]:
    wanted = {i.encode() for i in ids}

    def complete(grouped):
        return len(grouped) == len(wanted) and all(
            any(e.type in TERMINAL or e.type is until_type for e in events)
            for events in grouped.values()
        )

    grouped = await read_records(
        stack.bootstrap, audit_topic(stack.prefix), AuditEvent, wanted, complete, timeout_s=60
    )
    return {
        rid: [e.type for e in sorted(events, key=lambda e: e.at)] for rid, events in grouped.items()
    }


def lifecycle_gaps(grouped: dict[str, list[AuditEvent]]) -> list[tuple[str, list[AuditType]]]:
    """Requests whose audit trail is not ACCEPTED -> STARTED -> one terminal event, or one of the
    paths that skip the model (CACHE_HIT, EXPIRED, CANCELLED, a FAILED rejection)."""
    gaps = []
    for rid, events in grouped.items():
        kinds = [e.type for e in events]
        if AuditType.ACCEPTED not in kinds:
            continue  # Kafka-direct events: no gateway ACCEPTED (poison, upstream producers)
        terminal = [k for k in kinds if k in TERMINAL]
        started = kinds.count(AuditType.STARTED)
        skipped_model = AuditType.CACHE_HIT in kinds or (
            terminal and terminal[0] in {AuditType.EXPIRED, AuditType.CANCELLED, AuditType.FAILED}
        )
        if len(terminal) != 1 or not (started == 1 or (started == 0 and skipped_model)):
            gaps.append((rid, kinds))
    return gaps


async def test_every_accepted_request_has_a_complete_audit_trail(stack, client):
    """Runs last in this module: rebuilds every lifecycle on the audit topic so far (waiting for
    requests still in flight)."""
    grouped = await read_records(
        stack.bootstrap,
        audit_topic(stack.prefix),
        AuditEvent,
        None,
        lambda g: len(g) > 100 and not lifecycle_gaps(g),
        timeout_s=120,
    )
    accepted = sum(
        1 for events in grouped.values() if any(e.type is AuditType.ACCEPTED for e in events)
    )
    assert accepted > 100
    assert lifecycle_gaps(grouped) == []
    for events in grouped.values():
        assert all(e.input_digest is None or len(e.input_digest) == 64 for e in events)
    print(f"\naudit: {accepted} accepted requests, every lifecycle complete")
