"""HTTP submit -> result for each built-in task, through the real broker, worker and Redis."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from helpers.waiting import until

pytestmark = pytest.mark.integration


async def infer(client: httpx.AsyncClient, task: str, inputs, wait: float = 30) -> dict:
    response = await client.post(
        f"/v1/infer/{task}", params={"wait": wait}, json={"inputs": inputs}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body
    return body


async def test_text_embedding_is_unit_norm_and_meaningful(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        texts = [
            "A man is playing a guitar.",
            "Someone plays the guitar.",
            "The stock market fell sharply on Tuesday.",
        ]
        bodies = await asyncio.gather(
            *(infer(client, "text-embedding", {"text": t}) for t in texts)
        )
    vectors = [np.asarray(b["outputs"]["embedding"], dtype=np.float64) for b in bodies]
    for body, vector in zip(bodies, vectors, strict=True):
        assert vector.shape == (384,)
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-3
        assert body["model"]["name"] and body["model"]["version"]
        assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] >= 0
    paraphrase = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.2, (paraphrase, unrelated)


async def test_text_embedding_several_items_in_one_request(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        body = await infer(
            client, "text-embedding", {"text": ["first text", "second text", "third"]}
        )
    embeddings = body["outputs"]["embedding"]
    assert len(embeddings) == 3 and all(len(e) == 384 for e in embeddings)


async def test_image_classify_labels_held_out_digits(stack):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, x_test, _, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    x_test, y_test = x_test[:100], y_test[:100]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        bodies = await asyncio.gather(
            *(infer(client, "image-classify", {"pixels": x.tolist()}) for x in x_test)
        )
    labels = np.array([b["outputs"]["label"] for b in bodies])
    probabilities = np.array([b["outputs"]["probabilities"] for b in bodies])
    assert probabilities.shape == (100, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    assert (labels == probabilities.argmax(axis=1)).all()
    assert (labels == y_test).mean() >= 0.9


async def test_tabular_classify_returns_label_and_probability(stack):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rows = [dict(zip(data.feature_names, map(float, x), strict=True)) for x in data.data[:40]]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        bodies = await asyncio.gather(
            *(infer(client, "tabular-classify", {"features": r}) for r in rows)
        )
    labels = np.array([b["outputs"]["label"] for b in bodies])
    probability = np.array([b["outputs"]["probability"] for b in bodies])
    assert ((probability >= 0) & (probability <= 1)).all()
    assert ((probability > 0.5).astype(int) == labels).all()
    assert (labels == data.target[:40]).mean() >= 0.9


async def test_result_is_readable_later_and_long_polls(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        queued = await client.post("/v1/infer/text-embedding", json={"inputs": {"text": "poll me"}})
        assert queued.status_code == 202
        body = queued.json()
        assert body["status"] == "queued" and body["priority"] == "normal"
        request_id = body["request_id"]
        done = await client.get(f"/v1/results/{request_id}", params={"wait": 30})
        assert done.status_code == 200
        assert done.json()["status"] == "succeeded"
        again = await client.get(f"/v1/results/{request_id}")
        assert again.json()["outputs"] == done.json()["outputs"]


async def test_prefer_wait_header_and_tasks_listing(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        response = await client.post(
            "/v1/infer/text-embedding",
            headers={"Prefer": "wait=30"},
            json={"inputs": {"text": "prefer header"}, "priority": 9},
        )
        assert response.status_code == 200 and response.json()["status"] == "succeeded"
        tasks = (await client.get("/v1/tasks")).json()["tasks"]
    names = {t["task"] for t in tasks}
    assert {"text-embedding", "image-classify", "tabular-classify"} <= names
    embedding = next(t for t in tasks if t["task"] == "text-embedding")
    assert embedding["topics"]["results"] == f"{stack.prefix}.results.text-embedding"


async def test_tasks_show_the_workers_batch_cost_and_the_drain_time_is_exported(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        for k in range(4):  # batches of one, one after another: the fit needs three
            await infer(client, "text-embedding", {"text": f"cost sample {k} " * (k + 1)})

        async def timed():
            tasks = (await client.get("/v1/tasks")).json()["tasks"]
            service = next(t for t in tasks if t["task"] == "text-embedding")["service"]
            return service if service and service["service_ms_per_item"] else None

        service = await until(timed, 15)  # workers report with their heartbeat
        metrics = (await client.get("/metrics")).text
    assert service, "no worker reported a service time"
    assert service["live_instances"] >= 1 and 0 < service["service_ms_per_item"] < 10_000
    fit = next(iter(service["workers"].values()))
    assert fit["batches"] >= 4 and fit["per_item_ms"] is not None and fit["version"]
    assert 'inference_drain_seconds{priority="normal",task="text-embedding"}' in metrics
