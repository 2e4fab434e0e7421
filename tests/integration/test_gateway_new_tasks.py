"""A task dropped into the repository that no worker serves is refused by the gateway (503 with
Retry-After) instead of queueing forever; once a worker serves it, it is accepted and answered.
A task once served stays accepted while its workers are down: Kafka holds its requests."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
import yaml
from helpers.http import assert_error
from helpers.waiting import until

pytestmark = pytest.mark.integration

OLD, NEW = "tabular-classify", "tabular-fresh"


@pytest.fixture
def two_task_repo(model_repository, tmp_path):
    """The built tabular-classify, and a copy of it under a task name no worker has served."""
    repo = tmp_path / "repo"
    for task in (OLD, NEW):
        shutil.copytree(model_repository / OLD, repo / task)
    config = yaml.safe_load((repo / NEW / "model.yaml").read_text())
    config["task"] = NEW
    (repo / NEW / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return repo


async def test_a_task_no_worker_serves_is_refused_until_one_does(
    make_stack, redis_server, two_task_repo
):
    from sklearn.datasets import load_breast_cancer

    from streaminfer.embedded import terminate, wait_for_http

    data = load_breast_cancer()
    body = {
        "inputs": {"features": dict(zip(data.feature_names, map(float, data.data[0]), strict=True))}
    }
    stack = make_stack(redis_url=redis_server, STREAMINFER_MODEL_REPOSITORY=str(two_task_repo))
    old_worker = stack.add_worker(STREAMINFER_TASKS=OLD)  # started before the new task existed
    url = stack.add_gateway(wait=False)  # serves every task in the repository: /ready stays 503
    wait_for_http(f"{url}/health", stack.gateways)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def old_answered():
            response = await client.post(f"/v1/infer/{OLD}", params={"wait": 30}, json=body)
            return response if response.status_code == 200 else None

        assert await until(old_answered, timeout_s=60), "the served task works"
        ready = (await client.get("/ready")).json()
        assert ready["checks"][f"worker:{OLD}"] and not ready["checks"][f"worker:{NEW}"]

        refused = await client.post(f"/v1/infer/{NEW}", json=body)
        error = assert_error(refused, 503, "SERVICE_UNAVAILABLE")
        assert error["details"]["task"] == NEW and int(refused.headers["retry-after"]) >= 1
        assert (
            assert_error(
                await client.post(
                    f"/v2/models/{NEW}/infer",
                    json={
                        "inputs": [
                            {
                                "name": "features",
                                "datatype": "FP32",
                                "shape": [1, 30],
                                "data": [0.0] * 30,
                            }
                        ]
                    },
                ),
                503,
                "SERVICE_UNAVAILABLE",
            )["details"]["task"]
            == NEW
        )

        # with its only worker gone, a task once served is still accepted: Kafka holds it
        assert terminate(old_worker, 20) == 0
        ready = (await client.get("/ready")).json()
        assert not ready["checks"][f"worker:{OLD}"], "its heartbeat is gone"
        queued = await client.post(f"/v1/infer/{OLD}", json=body)
        assert queued.status_code == 202, queued.text

        stack.add_worker(STREAMINFER_TASKS=f"{OLD},{NEW}")

        async def new_accepted():
            response = await client.post(f"/v1/infer/{NEW}", params={"wait": 30}, json=body)
            return response if response.status_code != 503 else None

        answered = await until(new_accepted, timeout_s=90)
        assert answered is not None, "still refused after a worker took the task up"
        assert answered.status_code == 200 and answered.json()["status"] == "succeeded", (
            answered.text
        )
        assert answered.json()["task"] == NEW
        held = await client.get(f"/v1/results/{queued.json()['request_id']}", params={"wait": 30})
        assert held.json()["status"] == "succeeded", (
            "the request accepted while no worker ran was answered"
        )


async def test_a_worker_serving_the_whole_repository_takes_up_a_task_dropped_into_it(
    make_stack, redis_server, model_repository, tmp_path
):
    """A worker started without a task list serves a task that appears later: it creates the
    topics, subscribes and warms the model; the gateway then accepts the task and it is answered."""
    from sklearn.datasets import load_breast_cancer

    repo = tmp_path / "repo"
    shutil.copytree(model_repository / OLD, repo / OLD)
    data = load_breast_cancer()
    body = {
        "inputs": {"features": dict(zip(data.feature_names, map(float, data.data[3]), strict=True))}
    }
    stack = make_stack(
        redis_url=redis_server,
        STREAMINFER_MODEL_REPOSITORY=str(repo),
        STREAMINFER_WORKER_MODEL_POLL_S="1",
    )
    stack.add_worker()
    url = stack.add_gateway()
    shutil.copytree(model_repository / OLD, tmp_path / "staging")  # complete before it appears
    config = yaml.safe_load((tmp_path / "staging" / "model.yaml").read_text())
    config["task"] = NEW
    (tmp_path / "staging" / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp_path / "staging").rename(repo / NEW)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def answered():
            response = await client.post(f"/v1/infer/{NEW}", params={"wait": 20}, json=body)
            return response if response.status_code == 200 else None

        response = await until(answered, timeout_s=90)
        assert response is not None, "the new task was never served"
        assert response.json()["status"] == "succeeded" and response.json()["task"] == NEW
        old = await client.post(f"/v1/infer/{OLD}", params={"wait": 20}, json=body)
        assert old.status_code == 200, "the old task is still served after the rebalance"
    print(
        f"\nnew task served {time.monotonic() - started:.1f}s after it appeared in the repository"
    )
