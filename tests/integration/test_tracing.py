"""OpenTelemetry across the real gateway and worker processes: both export over OTLP/HTTP to a
receiver in the test (tests/helpers/otlp.py); one trace runs from the HTTP request to the result,
each batch span links every request it ran, and Kafka-direct producers that set only a
``traceparent`` header (or only the Avro ``trace`` map) have their traces continued. Every span
arrives through each process's flush at shutdown."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from conftest import stop
from helpers.kafka import collect
from helpers.otlp import OtlpReceiver

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import InferenceRequest, InferenceResult, Priority, Tensor
from streaminfer.schemas.topics import request_topic, results_topic

pytestmark = pytest.mark.integration

TASK = "tabular-classify"
HTTP_REQUESTS = 12


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def features(i: int) -> list[float]:
    return [float(i) + 0.5] * 30  # distinct inputs: a content-cache hit would run in no batch


async def produce_direct(
    bootstrap: str, prefix: str, requests: list[tuple[InferenceRequest, list | None]]
) -> None:
    """Write requests straight to the request topic, as an upstream producer in any language does."""
    codec = AvroCodec()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(
                request_topic(prefix, TASK, Priority.NORMAL),
                codec.encode(r),
                key=r.request_id.encode(),
                headers=headers,
            )
            for r, headers in requests
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def direct_request(**fields) -> InferenceRequest:
    value = np.random.default_rng().uniform(0, 20)
    return InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        inputs=[Tensor.from_numpy("features", np.full((1, 30), value, dtype=np.float32))],
        **fields,
    )


async def test_one_trace_from_http_to_result_with_batches_linking_their_requests(
    make_stack, redis_server
):
    with OtlpReceiver() as receiver:
        # the batch processors wait a minute: only their flush at shutdown delivers the spans
        stack = make_stack(
            redis_url=redis_server,
            STREAMINFER_TASKS=TASK,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_BSP_SCHEDULE_DELAY="60000",
        )
        stack.add_worker()
        stack.add_gateway()

        callers = [traceparent() for _ in range(HTTP_REQUESTS)]
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"/v1/infer/{TASK}",
                        params={"wait": 30},
                        headers={"traceparent": header},
                        json={
                            "inputs": [
                                {
                                    "name": "features",
                                    "datatype": "FP32",
                                    "shape": [1, 30],
                                    "data": features(i),
                                }
                            ]
                        },
                    )
                    for i, (header, _, _) in enumerate(callers)
                )
            )
        assert [a.status_code for a in answers] == [200] * HTTP_REQUESTS
        ids = {a.json()["request_id"]: caller for a, caller in zip(answers, callers, strict=True)}

        # Kafka-direct: a traceparent header only; the Avro trace map only; neither (padding a batch)
        by_header, by_map = traceparent(), traceparent()
        header_only, map_only = direct_request(), direct_request(trace={"traceparent": by_map[0]})
        untraced = [direct_request() for _ in range(6)]
        await produce_direct(
            stack.bootstrap,
            stack.prefix,
            [
                (header_only, [("traceparent", by_header[0].encode())]),
                (map_only, None),
                *[(r, None) for r in untraced],
            ],
        )
        direct_ids = {
            header_only.request_id,
            map_only.request_id,
            *(r.request_id for r in untraced),
        }
        messages = await collect(
            stack.bootstrap,
            results_topic(stack.prefix, TASK),
            lambda ms: direct_ids <= {m.key.decode() for m in ms},
            30,
        )
        results = {m.key.decode(): m for m in messages if m.key.decode() in direct_ids}
        assert set(results) == direct_ids

        assert receiver.received() == [], "nothing exported before shutdown"
        for proc in stack.gateways + stack.workers:  # SIGTERM: each flushes its spans as it stops
            stop(proc)
        stack.gateways.clear(), stack.workers.clear()
        everything = set(ids) | direct_ids

        def complete(spans) -> bool:
            writes = {
                s.attributes.get("streaminfer.request_id")
                for s in spans
                if s.name == "write result"
            }
            served = {
                s.attributes.get("streaminfer.request_id") for s in spans if s.name == "wait result"
            }
            return everything <= writes and set(ids) <= served

        spans = receiver.wait_for(complete, 20)
    assert complete(spans), "every request's spans arrived"
    assert {s.service for s in spans} == {"streaminfer-gateway", "streaminfer-worker"}
    batches = [s for s in spans if s.name == f"batch {s.attributes.get('streaminfer.model.name')}"]
    assert batches and all(
        s.kind == "INTERNAL" and s.service == "streaminfer-worker" for s in batches
    )
    for batch in batches:
        assert batch.attributes["streaminfer.model.version"] and batch.parent_span_id == ""
        assert len(batch.links) == batch.attributes["streaminfer.batch.requests"], (
            "one link per request"
        )
    linked = Counter(link for batch in batches for link in batch.links)
    topic = request_topic(stack.prefix, TASK, Priority.NORMAL)

    def one(trace_id: str, name: str, service: str):
        [span] = [
            s for s in spans if s.trace_id == trace_id and s.name == name and s.service == service
        ]
        return span

    http_batches = set()
    for request_id, (_, trace_id, caller_span) in ids.items():
        server = one(trace_id, "POST /v1/infer/{task}", "streaminfer-gateway")
        produce = one(trace_id, f"send {topic}", "streaminfer-gateway")
        waited = one(trace_id, "wait result", "streaminfer-gateway")
        queued = one(trace_id, f"queue wait {topic}", "streaminfer-worker")
        written = one(trace_id, "write result", "streaminfer-worker")
        assert server.kind == "SERVER" and server.parent_span_id == caller_span
        assert server.attributes["http.response.status_code"] == 200
        assert (
            produce.kind == "PRODUCER"
            and produce.attributes["streaminfer.request_id"] == request_id
        )
        assert queued.kind == "CONSUMER" and queued.parent_span_id == produce.span_id, (
            "continued over Kafka"
        )
        assert (
            written.parent_span_id == produce.span_id
            and written.attributes["streaminfer.request_id"] == request_id
        )
        assert waited.attributes["streaminfer.result.found"] is True
        assert (
            server.start_ns <= produce.start_ns
            and queued.end_ns <= written.start_ns <= waited.end_ns
        )
        [batch] = [b for b in batches if (trace_id, queued.span_id) in b.links]
        assert linked[(trace_id, queued.span_id)] == 1, "one batch ran it"
        assert written.links == ((batch.trace_id, batch.span_id),), "its write links the batch back"
        http_batches.add(batch.span_id)
    assert any(len(b.links) > 1 for b in batches if b.span_id in http_batches), (
        "concurrent requests shared a batch"
    )

    for request, (_, trace_id, span_id) in ((header_only, by_header), (map_only, by_map)):
        queued = one(trace_id, f"queue wait {topic}", "streaminfer-worker")
        written = one(trace_id, "write result", "streaminfer-worker")
        assert queued.parent_span_id == span_id and written.parent_span_id == span_id
        message = results[request.request_id]
        assert AvroCodec().decode(message.value, InferenceResult).status.value == "SUCCEEDED"
        # a downstream consumer of the results topic continues the trace from the write span
        assert (
            dict(message.headers)["traceparent"]
            .decode()
            .startswith(f"00-{trace_id}-{written.span_id}-")
        )
    for request in untraced:  # no context came with them: the worker's queue wait is their root
        [queued] = [
            s
            for s in spans
            if s.name == f"queue wait {topic}"
            and s.attributes["streaminfer.request_id"] == request.request_id
        ]
        [written] = [
            s
            for s in spans
            if s.name == "write result"
            and s.attributes["streaminfer.request_id"] == request.request_id
        ]
        assert queued.parent_span_id == "" and written.parent_span_id == queued.span_id
