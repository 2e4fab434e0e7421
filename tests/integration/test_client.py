"""streaminfer.client against the real stack (Tansu, Redis, a worker and a gateway processes):
HTTP calls on /v1 and /v2, the Kafka-direct producer and consumer, and API-key auth."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from helpers.keys import create_api_key

from streaminfer.client import AsyncClient, Client, ClientError, RequestProducer, ResultConsumer
from streaminfer.settings import Settings

pytestmark = pytest.mark.integration


def test_infer_text_embedding_returns_float32_embeddings(stack):
    with Client(stack.gateway_url) as client:
        one = client.infer("text-embedding", {"text": "Kafka is a distributed log"}, wait=30)
        two = client.infer(
            "text-embedding", {"text": ["first text", "second text"]}, wait=30, priority="high"
        )
    assert one.status == "succeeded" and one.error is None and one.model.name == "all-minilm-l6-v2"
    embedding = one.outputs["embedding"]
    assert embedding.dtype == np.float32 and embedding.shape == (1, 384)
    assert np.linalg.norm(embedding[0]) == pytest.approx(1.0, abs=1e-4)  # L2-normalised
    assert two.outputs["embedding"].shape == (2, 384) and not np.allclose(*two.outputs["embedding"])
    assert one.timings["total_ms"] >= one.timings["inference_ms"] > 0


def test_image_classify_outputs_keep_their_datatypes(stack):
    pixels = np.zeros((2, 8, 8), dtype=np.float32)
    pixels[1, 2:6, 3:5] = 16.0
    with Client(stack.gateway_url) as client:
        result = client.infer("image-classify", {"pixels": pixels}, wait=30)
    assert result.succeeded
    assert result.outputs["label"].dtype == np.int64 and result.outputs["label"].shape == (2,)
    probabilities = result.outputs["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


async def test_async_submit_then_result(stack):
    async with AsyncClient(stack.gateway_url) as client:
        request_id = await client.submit(
            "text-embedding", {"text": "submitted now, read later"}, parameters={"cache": "false"}
        )
        result = await client.result(request_id, wait=30)
    uuid.UUID(request_id)
    assert result.request_id == request_id and result.status == "succeeded"
    assert result.outputs["embedding"].shape == (1, 384)


def test_the_same_idempotency_key_gives_the_same_request(stack):
    key = f"client-test-{uuid.uuid4()}"
    with Client(stack.gateway_url) as client:
        first = client.submit("text-embedding", {"text": "only once"}, idempotency_key=key)
        again = client.submit("text-embedding", {"text": "only once"}, idempotency_key=key)
        with pytest.raises(ClientError) as conflict:
            client.submit("text-embedding", {"text": "another body"}, idempotency_key=key)
    assert first == again
    assert (conflict.value.error_code, conflict.value.status_code) == ("IDEMPOTENCY_CONFLICT", 409)


def test_cancel_deletes_a_stored_result_and_unknown_ids_are_not_found(stack):
    with Client(stack.gateway_url) as client:
        done = client.infer("text-embedding", {"text": "to be deleted"}, wait=30)
        assert done.succeeded
        assert client.cancel(done.request_id) == "deleted"
        with pytest.raises(ClientError) as gone:
            client.result(done.request_id)
        with pytest.raises(ClientError) as unknown:
            client.cancel(str(uuid.uuid4()))
    assert (gone.value.error_code, gone.value.status_code) == ("REQUEST_NOT_FOUND", 404)
    assert unknown.value.error_code == "REQUEST_NOT_FOUND"


def test_tasks_and_an_unknown_task(stack):
    with Client(stack.gateway_url) as client:
        tasks = {t["task"]: t for t in client.tasks()}
        with pytest.raises(ClientError) as caught:
            client.infer("no-such-task", {"text": "x"})
    assert {"text-embedding", "image-classify", "tabular-classify"} <= set(tasks)
    assert tasks["text-embedding"]["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [384]}
    ]
    error = caught.value
    assert (error.error_code, error.status_code) == (
        "TASK_NOT_FOUND",
        404,
    ) and "no-such-task" in error.message
    assert error.attempts == 1 and not error.retriable


def test_open_inference_protocol_calls(stack):
    pixels = np.zeros((1, 8, 8), dtype=np.float32)
    with Client(stack.gateway_url) as client:
        assert (
            client.server_live() and client.server_ready() and client.model_ready("image-classify")
        )
        metadata = client.model_metadata("image-classify")
        outputs = client.model_infer("image-classify", {"pixels": pixels})
        only = client.model_infer(
            "text-embedding",
            {"text": np.array(["hello", "world"], dtype=object)},
            outputs=["embedding"],
        )
        with pytest.raises(ClientError) as caught:
            client.model_infer("image-classify", {"pixels": np.zeros((1, 7, 8), dtype=np.float32)})
    assert metadata["name"] == "image-classify" and metadata["inputs"][0]["shape"] == [-1, 8, 8]
    assert outputs["label"].dtype == np.int64 and outputs["label"].shape == (1,)
    assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (
        1,
        10,
    )
    assert set(only) == {"embedding"} and only["embedding"].shape == (2, 384)
    assert only["embedding"].dtype == np.float32
    assert (caught.value.error_code, caught.value.status_code) == ("INVALID_REQUEST", 422)


def test_model_infer_with_binary_tensors_gives_what_json_gives(stack):
    texts = np.array(["binary tensors", "bytes on the wire"], dtype=object)
    pixels = np.random.default_rng(7).uniform(0, 16, (3, 8, 8)).astype(np.float32)
    with Client(stack.gateway_url) as client:
        as_json = client.model_infer("text-embedding", {"text": texts})
        as_bytes = client.model_infer("text-embedding", {"text": texts}, binary=True)
        digits = client.model_infer("image-classify", {"pixels": pixels}, binary=True)
        digits_json = client.model_infer("image-classify", {"pixels": pixels})
    assert as_bytes["embedding"].dtype == np.float32 and as_bytes["embedding"].shape == (2, 384)
    np.testing.assert_allclose(as_bytes["embedding"], as_json["embedding"], atol=1e-6)
    assert (
        digits["label"].dtype == np.int64
        and digits["label"].tolist() == digits_json["label"].tolist()
    )
    np.testing.assert_allclose(digits["probabilities"], digits_json["probabilities"], atol=1e-6)


async def test_request_producer_and_result_consumer_round_trip_through_the_worker(stack):
    texts = ["straight to kafka", "another one", "and a third", "the last"]
    priorities = ["high", "normal", "low", 5]
    async with (
        ResultConsumer(stack.bootstrap, "text-embedding", prefix=stack.prefix) as consumer,
        RequestProducer(stack.bootstrap, prefix=stack.prefix, owner="client-test") as producer,
    ):
        ids = [
            await producer.send(
                "text-embedding", {"text": text}, priority=priority, parameters={"cache": "false"}
            )
            for text, priority in zip(texts, priorities, strict=True)
        ]
        image_id = await producer.send(
            "image-classify", {"pixels": np.zeros((1, 8, 8))}
        )  # another task's topic
        results = await consumer.wait(ids, timeout=60)
        assert await consumer.wait([image_id], timeout=1) == {}
    assert set(results) == set(ids)
    assert all(
        r.status == "succeeded" and r.outputs["embedding"].shape == (1, 384)
        for r in results.values()
    )
    with Client(stack.gateway_url) as client:  # the same model over HTTP: the same vector
        over_http = client.infer("text-embedding", {"text": texts[0]}, wait=30).outputs["embedding"]
        owned = client.result(ids[0])
    np.testing.assert_allclose(results[ids[0]].outputs["embedding"], over_http, atol=1e-5)
    assert owned.status == "succeeded"
    # a consumer started later reads them again from the start of the topic when told so
    async with ResultConsumer(
        stack.bootstrap, "text-embedding", prefix=stack.prefix, auto_offset_reset="earliest"
    ) as replay:
        again = await replay.wait(ids, timeout=30)
    assert {i: r.status for i, r in again.items()} == {i: "succeeded" for i in ids}


async def test_result_consumer_keeps_results_that_arrive_before_the_wait(stack):
    """And both built from the settings (bootstrap servers, prefix, codec) with ``from_settings``."""
    arrived: list[str] = []
    settings = Settings(kafka_bootstrap_servers=stack.bootstrap, topic_prefix=stack.prefix)
    async with (
        ResultConsumer.from_settings(
            "tabular-classify", settings, on_record=lambda record: arrived.append(record.request_id)
        ) as consumer,
        RequestProducer.from_settings(settings) as producer,
    ):
        request_id = await producer.send(
            "tabular-classify", {"features": np.ones((1, 30), dtype=np.float32)}, deadline_ms=30_000
        )
        for _ in range(240):  # until the consumer has read it, without anyone waiting for it yet
            if request_id in arrived:
                break
            await asyncio.sleep(0.25)
        results = await consumer.wait([request_id], timeout=0)
    result = results[request_id]
    assert result.status == "succeeded" and result.outputs["label"].dtype == np.int64
    assert result.outputs["probability"].shape == (1,)


async def test_a_request_the_worker_refuses_comes_back_rejected(stack):
    async with (
        ResultConsumer(stack.bootstrap, "text-embedding", prefix=stack.prefix) as consumer,
        RequestProducer(stack.bootstrap, prefix=stack.prefix) as producer,
    ):
        # FP64 where the model takes BYTES: valid Avro that the worker refuses at intake
        request_id = await producer.send("text-embedding", {"text": np.zeros(1)})
        results = await consumer.wait([request_id], timeout=60)
    assert (
        results[request_id].status in ("rejected", "failed")
        and results[request_id].error is not None
    )


async def test_api_keys_reach_a_gateway_with_auth_on(stack, make_stack):
    key = await create_api_key(stack.redis_url, stack.prefix, f"client-{uuid.uuid4().hex[:6]}")
    secured = make_stack(redis_url=stack.redis_url)
    url = secured.add_gateway(STREAMINFER_TOPIC_PREFIX=stack.prefix, STREAMINFER_AUTH="apikey")
    async with AsyncClient(url, api_key=key) as client:
        result = await client.infer("text-embedding", {"text": "with a key"}, wait=30)
    async with AsyncClient(url, api_key="si_not-a-key") as client:
        with pytest.raises(ClientError) as caught:
            await client.tasks()
    assert result.succeeded and result.outputs["embedding"].shape == (1, 384)
    assert (caught.value.error_code, caught.value.status_code) == ("UNAUTHORIZED", 401)


async def test_the_callers_span_reaches_the_request_event_and_its_result(stack):
    from helpers.kafka import collect
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("client-test")
    async with (
        ResultConsumer(stack.bootstrap, "text-embedding", prefix=stack.prefix) as consumer,
        RequestProducer(stack.bootstrap, prefix=stack.prefix) as producer,
    ):
        with tracer.start_as_current_span("upstream") as span:
            request_id = await producer.send("text-embedding", {"text": "traced"}, priority="high")
        assert (await consumer.wait([request_id], timeout=60))[request_id].succeeded
    trace_id = format(span.get_span_context().trace_id, "032x")

    def mine(messages):
        return [m for m in messages if m.key == request_id.encode()]

    for topic in (
        f"{stack.prefix}.requests.text-embedding.high",
        f"{stack.prefix}.results.text-embedding",
    ):
        (message,) = mine(await collect(stack.bootstrap, topic, mine, timeout_s=30))
        headers = {name: value.decode() for name, value in message.headers}
        assert headers["traceparent"].split("-")[1] == trace_id, topic
