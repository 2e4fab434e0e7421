"""A task no worker has ever served is refused with 503 and Retry-After (its requests would queue
forever); a task once served is accepted while its workers are down (Kafka holds its requests).
The record lives in Redis, fed from the heartbeats; look-ups are cached."""

from __future__ import annotations

import pytest
from helpers.http import assert_error

from streaminfer.gateway.served import ServedTasks

BODY = {"inputs": {"x": [1, 2, 3]}}
OIP_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}


@pytest.fixture
def unserved(gateway):
    """No worker has ever announced task ``tiny``; look-ups are not cached (refresh_s=0)."""
    gateway.store.workers = {"w1": ["other-task"]}
    service = gateway.app.state.service
    service.served = ServedTasks(gateway.store, refresh_s=0)
    return gateway


def test_a_task_no_worker_has_served_is_refused(unserved):
    for path, body in (("/v1/infer/tiny", BODY), ("/v2/models/tiny/infer", OIP_BODY)):
        response = unserved.post(path, json=body)
        refused = assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert refused["details"]["task"] == "tiny" and "tiny" in refused["message"]
        assert int(response.headers["retry-after"]) >= 1
    assert unserved.producer.sent == []
    assert unserved.store.served == {"other-task"}, "what the heartbeats said is recorded"

    unserved.store.workers = {"w1": ["other-task"], "w2": ["tiny"]}  # a worker takes it up
    assert unserved.post("/v1/infer/tiny", json=BODY).status_code == 202
    assert unserved.store.served == {"other-task", "tiny"}


def test_a_task_once_served_is_accepted_while_its_workers_are_down(unserved):
    unserved.store.workers = {"w2": ["tiny"]}
    assert (
        unserved.get("/ready").json()["checks"]["worker:tiny"] is True
    )  # /ready's heartbeat read counts
    unserved.store.workers = {}
    assert unserved.get("/ready").status_code == 503
    assert unserved.post("/v1/infer/tiny", json=BODY).status_code == 202


def test_a_task_another_gateway_saw_served_is_accepted(unserved):
    unserved.store.workers = {}
    unserved.store.served = {"tiny"}  # recorded in Redis before this gateway started
    assert unserved.post("/v1/infer/tiny", json=BODY).status_code == 202


def test_look_ups_are_cached(gateway):
    reads = []
    live_workers = gateway.store.live_workers

    async def counted():
        reads.append(1)
        return await live_workers()

    gateway.store.live_workers = counted
    for _ in range(5):
        assert gateway.post("/v1/infer/tiny", json=BODY).status_code == 202
    assert len(reads) == 1, "a task seen served costs no Redis call afterwards"

    gateway.store.workers, gateway.store.served = {}, set()  # a fresh deployment, no worker yet
    service = gateway.app.state.service
    service.served = ServedTasks(gateway.store, refresh_s=60)
    reads.clear()
    for _ in range(5):
        assert_error(gateway.post("/v1/infer/tiny", json=BODY), 503, "SERVICE_UNAVAILABLE")
    assert len(reads) == 1, "an unserved task is looked up at most once per refresh_s"
