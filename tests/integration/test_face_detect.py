"""face-detect end to end: HTTP -> gateway (decodes the image) -> Kafka -> worker (the python
backend runs model.py) -> Redis -> HTTP, on the photographs scikit-image's wheel ships."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from streaminfer.models.builtin.face_detect import ASTRONAUT_FACE

pytestmark = pytest.mark.integration
skimage_data = pytest.importorskip("skimage.data")
TASK = "face-detect"


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    small = Image.fromarray(image)
    small.thumbnail((size, size))
    return np.asarray(small)


async def _infer(client: httpx.AsyncClient, inputs) -> dict:
    response = await client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json={"inputs": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded", body
    return body


def _assert_face_at(faces: list, point: tuple[float, float]) -> None:
    assert len(faces) == 1, faces
    box = faces[0]["box"]
    assert box["x"] <= point[0] <= box["x"] + box["width"], (box, point)
    assert box["y"] <= point[1] <= box["y"] + box["height"], (box, point)
    assert 0.5 < faces[0]["confidence"] <= 1.0


async def test_the_astronaut_png_has_one_face(stack):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        body = await _infer(client, {"image": _png(skimage_data.astronaut())})
    assert body["model"]["name"] == "haar-frontal-face" and body["model"]["version"] == "1"
    assert set(body["outputs"]) == {"faces"}
    _assert_face_at(body["outputs"]["faces"], ASTRONAUT_FACE)


async def test_images_of_different_sizes_at_once(stack):
    """Sent together, so that the worker may batch them: each answer is in its own pixels."""
    astronaut = skimage_data.astronaut()
    cases = [
        (astronaut, ASTRONAUT_FACE),
        (_thumbnail(astronaut, 256), (ASTRONAUT_FACE[0] / 2, ASTRONAUT_FACE[1] / 2)),
        (np.ascontiguousarray(astronaut[:, ::-1]), (511 - ASTRONAUT_FACE[0], ASTRONAUT_FACE[1])),
        (skimage_data.coffee(), None),
        (_thumbnail(skimage_data.coffee(), 256), None),
    ]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        bodies = await asyncio.gather(*(_infer(client, {"image": _png(image)}) for image, _ in cases))
    for (_, point), body in zip(cases, bodies, strict=True):
        faces = body["outputs"]["faces"]
        if point is None:
            assert faces == []
        else:
            _assert_face_at(faces, point)


async def test_a_uint8_tensor(stack):
    small = _thumbnail(skimage_data.astronaut(), 256)
    tensor = {"name": "image", "datatype": "UINT8", "shape": [1, *small.shape], "data": small.ravel().tolist()}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        body = await _infer(client, [tensor])
        tasks = (await client.get("/v1/tasks")).json()
    _assert_face_at(body["outputs"]["faces"], (ASTRONAUT_FACE[0] / 2, ASTRONAUT_FACE[1] / 2))
    listed = {task["task"]: task for task in (tasks["tasks"] if isinstance(tasks, dict) else tasks)}
    assert listed[TASK]["backend"] == "python"
    assert listed[TASK]["friendly_json_outputs"] == {"faces": "faces_json"}


@pytest.mark.parametrize(("image", "fragment"), [
    (base64.b64encode(b"definitely not an image").decode(), "not a readable image"),
    (_png(np.zeros((700, 700, 3), dtype=np.uint8)), "image of 700x700 is too large; at most 307200"),
])
async def test_hostile_images_are_refused_before_publishing(stack, image, fragment):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        response = await client.post(f"/v1/infer/{TASK}", params={"wait": 5}, json={"inputs": {"image": image}})
    assert response.status_code == 422, response.text
    assert fragment in response.text
