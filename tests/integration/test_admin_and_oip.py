"""Open Inference Protocol requests and admin endpoints against the real worker, broker and Redis."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration


async def test_kserve_v2_infer_metadata_and_health(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        body = {
            "id": "kserve-1",
            "inputs": [
                {
                    "name": "text",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": ["first sentence", "second sentence"],
                }
            ],
        }
        response = await client.post("/v2/models/text-embedding/infer", json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["id"] == "kserve-1" and result["model_name"] == "text-embedding"  # the task
        (embedding,) = result["outputs"]
        assert embedding["name"] == "embedding" and embedding["shape"] == [2, 384]
        vectors = np.array(embedding["data"], dtype=np.float32).reshape(2, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
        # a Triton-client-shaped body (flat data, explicit output request) on a pinned version
        digits = {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 8, 8],
                    "datatype": "FP32",
                    "data": [0.0] * 64,
                    "parameters": {"binary_data": False},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
        }
        pinned = await client.post("/v2/models/image-classify/versions/1/infer", json=digits)
        assert pinned.status_code == 200 and [o["name"] for o in pinned.json()["outputs"]] == [
            "label"
        ]
        meta = (await client.get("/v2/models/image-classify")).json()
        assert meta["platform"] == "pytorch_torchscript" and meta["inputs"][0]["shape"] == [
            -1,
            8,
            8,
        ]
        assert (await client.get("/v2/models/text-embedding/ready")).json()["ready"] is True
        assert (await client.get("/v2/health/ready")).status_code == 200
        bad = await client.post(
            "/v2/models/text-embedding/infer",
            json={"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        )
        assert bad.status_code == 422 and bad.json()["error_code"] == "INVALID_REQUEST"


async def test_admin_stats_and_cleanup(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        for i in range(3):
            await client.post(
                "/v1/infer/tabular-classify",
                params={"wait": 30},
                json={
                    "inputs": [
                        {
                            "name": "features",
                            "datatype": "FP32",
                            "shape": [1, 30],
                            "data": [float(i)] * 30,
                        }
                    ]
                },
            )
        stats = (await client.get("/admin/stats")).json()
        tabular = stats["tasks"]["tabular-classify"]
        assert tabular["priorities"]["normal"]["throughput_per_s"] > 0
        assert tabular["priorities"]["normal"]["latency_ms"]["p50"] >= 0
        assert tabular["live_workers"] and stats["workers"] >= 1
        assert "lag" in tabular["priorities"]["high"]
        kept = (await client.post("/admin/cleanup", params={"older_than_s": 3600})).json()
        assert kept["purged_keys"] == 0 and kept["scanned"] > 0
