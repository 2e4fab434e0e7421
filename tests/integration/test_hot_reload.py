"""Hot model reload: a new version directory dropped into the repository takes traffic without
restarting the worker, warm first; results carry the version that served them."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def small_repo(model_repository, tmp_path):
    repo = tmp_path / "repo"
    (repo / "tabular-classify").mkdir(parents=True)
    shutil.copy(
        model_repository / "tabular-classify" / "model.yaml",
        repo / "tabular-classify" / "model.yaml",
    )
    shutil.copytree(model_repository / "tabular-classify" / "1", repo / "tabular-classify" / "1")
    return repo


async def test_a_new_version_directory_takes_traffic_without_a_restart(
    make_stack, redis_server, small_repo
):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    body = {
        "inputs": {"features": dict(zip(data.feature_names, map(float, data.data[0]), strict=True))}
    }
    stack = make_stack(
        redis_url=redis_server,
        STREAMINFER_MODEL_REPOSITORY=str(small_repo),
        STREAMINFER_TASKS="tabular-classify",
        STREAMINFER_WORKER_MODEL_POLL_S="0.5",
    )
    worker = stack.add_worker()
    stack.add_gateway()
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:

        async def infer(**extra):
            response = await client.post(
                "/v1/infer/tabular-classify", params={"wait": 30}, json={**body, **extra}
            )
            assert response.status_code == 200, response.text
            return response.json()

        before = await infer()
        assert before["model"]["version"] == "1"
        # drop version 2 in atomically (copy aside, then rename), as a deploy tool would
        task_dir = small_repo / "tabular-classify"
        shutil.copytree(task_dir / "1", task_dir / "tmp-2")
        (task_dir / "tmp-2").rename(task_dir / "2")
        deadline = time.monotonic() + 30
        served = before
        while served["model"]["version"] != "2" and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            served = await infer()
        assert served["model"]["version"] == "2"
        assert served["outputs"] == before["outputs"], "same weights, same answer"
        pinned = await infer(model_version="1")
        assert pinned["model"]["version"] == "1", "a pinned older version still serves"
        deadline = time.monotonic() + 10  # the gateway re-reads the repository on its own poll
        while True:
            tasks = (await client.get("/v1/tasks")).json()["tasks"]
            if tasks[0]["versions"] == ["1", "2"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert tasks[0]["versions"] == ["1", "2"] and tasks[0]["default_version"] == "2"

        # version 3: only the two newest are served; version 1 is unloaded and refused
        shutil.copytree(task_dir / "1", task_dir / "tmp-3")
        (task_dir / "tmp-3").rename(task_dir / "3")
        deadline = time.monotonic() + 30
        while served["model"]["version"] != "3" and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            served = await infer()
        assert served["model"]["version"] == "3"
        assert (await infer(model_version="2"))["model"]["version"] == "2", (
            "the one before still serves"
        )
        deadline = time.monotonic() + 10
        while True:
            refused = await client.post(
                "/v1/infer/tabular-classify", json={**body, "model_version": "1"}
            )
            if refused.status_code == 404 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert (
            refused.status_code == 404 and refused.json()["error_code"] == "MODEL_VERSION_NOT_FOUND"
        )
        assert refused.json()["details"]["versions"] == ["2", "3"]
    assert worker.poll() is None, "no restart"
    deadline = time.monotonic() + 10
    while (
        "version 1 unloaded" not in stack.worker_logs[0].read_text() and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.3)
    assert "version 1 unloaded" in stack.worker_logs[0].read_text(), "the worker let version 1 go"
