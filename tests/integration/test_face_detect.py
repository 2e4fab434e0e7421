"""face-detect end to end: HTTP -> gateway (decodes the image) -> Kafka -> worker (the python
backend runs model.py) -> Redis -> HTTP, on the photographs scikit-image's wheel ships; and the
python backend's versions, hot reload and retries in a running worker."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import time

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
        bodies = await asyncio.gather(
            *(_infer(client, {"image": _png(image)}) for image, _ in cases)
        )
    for (_, point), body in zip(cases, bodies, strict=True):
        faces = body["outputs"]["faces"]
        if point is None:
            assert faces == []
        else:
            _assert_face_at(faces, point)


async def test_a_uint8_tensor(stack):
    small = _thumbnail(skimage_data.astronaut(), 256)
    tensor = {
        "name": "image",
        "datatype": "UINT8",
        "shape": [1, *small.shape],
        "data": small.ravel().tolist(),
    }
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        body = await _infer(client, [tensor])
        tasks = (await client.get("/v1/tasks")).json()
    _assert_face_at(body["outputs"]["faces"], (ASTRONAUT_FACE[0] / 2, ASTRONAUT_FACE[1] / 2))
    listed = {task["task"]: task for task in (tasks["tasks"] if isinstance(tasks, dict) else tasks)}
    assert listed[TASK]["backend"] == "python"
    assert listed[TASK]["friendly_json_outputs"] == {"faces": "faces_json"}


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (base64.b64encode(b"definitely not an image").decode(), "not a readable image"),
        (
            _png(np.zeros((700, 700, 3), dtype=np.uint8)),
            "image of 700x700 is too large; at most 307200",
        ),
    ],
)
async def test_hostile_images_are_refused_before_publishing(stack, image, fragment):
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        response = await client.post(
            f"/v1/infer/{TASK}", params={"wait": 5}, json={"inputs": {"image": image}}
        )
    assert response.status_code == 422, response.text
    assert fragment in response.text


@pytest.fixture
def face_repo(model_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / TASK, repo / TASK)
    return repo


def _drop_version(task_dir, version: str, old: str, new: str) -> None:
    """Version ``version``: version 1 with ``old`` replaced by ``new`` in its model.py, moved
    into place atomically (copy aside, then rename), as a deploy tool would."""
    staging = task_dir / f"tmp-{version}"
    shutil.copytree(task_dir / "1", staging)
    source = (staging / "model.py").read_text()
    assert old in source
    (staging / "model.py").write_text(source.replace(old, new))
    staging.rename(task_dir / version)


async def test_new_python_code_takes_traffic_and_versions_coexist(
    make_stack, redis_server, face_repo
):
    stack = make_stack(
        redis_url=redis_server,
        STREAMINFER_MODEL_REPOSITORY=str(face_repo),
        STREAMINFER_TASKS=TASK,
        STREAMINFER_WORKER_MODEL_POLL_S="0.5",
    )
    worker = stack.add_worker()
    stack.add_gateway()
    body = {"inputs": {"image": _png(skimage_data.astronaut())}, "parameters": {"cache": "false"}}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:

        async def infer(**extra) -> dict:
            response = await client.post(
                f"/v1/infer/{TASK}", params={"wait": 30}, json={**body, **extra}
            )
            assert response.status_code == 200, response.text
            return response.json()

        async def until_version(version: str) -> dict:
            deadline = time.monotonic() + 30
            served = await infer()
            while served["model"]["version"] != version and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                served = await infer()
            assert served["model"]["version"] == version, served
            return served

        first = await infer()
        assert first["model"]["version"] == "1"
        assert first["outputs"]["faces"][0]["confidence"] == pytest.approx(0.9994, abs=1e-4)

        # version 2: new code (confidence to 2 places) in the same worker process
        task_dir = face_repo / TASK
        _drop_version(task_dir, "2", "round(confidence(weight), 6)", "round(confidence(weight), 2)")
        second = await until_version("2")
        assert second["outputs"]["faces"][0]["confidence"] == 1.0
        assert second["outputs"]["faces"][0]["box"] == first["outputs"]["faces"][0]["box"]
        pinned = await infer(model_version="1")
        assert pinned["model"]["version"] == "1", "the old code still serves beside the new"
        assert (
            pinned["outputs"]["faces"][0]["confidence"]
            == first["outputs"]["faces"][0]["confidence"]
        )

        # version 3: predict_batch raises on real photos (its warm-up images are 96x128)
        _drop_version(
            task_dir,
            "3",
            "        height, width = image.shape[:2]\n",
            "        height, width = image.shape[:2]\n"
            "        if width > 200:\n            raise RuntimeError('broken release')\n",
        )
        deadline = time.monotonic() + 30
        failed = await client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json=body)
        while failed.json()["model"]["version"] != "3" and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            failed = await client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json=body)
        result = failed.json()
        assert result["status"] == "failed" and result["model"]["version"] == "3", result
        assert (
            result["error"]["code"] == "INFERENCE_FAILED"
            and "broken release" in result["error"]["message"]
        )
        assert result["error"]["retriable"] is True and result["attempts"] == 3, (
            "retried as any backend"
        )
        rollback = await infer(model_version="2")
        assert rollback["status"] == "succeeded" and len(rollback["outputs"]["faces"]) == 1
    assert worker.poll() is None, "no restart"
