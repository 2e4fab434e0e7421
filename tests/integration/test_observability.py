"""Metrics on the gateway's /metrics and the worker's port move as requests flow; a W3C
traceparent sent to the gateway travels with the request and comes back with the result."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from helpers.kafka import collect
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(url)).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_as_requests_flow(stack):
    worker_url = f"http://127.0.0.1:{stack.metrics_ports[0]}/metrics"
    gateway_url = f"{stack.gateway_url}/metrics"
    worker_before, gateway_before = await scrape(worker_url), await scrape(gateway_url)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        done = await asyncio.gather(
            *(
                client.post(
                    "/v1/infer/text-embedding",
                    params={"wait": 30},
                    json={"inputs": {"text": f"metrics {i} {uuid.uuid4()}"}},
                )
                for i in range(5)
            )
        )
        assert all(r.status_code == 200 for r in done)
        await client.post("/v1/infer/text-embedding", json={"inputs": {"text": ""}})  # a 422
    await asyncio.sleep(1.5)  # the lag gauge refreshes every second
    worker_after, gateway_after = await scrape(worker_url), await scrape(gateway_url)

    def grew(after, before, name, by=1.0, **labels):
        assert value(after, name, **labels) - value(before, name, **labels) >= by, (name, labels)

    grew(
        worker_after,
        worker_before,
        "inference_requests_total",
        5,
        task="text-embedding",
        status="succeeded",
    )
    grew(
        worker_after,
        worker_before,
        "inference_request_duration_seconds_count",
        5,
        task="text-embedding",
    )
    grew(
        worker_after,
        worker_before,
        "inference_queue_seconds_count",
        5,
        task="text-embedding",
        priority="normal",
    )
    grew(worker_after, worker_before, "inference_batch_size_count", 1, model="all-minilm-l6-v2")
    grew(
        worker_after,
        worker_before,
        "inference_compute_seconds_count",
        1,
        model="all-minilm-l6-v2",
        version="1",
    )
    assert ("inference_dead_letters_total", ()) in worker_after
    assert ("inference_cache_hits_total", ()) in worker_after
    grew(
        gateway_after,
        gateway_before,
        "inference_requests_total",
        5,
        task="text-embedding",
        status="accepted",
    )
    grew(
        gateway_after,
        gateway_before,
        "inference_request_duration_seconds_count",
        5,
        task="text-embedding",
    )
    grew(
        gateway_after,
        gateway_before,
        "inference_errors_total",
        1,
        task="text-embedding",
        error_code="INVALID_REQUEST",
    )
    assert (
        "inference_consumer_lag",
        (("priority", "normal"), ("task", "text-embedding")),
    ) in gateway_after


async def test_traceparent_travels_to_the_result_and_the_worker_log(stack):
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        response = await client.post(
            "/v1/infer/text-embedding",
            params={"wait": 30},
            headers={"traceparent": traceparent},
            json={"inputs": {"text": "traced"}},
        )
    assert response.status_code == 200 and response.headers["traceparent"] == traceparent
    request_id = response.json()["request_id"]
    messages = await collect(
        stack.bootstrap,
        f"{stack.prefix}.results.text-embedding",
        lambda ms: any(m.key == request_id.encode() for m in ms),
        timeout_s=30,
    )
    mine = next(m for m in messages if m.key == request_id.encode())
    assert dict(mine.headers)["traceparent"] == traceparent.encode()
    requests = await collect(
        stack.bootstrap,
        f"{stack.prefix}.requests.text-embedding.normal",
        lambda ms: any(m.key == request_id.encode() for m in ms),
        timeout_s=30,
    )
    assert (
        dict(next(m for m in requests if m.key == request_id.encode()).headers)["traceparent"]
        == traceparent.encode()
    )
    log = stack.worker_logs[0].read_text()
    line = next(line for line in log.splitlines() if request_id in line)
    assert trace_id in line and '"request_id"' in line
