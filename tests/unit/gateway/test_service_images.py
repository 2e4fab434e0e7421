"""Image inputs never hold up the event loop (review finding 1 of issue 11): a huge declared image
is refused from its header, and images within the bounds are decoded in a worker thread, while a
concurrent GET /health answers at once."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
from helpers.http import assert_error
from PIL import Image


def png(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("1", (side, side), 1).save(buffer, "PNG")  # white: a few KB however large
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def health_while_posting(app, body: dict) -> tuple[httpx.Response, float, float]:
    """POST ``body`` to image-classify and, while it runs, GET /health: the POST's response, the
    seconds /health took from when the POST started, and the seconds the POST took."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", timeout=60
    ) as client:
        started = time.perf_counter()
        posting = asyncio.create_task(client.post("/v1/infer/image-classify", json=body))
        await asyncio.sleep(0.02)  # the POST is being handled (or blocks the loop, before the fix)
        health = await client.get("/health")
        health_s = time.perf_counter() - started
        assert health.status_code == 200
        response = await posting
        return response, health_s, time.perf_counter() - started


async def test_huge_pngs_are_refused_without_holding_up_health(builtin_gateway):
    # 4096x4096 1-bit PNGs: ~3 KB of base64 each, ~0.5 s each to decode
    response, health_s, post_s = await health_while_posting(
        builtin_gateway.app, {"inputs": {"image": [png(4096)] * 8}}
    )
    assert "is too large" in assert_error(response, 422, "INVALID_REQUEST")["message"]
    assert health_s < 0.5 and post_s < 1.0, (health_s, post_s)
    assert builtin_gateway.producer.sent == []


async def test_images_within_the_bounds_are_decoded_off_the_event_loop(builtin_gateway):
    images = [
        png(2048)
    ] * 4  # each at models.friendly.MAX_IMAGE_PIXELS, all at MAX_REQUEST_IMAGE_PIXELS
    response, health_s, post_s = await health_while_posting(
        builtin_gateway.app, {"inputs": {"image": images}}
    )
    assert response.status_code == 202, response.text
    assert health_s < post_s / 2 and health_s < 0.3, (health_s, post_s)
    assert len(builtin_gateway.producer.sent) == 1


def test_a_gif_is_refused(builtin_gateway):
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "GIF")
    body = {"inputs": {"image": base64.b64encode(buffer.getvalue()).decode()}}
    response = builtin_gateway.post("/v1/infer/image-classify", json=body)
    assert "PNG or JPEG" in assert_error(response, 422, "INVALID_REQUEST")["message"]
