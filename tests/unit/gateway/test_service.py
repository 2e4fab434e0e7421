"""InferenceService: an Idempotency-Key stays bound to its request_id across a publish that timed
out (the request may have been delivered), and the retry publishes it again under that id."""

from __future__ import annotations

import pytest
from helpers.http import assert_error

from streaminfer.gateway.errors import ServiceUnavailable

BODY = {"inputs": {"x": [1, 2, 3]}}


def times_out_once(gateway):
    """The first publish reaches the broker but its acknowledgement never comes back in time:
    the real producer answers ServiceUnavailable after its timeout."""
    original = gateway.producer.submit
    calls = []

    async def submit(request, accepted):
        calls.append(request.request_id)
        await original(request, accepted)  # delivered...
        if len(calls) == 1:
            raise ServiceUnavailable(
                "the message broker is not reachable; retry later"
            )  # ...unconfirmed

    gateway.producer.submit = submit
    return calls


def test_a_retry_after_a_publish_timeout_keeps_the_request_id_and_publishes_it_again(gateway):
    calls = times_out_once(gateway)
    headers = {"Idempotency-Key": "order-1"}
    failed = gateway.post("/v1/infer/tiny", json=BODY, headers=headers)
    assert_error(failed, 503, "SERVICE_UNAVAILABLE")
    assert failed.headers["retry-after"]
    first_id = calls[0]

    retried = gateway.post("/v1/infer/tiny", json=BODY, headers=headers)
    assert retried.status_code == 202, retried.text
    assert retried.json()["request_id"] == first_id, "the same request, not a second one"
    assert calls == [first_id, first_id], "published again under the same request_id"
    assert [r.idempotency_key for r, _ in gateway.producer.sent] == ["order-1", "order-1"]

    again = gateway.post("/v1/infer/tiny", json=BODY, headers=headers)
    assert again.json()["request_id"] == first_id
    assert len(calls) == 2, "once acknowledged, a retry publishes nothing"
    conflict = assert_error(
        gateway.post("/v1/infer/tiny", json={"inputs": {"x": [3, 2, 1]}}, headers=headers),
        409,
        "IDEMPOTENCY_CONFLICT",
    )
    assert conflict["details"]["request_id"] == first_id


def test_a_republished_request_keeps_the_state_a_worker_gave_it(gateway):
    calls = times_out_once(gateway)
    headers = {"Idempotency-Key": "order-2"}
    gateway.post("/v1/infer/tiny", json=BODY, headers=headers)
    gateway.store.statuses[calls[0]]["status"] = "running"  # a worker took the delivered copy
    assert (
        gateway.post("/v1/infer/tiny", json=BODY, headers=headers).json()["request_id"] == calls[0]
    )
    assert gateway.store.statuses[calls[0]]["status"] == "running"


def test_a_failure_before_publishing_keeps_the_key_bound_too(gateway):
    failures = []

    async def redis_away(request_id, task, client_id):
        failures.append(request_id)
        raise ServiceUnavailable("the result store is not reachable; retry later")

    original = gateway.store.mark_queued
    gateway.store.mark_queued = redis_away
    headers = {"Idempotency-Key": "order-3"}
    assert_error(
        gateway.post("/v1/infer/tiny", json=BODY, headers=headers), 503, "SERVICE_UNAVAILABLE"
    )
    assert gateway.producer.sent == []
    gateway.store.mark_queued = original
    retried = gateway.post("/v1/infer/tiny", json=BODY, headers=headers)
    assert retried.json()["request_id"] == failures[0]
    assert [r.request_id for r, _ in gateway.producer.sent] == failures


def test_without_a_key_each_submission_is_its_own_request(gateway):
    times_out_once(gateway)
    assert gateway.post("/v1/infer/tiny", json=BODY).status_code == 503
    ok = gateway.post("/v1/infer/tiny", json=BODY)
    assert ok.status_code == 202
    first, second = (r.request_id for r, _ in gateway.producer.sent)
    assert ok.json()["request_id"] == second != first


@pytest.mark.parametrize(
    "kafka, redis, workers, ready",
    [
        (True, True, {"w1": ["tiny"]}, True),
        (False, True, {"w1": ["tiny"]}, False),
        (True, False, {"w1": ["tiny"]}, False),
        (True, True, {"w1": ["other"]}, False),
        (True, True, {}, False),
    ],
)
def test_both_readiness_routes_answer_from_one_check(gateway, kafka, redis, workers, ready):
    gateway.producer.reachable = kafka
    gateway.store.workers = workers

    async def ping():
        return redis

    gateway.store.ping = ping
    v1, v2 = gateway.get("/ready"), gateway.get("/v2/health/ready")
    assert v1.status_code == v2.status_code == (200 if ready else 503)
    assert v2.json() == {"ready": ready}
    served = redis and any("tiny" in tasks for tasks in workers.values())
    assert v1.json()["checks"] == {"kafka": kafka, "redis": redis, "worker:tiny": served}


def test_an_unknown_version_is_the_same_404_on_v1_and_v2(gateway):
    v1 = assert_error(
        gateway.post("/v1/infer/tiny", json={**BODY, "model_version": "9"}),
        404,
        "MODEL_VERSION_NOT_FOUND",
    )
    v2 = assert_error(gateway.get("/v2/models/tiny/versions/9"), 404, "MODEL_VERSION_NOT_FOUND")
    assert v1["message"] == v2["message"] == "task 'tiny' serves no model version '9'"
    assert v1["details"] == {"versions": ["1"]}
    assert v2["details"] == v1["details"]
