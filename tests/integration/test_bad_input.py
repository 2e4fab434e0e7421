"""Bad input gets a clear error and loses nothing: HTTP validation before publishing, and
undecodable events on a request topic go to the DLQ while the worker keeps serving."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from helpers.http import assert_error
from helpers.kafka import collect

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        yield http


async def test_unknown_task_is_404(client):
    body = assert_error(
        await client.post("/v1/infer/no-such-task", json={"inputs": {"text": "x"}}),
        404,
        "TASK_NOT_FOUND",
    )
    assert "text-embedding" in body["details"]["tasks"]


async def test_malformed_json_is_400(client):
    response = await client.post(
        "/v1/infer/text-embedding",
        content=b'{"inputs": {"text": "unclosed',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "INVALID_REQUEST")


async def test_missing_inputs_is_422(client):
    assert_error(
        await client.post("/v1/infer/text-embedding", json={"priority": "high"}),
        422,
        "INVALID_REQUEST",
    )


@pytest.mark.parametrize(
    "task,inputs,fragment",
    [
        ("text-embedding", {"text": ""}, "empty"),
        ("text-embedding", {"text": ["fine", ""]}, "empty"),
        ("image-classify", {"pixels": [[0.0] * 8] * 7}, "shape"),
        (
            "image-classify",
            [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 7], "data": [0.0] * 56}],
            "shape",
        ),
        (
            "image-classify",
            [{"name": "pixels", "datatype": "INT64", "shape": [1, 8, 8], "data": [0] * 64}],
            "datatype",
        ),
        ("tabular-classify", {"features": {"not a feature": 1.0}}, "not a feature"),
        (
            "image-classify",
            [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8], "data": [0.0] * 10}],
            "pixels",
        ),
    ],
)
async def test_invalid_tensors_are_422_before_publishing(client, task, inputs, fragment):
    body = assert_error(
        await client.post(f"/v1/infer/{task}", json={"inputs": inputs}), 422, "INVALID_REQUEST"
    )
    assert (
        fragment.lower() in body["message"].lower() or fragment in str(body["details"]).lower()
    ), body


async def test_bad_priority_and_unknown_version(client):
    assert_error(
        await client.post(
            "/v1/infer/text-embedding", json={"inputs": {"text": "x"}, "priority": "urgent"}
        ),
        422,
        "INVALID_REQUEST",
    )
    assert_error(
        await client.post(
            "/v1/infer/text-embedding", json={"inputs": {"text": "x"}, "model_version": "999"}
        ),
        404,
        "MODEL_VERSION_NOT_FOUND",
    )


async def test_oversize_body_is_413(client):
    response = await client.post(
        "/v1/infer/text-embedding", json={"inputs": {"text": "x" * 2_000_000}}
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_unknown_request_is_404(client):
    assert_error(await client.get(f"/v1/results/{uuid.uuid4()}"), 404, "REQUEST_NOT_FOUND")


async def test_undecodable_events_go_to_dlq_and_worker_keeps_serving(stack, client):
    import numpy as np

    from streaminfer.schemas.codec import AvroCodec
    from streaminfer.schemas.records import InferenceRequest, Tensor

    valid = AvroCodec().encode(
        InferenceRequest(
            request_id=str(uuid.uuid4()),
            task="text-embedding",
            inputs=[Tensor.from_numpy("text", np.array(["valid"], dtype=object))],
        )
    )
    poison = {
        f"random-{uuid.uuid4()}".encode(): os.urandom(64),
        f"truncated-{uuid.uuid4()}".encode(): valid[: len(valid) // 2],
        f"empty-{uuid.uuid4()}".encode(): b"",
    }
    topic = f"{stack.prefix}.requests.text-embedding.normal"
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        for key, value in poison.items():
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    response = await client.post(
        "/v1/infer/text-embedding", params={"wait": 30}, json={"inputs": {"text": "after poison"}}
    )
    assert response.status_code == 200 and response.json()["status"] == "succeeded"

    def all_dead(messages):
        return set(poison) <= {m.key for m in messages}

    letters = await collect(stack.bootstrap, f"{stack.prefix}.dlq", all_dead, timeout_s=30)
    codec = AvroCodec()
    from streaminfer.schemas.records import DeadLetter

    mine = {m.key: codec.decode(m.value, DeadLetter) for m in letters if m.key in poison}
    assert set(mine) == set(poison)
    for key, letter in mine.items():
        assert letter.payload == poison[key], "the DLQ keeps the original bytes verbatim"
        assert letter.source_topic == topic and letter.error_code and letter.error_message
        assert dict(next(m for m in letters if m.key == key).headers).get("streaminfer-error-type")
