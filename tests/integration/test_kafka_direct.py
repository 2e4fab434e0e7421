"""Upstream producers and downstream consumers that know only Kafka, fastavro and the .avsc files."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form
from helpers.kafka import collect

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def single_object(schema: dict, record: dict) -> bytes:
    """Avro single-object encoding, as any Avro library writes it."""
    body = io.BytesIO()
    schemaless_writer(body, schema, record)
    return (
        b"\xc3\x01"
        + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        + body.getvalue()
    )


def read_single_object(schema: dict, data: bytes) -> dict:
    assert data[:2] == b"\xc3\x01"
    return schemaless_reader(io.BytesIO(data[10:]), schema)


async def test_upstream_producer_to_downstream_consumer(stack):
    request_schema = load_schema(str(SCHEMAS / "io.streaminfer.v1.InferenceRequest.avsc"))
    result_schema = load_schema(str(SCHEMAS / "io.streaminfer.v1.InferenceResult.avsc"))
    request_id = str(uuid.uuid4())
    record = {
        "request_id": request_id,
        "task": "text-embedding",
        "model_version": None,
        "priority": "NORMAL",
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [1],
                "data": [b"written straight to Kafka"],
            }
        ],
        "parameters": {},
        "created_at": int(time.time() * 1000),
        "deadline_at": None,
        "idempotency_key": None,
        "client_id": "upstream-test",
        "trace": {},
    }
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{stack.prefix}.requests.text-embedding.normal",
            single_object(request_schema, record),
            key=request_id.encode(),
        )
    finally:
        await producer.stop()

    def found(messages):
        return any(m.key == request_id.encode() for m in messages)

    messages = await collect(
        stack.bootstrap, f"{stack.prefix}.results.text-embedding", found, timeout_s=60
    )
    mine = [
        read_single_object(result_schema, m.value) for m in messages if m.key == request_id.encode()
    ]
    assert len(mine) == 1
    result = mine[0]
    assert result["status"] == "SUCCEEDED" and result["request_id"] == request_id
    embedding = result["outputs"][0]
    assert (
        embedding["name"] == "embedding"
        and embedding["datatype"] == "FP32"
        and embedding["shape"] == [1, 384]
    )
    vector = np.frombuffer(embedding["data"], dtype="<f4")
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-3

    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"*{request_id}*")]
    finally:
        await client.aclose()
    assert keys, "the result is also stored in Redis"

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        body = (await http.get(f"/v1/results/{request_id}")).json()
    assert body["status"] == "succeeded"
    assert np.allclose(body["outputs"]["embedding"], vector, atol=1e-6)
