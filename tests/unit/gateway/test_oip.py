"""Open Inference Protocol (KServe V2) routes, with bodies shaped as KServe's and Triton's Python
clients send them, through an ASGI test client."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.http import assert_error as error

from streaminfer.gateway.oip import _output
from streaminfer.schemas.records import Error, InferenceResult, Priority, Status, Tensor


def answer_with(gateway, status=Status.SUCCEEDED, error=None, extra=()):
    """Make the in-memory producer complete each request as soon as it is published."""
    original = gateway.producer.submit

    async def submit_and_finish(request, accepted):
        await original(request, accepted)
        x = request.inputs[0].to_numpy()
        outputs = [Tensor.from_numpy("y", x * 2), *extra] if status is Status.SUCCEEDED else []
        gateway.store.results[request.request_id] = InferenceResult(
            request_id=request.request_id,
            task="tiny",
            status=status,
            worker_id="w1",
            model_name="tiny-model",
            model_version="1",
            batch_size=len(x),
            outputs=outputs,
            error=error,
        )

    gateway.producer.submit = submit_and_finish


def test_kserve_client_body_answers_with_v2_outputs(gateway):
    answer_with(gateway)
    # kserve.InferRequest(...).to_rest(): id, inputs with per-input parameters, no outputs
    body = {
        "id": "req-7",
        "inputs": [
            {
                "name": "x",
                "shape": [1, 3],
                "datatype": "FP32",
                "data": [1, 2, 3],
                "parameters": {"content_type": "np"},
            }
        ],
    }
    response = gateway.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    request = gateway.producer.sent[0][0]
    assert response.json() == {
        "model_name": "tiny",
        "model_version": "1",
        "id": "req-7",  # the task, as in its metadata
        "parameters": {"request_id": request.request_id, "batch_size": 1},
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [2.0, 4.0, 6.0]}],
    }
    assert request.model_version is None and request.priority is Priority.NORMAL
    assert response.headers["x-request-id"] == request.request_id


def test_triton_client_body_with_flat_data_and_a_version(gateway):
    answer_with(gateway)
    # tritonclient.http with binary_data=False on the input and the requested output
    body = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    response = gateway.post("/v2/models/tiny/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    request = gateway.producer.sent[0][0]
    assert request.model_version == "1" and request.inputs[0].shape == [2, 3]
    assert out["id"] == request.request_id and out["parameters"]["batch_size"] == 2
    assert out["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]}
    ]


def test_nested_data_is_row_major(gateway):
    answer_with(gateway)
    body = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}
        ]
    }
    assert gateway.post("/v2/models/tiny/infer", json=body).status_code == 200
    assert gateway.producer.sent[0][0].inputs[0].to_numpy().tolist() == [[1, 2, 3], [4, 5, 6]]


def test_parameters_set_priority_deadline_and_reach_the_worker(gateway):
    answer_with(gateway)
    body = {
        "parameters": {
            "priority": "high",
            "deadline_ms": 1500,
            "cache": False,
            "binary_data_output": True,
        },
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
    }
    assert gateway.post("/v2/models/tiny/infer", json=body).status_code == 200
    request = gateway.producer.sent[0][0]
    assert request.priority is Priority.HIGH and request.deadline_at - request.created_at == 1500
    assert request.parameters == {"cache": "False"}
    body["parameters"] = {"timeout": 2_000_000}  # Triton's timeout is in microseconds
    assert gateway.post("/v2/models/tiny/infer", json=body).status_code == 200
    request = gateway.producer.sent[1][0]
    assert request.deadline_at - request.created_at == 2000


@pytest.mark.parametrize(
    "tensor",
    [
        {
            "name": "x",
            "shape": [1, 3],
            "datatype": "BYTES",
            "data": ["a", "b", "c"],
        },  # datatype mismatch
        {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},  # wrong shape
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]},  # data != shape
        {"name": "z", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},  # unknown input
    ],
)
def test_invalid_tensors_are_rejected_before_publishing(gateway, tensor):
    error(gateway.post("/v2/models/tiny/infer", json={"inputs": [tensor]}), 422, "INVALID_REQUEST")
    assert gateway.producer.sent == []


def test_bad_parameters_and_missing_inputs_are_422(gateway):
    x = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    error(gateway.post("/v2/models/tiny/infer", json={"inputs": []}), 422, "INVALID_REQUEST")
    error(
        gateway.post("/v2/models/tiny/infer", json={"inputs": [x], "parameters": {"priority": 99}}),
        422,
        "INVALID_REQUEST",
    )
    for deadline in ("soon", 0, True):
        error(
            gateway.post(
                "/v2/models/tiny/infer",
                json={"inputs": [x], "parameters": {"deadline_ms": deadline}},
            ),
            422,
            "INVALID_REQUEST",
        )
    assert gateway.producer.sent == []


def test_unknown_task_version_and_output(gateway):
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    error(gateway.post("/v2/models/nope/infer", json=body), 404, "TASK_NOT_FOUND")
    found = error(
        gateway.post("/v2/models/tiny/versions/9/infer", json=body), 404, "MODEL_VERSION_NOT_FOUND"
    )
    assert found["details"]["versions"] == ["1"]
    unknown = error(
        gateway.post("/v2/models/tiny/infer", json={**body, "outputs": [{"name": "nope"}]}),
        422,
        "INVALID_REQUEST",
    )
    assert unknown["details"]["outputs"] == ["y"]
    assert gateway.producer.sent == []


def test_no_result_in_time_is_504_with_the_request_id(gateway):
    gateway.app.state.service.max_wait_s = 0.2
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    timeout = error(gateway.post("/v2/models/tiny/infer", json=body), 504, "INFERENCE_TIMEOUT")
    request_id = gateway.producer.sent[0][0].request_id
    assert timeout["request_id"] == request_id
    assert timeout["details"]["links"]["result"] == f"/v1/results/{request_id}"


def test_prefer_wait_bounds_the_wait(gateway):
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    timeout = error(
        gateway.post("/v2/models/tiny/infer", json=body, headers={"Prefer": "wait=0.05"}),
        504,
        "INFERENCE_TIMEOUT",
    )
    assert "0.05 s" in timeout["message"]


@pytest.mark.parametrize(
    "status,err,http,code",
    [
        (Status.FAILED, Error("INVALID_INPUT", "text is empty"), 422, "INVALID_REQUEST"),
        (Status.FAILED, Error("INFERENCE_FAILED", "the model raised"), 500, "INTERNAL_ERROR"),
        (
            Status.FAILED,
            Error("TRANSIENT_FAILURE", "gpu busy", retriable=True),
            503,
            "SERVICE_UNAVAILABLE",
        ),
        (Status.EXPIRED, Error("DEADLINE_EXCEEDED", "deadline passed"), 504, "INFERENCE_TIMEOUT"),
        (Status.CANCELLED, None, 500, "INTERNAL_ERROR"),
    ],
)
def test_unsuccessful_results_become_error_json(gateway, status, err, http, code):
    answer_with(gateway, status=status, error=err)
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    failed = error(gateway.post("/v2/models/tiny/infer", json=body), http, code)
    assert failed["details"]["status"] == status.value.lower()
    assert failed["message"] == (err.message if err else "the request was cancelled")


def test_outputs_filter_and_bytes_outputs(gateway):
    names = Tensor.from_numpy("names", np.array(["ä", "b", "c"], dtype=object).reshape(1, 3))
    answer_with(gateway, extra=[names])
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    outputs = gateway.post("/v2/models/tiny/infer", json=body).json()["outputs"]
    assert outputs[1] == {
        "name": "names",
        "datatype": "BYTES",
        "shape": [1, 3],
        "data": ["ä", "b", "c"],
    }
    only = gateway.post("/v2/models/tiny/infer", json={**body, "outputs": [{"name": "y"}]}).json()[
        "outputs"
    ]
    assert [o["name"] for o in only] == ["y"]


def test_binary_bytes_outputs_are_base64():
    out = _output(Tensor("blob", "BYTES", [2], [b"\xff\x00", b"ok"]))
    assert out["data"] == ["/wA=", "ok"] and out["parameters"] == {"content_type": "base64"}


def test_model_metadata(gateway):
    expected = {
        "name": "tiny",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert gateway.get("/v2/models/tiny").json() == expected
    assert gateway.get("/v2/models/tiny/versions/1").json() == expected
    error(gateway.get("/v2/models/nope"), 404, "TASK_NOT_FOUND")
    error(gateway.get("/v2/models/tiny/versions/2"), 404, "MODEL_VERSION_NOT_FOUND")


def test_model_ready(gateway):
    assert gateway.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert gateway.get("/v2/models/tiny/versions/1/ready").status_code == 200
    error(gateway.get("/v2/models/nope/ready"), 404, "TASK_NOT_FOUND")
    error(gateway.get("/v2/models/tiny/versions/2/ready"), 404, "MODEL_VERSION_NOT_FOUND")

    async def no_workers():
        return {}

    gateway.store.live_workers = no_workers
    assert (
        "no live worker"
        in error(gateway.get("/v2/models/tiny/ready"), 503, "SERVICE_UNAVAILABLE")["message"]
    )

    async def down():
        return False

    gateway.store.ping = down
    error(gateway.get("/v2/models/tiny/ready"), 503, "SERVICE_UNAVAILABLE")


def test_health_live_and_ready(gateway):
    assert gateway.get("/v2/health/live").json() == {"live": True}
    ready = gateway.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}

    async def no_workers():
        return {}

    gateway.store.live_workers = no_workers
    not_ready = gateway.get("/v2/health/ready")
    assert not_ready.status_code == 503 and not_ready.json() == {"ready": False}


def test_health_ready_needs_kafka(gateway):
    gateway.producer.reachable = False
    not_ready = gateway.get("/v2/health/ready")
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"]


def test_server_metadata_and_openapi(gateway):
    assert gateway.get("/v2").json() == {
        "name": "streaminfer",
        "version": gateway.app.version,
        "extensions": ["binary_tensor_data"],
    }
    schema = gateway.get("/openapi.json").json()
    for path in (
        "/v2/models/{task}/infer",
        "/v2/models/{task}/versions/{version}/infer",
        "/v2/models/{task}",
        "/v2/models/{task}/ready",
        "/v2/health/live",
        "/v2/health/ready",
    ):
        assert path in schema["paths"], path
    infer = schema["paths"]["/v2/models/{task}/infer"]["post"]
    assert infer["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/InferResponse"
    )
    assert {"InferRequest", "InferResponse", "ModelMetadata"} <= set(
        schema["components"]["schemas"]
    )
