"""Routes and the error model, through an ASGI test client."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.http import assert_error as error

from streaminfer.gateway.app import AuthNotConfigured, create_app
from streaminfer.schemas.records import InferenceResult, Priority, Status, Tensor
from streaminfer.settings import Settings


def test_submit_publishes_a_request_and_answers_202(gateway):
    response = gateway.post(
        "/v1/infer/tiny",
        json={"inputs": {"x": [1, 2, 3]}, "priority": 8, "parameters": {"cache": False}},
    )
    assert response.status_code == 202
    body = response.json()
    request, accepted = gateway.producer.sent[0]
    assert body["request_id"] == request.request_id == accepted.request_id
    assert body["priority"] == "high" and request.priority is Priority.HIGH
    assert request.parameters == {"cache": "False"}
    assert request.inputs[0].to_numpy().tolist() == [[1.0, 2.0, 3.0]]
    assert response.headers["x-request-id"] == request.request_id


def test_a_client_request_id_is_echoed_over_the_assigned_one(gateway):
    response = gateway.post(
        "/v1/infer/tiny",
        json={"inputs": {"x": [1, 2, 3]}},
        headers={"X-Request-ID": "client-trace-7"},
    )
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "client-trace-7"
    assert response.json()["request_id"] != "client-trace-7"  # the request still gets its own id
    missing = gateway.get("/v1/results/nope", headers={"X-Request-ID": "client-trace-8"})
    assert missing.headers["x-request-id"] == "client-trace-8"


def test_oip_tensors_are_accepted(gateway):
    response = gateway.post(
        "/v1/infer/tiny",
        json={
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}
            ]
        },
    )
    assert response.status_code == 202
    assert gateway.producer.sent[0][0].inputs[0].shape == [2, 3]


@pytest.mark.parametrize(
    "body,status",
    [
        ({"inputs": {"x": [1, 2]}}, 422),  # wrong shape
        ({"inputs": {"x": [1, 2, "three"]}}, 422),  # not numbers
        ({"inputs": {"x": [[1, 2, 3]] * 5}}, 422),  # more items than max_batch_size
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1]}]}, 422),
        ({"inputs": [{"name": "x", "datatype": "NOPE", "shape": [1, 3], "data": [1, 2, 3]}]}, 422),
        ({"inputs": {"x": [1, 2, 3]}, "deadline_ms": -5}, 422),
        ({"inputs": {"x": [1, 2, 3]}, "priority": 11}, 422),
        ({}, 422),
    ],
)
def test_invalid_bodies_are_rejected_before_publishing(gateway, body, status):
    error(gateway.post("/v1/infer/tiny", json=body), status, "INVALID_REQUEST")
    assert gateway.producer.sent == []


def test_malformed_json_and_oversize_bodies(gateway):
    error(
        gateway.post(
            "/v1/infer/tiny", content=b"{nope", headers={"content-type": "application/json"}
        ),
        400,
        "INVALID_REQUEST",
    )
    error(
        gateway.post("/v1/infer/tiny", json={"inputs": {"x": [1.0] * 5000}}),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    assert gateway.producer.sent == []


def test_unknown_task_route_and_method(gateway):
    body = error(
        gateway.post("/v1/infer/nope", json={"inputs": {"x": [1, 2, 3]}}), 404, "TASK_NOT_FOUND"
    )
    assert body["details"]["tasks"] == ["tiny"]
    error(gateway.get("/no/such/route"), 404, "REQUEST_NOT_FOUND")
    error(gateway.put("/v1/infer/tiny"), 405, "INVALID_REQUEST")


def test_wait_returns_the_result_when_done(gateway):
    def finish():
        request = gateway.producer.sent[-1][0]
        gateway.store.results[request.request_id] = InferenceResult(
            request_id=request.request_id,
            task="tiny",
            status=Status.SUCCEEDED,
            worker_id="w1",
            model_name="tiny-model",
            model_version="1",
            batch_size=3,
            outputs=[Tensor.from_numpy("y", np.array([[2.0, 4.0, 6.0]], dtype=np.float32))],
        )

    original = gateway.producer.submit

    async def submit_and_finish(request, accepted):
        await original(request, accepted)
        finish()

    gateway.producer.submit = submit_and_finish
    response = gateway.post("/v1/infer/tiny", params={"wait": 1}, json={"inputs": {"x": [1, 2, 3]}})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded" and body["outputs"] == {"y": [2.0, 4.0, 6.0]}
    assert body["model"] == {"name": "tiny-model", "version": "1"} and body["batch_size"] == 3


def test_results_status_cancel_and_unknown(gateway):
    rid = gateway.post("/v1/infer/tiny", json={"inputs": {"x": [1, 2, 3]}}).json()["request_id"]
    assert gateway.get(f"/v1/results/{rid}").json()["status"] == "queued"
    assert gateway.delete(f"/v1/requests/{rid}").json()["status"] == "cancelling"
    assert rid in gateway.store.cancelled
    error(gateway.get("/v1/results/unknown"), 404, "REQUEST_NOT_FOUND")
    error(gateway.delete("/v1/requests/unknown"), 404, "REQUEST_NOT_FOUND")


def test_prefer_wait_must_be_a_number(gateway):
    error(
        gateway.post(
            "/v1/infer/tiny", headers={"Prefer": "wait=soon"}, json={"inputs": {"x": [1, 2, 3]}}
        ),
        422,
        "INVALID_REQUEST",
    )


def test_tasks_ready_health_info_docs(gateway):
    tasks = gateway.get("/v1/tasks").json()["tasks"]
    assert tasks[0]["task"] == "tiny" and tasks[0]["topics"]["results"] == "unit.results.tiny"
    assert gateway.get("/health").json() == {"status": "ok"}
    ready = gateway.get("/ready").json()
    assert ready["status"] == "ready" and ready["checks"]["worker:tiny"] is True
    assert "redis_url" in gateway.get("/info").json()["config"]
    assert gateway.get("/docs").status_code == 200
    assert "/v1/infer/{task}" in gateway.get("/openapi.json").json()["paths"]


def test_refuses_to_start_without_auth(repository):
    with pytest.raises(AuthNotConfigured, match="STREAMINFER_AUTH"):
        create_app(Settings(model_repository=repository))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.internal"])
def test_refuses_auth_disabled_on_a_non_loopback_bind_unless_told_twice(repository, host):
    with pytest.raises(AuthNotConfigured, match="STREAMINFER_ALLOW_INSECURE_BIND"):
        create_app(Settings(model_repository=repository, auth="disabled", gateway_host=host))
    create_app(
        Settings(
            model_repository=repository,
            auth="disabled",
            gateway_host=host,
            allow_insecure_bind=True,
        )
    )
    create_app(Settings(model_repository=repository, auth="apikey", gateway_host=host))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_auth_disabled_on_loopback_starts(repository, host):
    create_app(Settings(model_repository=repository, auth="disabled", gateway_host=host))


def test_idempotency_key_same_body_same_request_other_body_conflict(gateway):
    body = {"inputs": {"x": [1, 2, 3]}}
    first = gateway.post("/v1/infer/tiny", json=body, headers={"Idempotency-Key": "k1"})
    again = gateway.post("/v1/infer/tiny", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["request_id"] == again.json()["request_id"]
    assert len(gateway.producer.sent) == 1, "no second event"
    conflict = error(
        gateway.post(
            "/v1/infer/tiny", json={"inputs": {"x": [3, 2, 1]}}, headers={"Idempotency-Key": "k1"}
        ),
        409,
        "IDEMPOTENCY_CONFLICT",
    )
    assert conflict["details"]["request_id"] == first.json()["request_id"]
    other = gateway.post("/v1/infer/tiny", json=body, headers={"Idempotency-Key": "k2"})
    assert other.json()["request_id"] != first.json()["request_id"]


def test_overloaded_task_answers_429_with_retry_after(gateway):
    class Lag:
        def task_lag(self, task):
            return 50

    service = gateway.app.state.service
    service.lag, service.max_lag_per_task = Lag(), 10
    body = error(
        gateway.post("/v1/infer/tiny", json={"inputs": {"x": [1, 2, 3]}}), 429, "OVERLOADED"
    )
    assert body["details"] == {"lag": 50, "bound": 10}
    assert gateway.producer.sent == []
    service.max_lag_per_task = 100
    assert gateway.post("/v1/infer/tiny", json={"inputs": {"x": [1, 2, 3]}}).status_code == 202


def test_size_limits_before_publishing(gateway):
    service = gateway.app.state.service
    from streaminfer.gateway.inputs import InputLimits

    service.limits = InputLimits(max_text_chars=5, max_image_bytes=10, max_parameters=2)
    error(
        gateway.post(
            "/v1/infer/tiny",
            json={"inputs": {"x": [1, 2, 3]}, "parameters": {"a": 1, "b": 2, "c": 3}},
        ),
        422,
        "INVALID_REQUEST",
    )
    error(
        gateway.post(
            "/v1/infer/tiny",
            json={
                "inputs": [
                    {"name": "x", "datatype": "BYTES", "shape": [1], "data": ["far too long"]}
                ]
            },
        ),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    assert gateway.producer.sent == []


def test_ready_names_kafka_when_the_broker_does_not_answer(gateway):
    gateway.producer.reachable = False  # the probe's metadata request timed out
    response = gateway.get("/ready")
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json() == {
        "status": "not ready",
        "checks": {"kafka": False, "redis": True, "worker:tiny": True},
    }
    gateway.producer.reachable = True
    assert gateway.get("/ready").status_code == 200
