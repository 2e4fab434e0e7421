"""Feature lookup through the real stack (broker, Redis, gateway, worker processes): requests that
name a row of tabular-classify's example table instead of sending its features.

The stack serves a private copy of the built tabular-classify (its model, the committed template,
a fresh table), so a test may break a row, or the whole database, without touching the shared
repository."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Stack
from helpers.http import assert_error
from helpers.kafka import collect

from streaminfer.models.builtin import template_path
from streaminfer.models.builtin.tabular_classify import FEATURE_TABLE, build_feature_table

pytestmark = pytest.mark.integration

TASK = "tabular-classify"
BROKEN = "7"
"""A row whose first column is set NULL."""


def private_repository(shared: Path, into: Path) -> Path:
    version = into / TASK / "1"
    version.mkdir(parents=True)
    for name in ("model.onnx", "metrics.json"):
        shutil.copy2(shared / TASK / "1" / name, version / name)
    shutil.copyfile(template_path(TASK), into / TASK / "model.yaml")
    build_feature_table(version / FEATURE_TABLE)
    return into


@pytest.fixture(scope="module")
def feature_stack(kafka_server, redis_server, model_repository, tmp_path_factory):
    repo = private_repository(model_repository, tmp_path_factory.mktemp("features-repo"))
    with contextlib.closing(sqlite3.connect(repo / TASK / "1" / FEATURE_TABLE)) as db, db:
        db.execute('UPDATE features SET "mean radius" = NULL WHERE entity_id = ?', (BROKEN,))
    stack = Stack(kafka_server, redis_server, repo)
    try:
        stack.add_worker()
        stack.add_gateway()
        yield stack
    finally:
        stack.close()


def row(index: int) -> dict[str, float]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return {
        str(name): float(value)
        for name, value in zip(data.feature_names, data.data[index], strict=True)
    }


async def infer(client: httpx.AsyncClient, inputs) -> dict:
    response = await client.post(
        f"/v1/infer/{TASK}", json={"inputs": inputs}, headers={"Prefer": "wait=30"}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_an_entity_id_gives_the_result_of_its_features(feature_stack) -> None:
    async with httpx.AsyncClient(base_url=feature_stack.gateway_url, timeout=40) as client:
        first = await infer(client, {"entity_id": "0"})
        direct = await infer(client, {"features": row(0)})
        second = await infer(client, {"entity_id": "0"})
    assert first["status"] == direct["status"] == second["status"] == "succeeded", first
    assert (
        first["outputs"]["label"] == direct["outputs"]["label"] == second["outputs"]["label"] == 0
    )
    assert first["outputs"]["probability"] == pytest.approx(
        direct["outputs"]["probability"], abs=1e-7
    )
    assert first["timings"]["feature_source"] == "db" and first["timings"]["feature_lookup_ms"] > 0
    assert (
        second["timings"]["feature_source"] == "cache"
        and second["timings"]["feature_lookup_ms"] > 0
    )
    assert "feature_source" not in direct["timings"]  # features sent: nothing looked up


async def test_several_entities_in_one_request(feature_stack) -> None:
    async with httpx.AsyncClient(base_url=feature_stack.gateway_url, timeout=40) as client:
        many = await infer(client, {"entity_id": ["1", "568", "20"]})
        direct = await infer(client, {"features": [row(1), row(568), row(20)]})
    assert many["status"] == "succeeded" and many["outputs"]["label"] == direct["outputs"]["label"]
    assert np.allclose(many["outputs"]["probability"], direct["outputs"]["probability"], atol=1e-7)


async def test_unknown_and_broken_entities_fail_with_their_codes(feature_stack) -> None:
    async with httpx.AsyncClient(base_url=feature_stack.gateway_url, timeout=40) as client:
        unknown = await infer(client, {"entity_id": "99999"})
        injected = await infer(client, {"entity_id": "0' OR '1'='1"})
        broken = await infer(client, {"entity_id": BROKEN})
        fine = await infer(client, {"entity_id": "8"})  # the worker goes on
    assert unknown["status"] == "failed" and unknown["error"]["code"] == "FEATURES_NOT_FOUND", (
        unknown
    )
    assert "99999" in unknown["error"]["message"] and unknown["error"]["retriable"] is False
    assert injected["status"] == "failed" and injected["error"]["code"] == "FEATURES_NOT_FOUND"
    assert (
        broken["status"] == "failed" and broken["error"]["code"] == "FEATURE_VALIDATION_FAILED"
    ), broken
    assert "mean radius" in broken["error"]["message"] and "NULL" in broken["error"]["message"]
    assert fine["status"] == "succeeded"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"entity_id": ""}, "printable characters"),
        ({"entity_id": "x" * 129}, "got 129 characters"),
        ({"entity_id": 0}, "must be a string"),
        ({"entity_id": ["0", None]}, "item 1 must be a string"),
        ({"entity_id": "0", "features": {"mean radius": 1.0}}, "not both"),
    ],
)
async def test_hostile_entity_ids_are_refused_at_the_gateway(
    feature_stack, inputs, message: str
) -> None:
    async with httpx.AsyncClient(base_url=feature_stack.gateway_url, timeout=40) as client:
        response = await client.post(f"/v1/infer/{TASK}", json={"inputs": inputs})
    assert message in assert_error(response, 422, "INVALID_REQUEST")["message"]


async def test_a_kafka_direct_request_with_an_entity_id(feature_stack) -> None:
    from aiokafka import AIOKafkaProducer

    from streaminfer.schemas.codec import AvroCodec
    from streaminfer.schemas.records import InferenceRequest, InferenceResult, Status, Tensor

    codec = AvroCodec()
    request = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        created_at=int(time.time() * 1000),
        inputs=[Tensor.from_numpy("entity_id", np.array(["3"], dtype=object))],
    )
    producer = AIOKafkaProducer(bootstrap_servers=feature_stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{feature_stack.prefix}.requests.{TASK}.normal",
            codec.encode(request),
            key=request.request_id.encode(),
        )
    finally:
        await producer.stop()
    key = request.request_id.encode()
    messages = await collect(
        feature_stack.bootstrap,
        f"{feature_stack.prefix}.results.{TASK}",
        lambda found: any(m.key == key for m in found),
        timeout_s=60,
    )
    results = [codec.decode(m.value, InferenceResult) for m in messages if m.key == key]
    assert len(results) == 1 and results[0].status is Status.SUCCEEDED, results
    outputs = {t.name: t.to_numpy() for t in results[0].outputs}
    async with httpx.AsyncClient(base_url=feature_stack.gateway_url, timeout=40) as client:
        direct = await infer(client, {"features": row(3)})
    assert int(outputs["label"][0]) == direct["outputs"]["label"]
    assert (
        results[0].timings.feature_source in ("db", "cache")
        and results[0].timings.feature_lookup_ms > 0
    )


async def test_a_database_outage_holds_requests_until_it_is_back(
    kafka_server, redis_server, model_repository, tmp_path: Path
) -> None:
    """STREAMINFER_FEATURE_STORE_URL points the worker at a database that is not there yet."""
    repo = private_repository(model_repository, tmp_path / "repo")
    database = tmp_path / "elsewhere.sqlite"
    stack = Stack(
        kafka_server, redis_server, repo, STREAMINFER_FEATURE_STORE_URL=f"sqlite:///{database}"
    )
    try:
        stack.add_worker()
        stack.add_gateway()
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=40) as client:
            accepted = await client.post(f"/v1/infer/{TASK}", json={"inputs": {"entity_id": "2"}})
            assert accepted.status_code == 202, accepted.text
            request_id = accepted.json()["request_id"]
            held = await client.get(f"/v1/results/{request_id}", params={"wait": 3})
            assert held.json()["status"] in ("queued", "running"), (
                held.text
            )  # not failed, not lettered
            build_feature_table(database)  # the database comes back
            done = await client.get(f"/v1/results/{request_id}", params={"wait": 30})
        assert done.json()["status"] == "succeeded", done.text
        assert done.json()["timings"]["feature_source"] == "db"
        log = stack.worker_logs[0].read_text(errors="replace")
        assert "feature table" in log or "feature database" in log  # the wait is logged...
        assert str(database) not in log  # ...without the URL (it may hold a password)
    finally:
        stack.close()


def test_streaminfer_submit_entity_id(feature_stack) -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaminfer",
            "submit",
            TASK,
            "--entity-id",
            "0",
            "1",
            "--wait",
            "30",
            "--url",
            feature_stack.gateway_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=feature_stack.env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    body = json.loads(out.stdout)
    assert body["status"] == "succeeded" and body["outputs"]["label"] == [0, 0], body
    assert body["timings"]["feature_source"] in ("db", "cache")


async def test_open_inference_protocol_with_an_entity_id(feature_stack) -> None:
    def body(*ids: str) -> dict:
        return {
            "inputs": [
                {"name": "entity_id", "datatype": "BYTES", "shape": [len(ids)], "data": list(ids)}
            ]
        }

    async with httpx.AsyncClient(base_url=feature_stack.gateway_url, timeout=40) as client:
        ok = await client.post(f"/v2/models/{TASK}/infer", json=body("0", "9"))
        unknown = await client.post(f"/v2/models/{TASK}/infer", json=body("99999"))
        broken = await client.post(f"/v2/models/{TASK}/infer", json=body(BROKEN))
        direct = await infer(client, {"features": [row(0), row(9)]})
    assert ok.status_code == 200, ok.text
    labels = next(o for o in ok.json()["outputs"] if o["name"] == "label")
    assert labels["shape"] == [2] and labels["data"] == direct["outputs"]["label"]
    assert assert_error(unknown, 404, "FEATURES_NOT_FOUND")["details"]["status"] == "failed"
    assert_error(broken, 422, "FEATURE_VALIDATION_FAILED")
