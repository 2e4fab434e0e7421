"""A burst is served in batches, and every request gets exactly one result."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from helpers.kafka import collect

pytestmark = pytest.mark.integration

BURST = 200


async def test_burst_of_200_is_batched_with_one_result_each(stack):
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, timeout=60, limits=httpx.Limits(max_connections=100)
    ) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v1/infer/text-embedding",
                    json={"inputs": {"text": f"burst sentence number {i}"}},
                )
                for i in range(BURST)
            )
        )
        assert all(r.status_code == 202 for r in responses)
        ids = [r.json()["request_id"] for r in responses]
        bodies = await asyncio.gather(
            *(client.get(f"/v1/results/{rid}", params={"wait": 60}) for rid in ids)
        )
    results = [b.json() for b in bodies]
    assert all(r["status"] == "succeeded" for r in results), [
        r for r in results if r["status"] != "succeeded"
    ][:3]
    assert max(r["batch_size"] for r in results) > 1

    wanted = {rid.encode() for rid in ids}

    def complete(messages):
        return wanted <= {m.key for m in messages}

    messages = await collect(
        stack.bootstrap, f"{stack.prefix}.results.text-embedding", complete, timeout_s=60
    )
    counts = Counter(m.key for m in messages if m.key in wanted)
    assert len(counts) == BURST
    assert set(counts.values()) == {1}, "each request has exactly one result on the results topic"
