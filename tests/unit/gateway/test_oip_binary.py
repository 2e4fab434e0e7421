"""The /v2 routes as Triton's own client speaks them: a JSON body without Content-Type, the binary
tensor data extension (bodies built and answers read by tritonclient's own code), KServe's
``error`` in error bodies; and the wire format pinned byte by byte."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import yaml
from helpers.http import assert_error as error

from streaminfer.schemas.records import InferenceResult, Status, Tensor

httpclient = pytest.importorskip("tritonclient.http")

X = np.array([[1.5, -2.0, 3.25]], dtype=np.float32)
JSON_BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}


def answer_with(gateway, *outputs):
    """The in-memory producer completes each request at once: ``y`` = 2 * its first input, if
    numeric, and ``outputs``."""
    original = gateway.producer.submit

    async def submit_and_finish(request, accepted):
        await original(request, accepted)
        x = request.inputs[0].to_numpy()
        y = [Tensor.from_numpy("y", x * 2)] if x.dtype != object else []
        gateway.store.results[request.request_id] = InferenceResult(
            request_id=request.request_id,
            task="tiny",
            status=Status.SUCCEEDED,
            worker_id="w1",
            model_name="tiny-model",
            model_version="1",
            batch_size=len(x),
            outputs=[*y, *outputs],
        )

    gateway.producer.submit = submit_and_finish


def with_task(make_gateway, repository, inputs, outputs):
    """A gateway whose task ``tiny`` has this signature."""
    (repository / "tiny" / "model.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "tiny",
                "name": "tiny-model",
                "backend": "onnxruntime",
                "max_batch_size": 4,
                "inputs": inputs,
                "outputs": outputs,
            }
        )
    )
    return make_gateway()


Y = {"name": "y", "datatype": "FP32", "shape": [3]}


def triton_request(binary_input=True, outputs=None, **kwargs):
    """The body and headers tritonclient's ``infer`` sends (its own request builder)."""
    tensor = httpclient.InferInput("x", [1, 3], "FP32").set_data_from_numpy(
        X, binary_data=binary_input
    )
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, **kwargs
    )
    return body, {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}


def post(gateway, path, body, headers):
    """As tritonclient posts: raw bytes, no Content-Type."""
    return gateway.post(path, content=body, headers=headers)


def triton_result(response):
    """The answer as tritonclient's ``InferResult`` reads it."""
    return httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=response.headers.get("Inference-Header-Content-Length")
    )


def test_a_json_body_without_content_type_is_read_as_json(gateway):
    answer_with(gateway)
    body, headers = triton_request(
        binary_input=False, outputs=[httpclient.InferRequestedOutput("y", binary_data=False)]
    )
    assert headers == {}
    response = post(gateway, "/v2/models/tiny/infer", body, headers)
    assert response.status_code == 200, response.text
    assert "content-type" not in response.request.headers
    assert triton_result(response).as_numpy("y").tolist() == (X * 2).tolist()
    # any other Content-Type too, as Triton and KServe read it (curl -d sends a form's)
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ):
        sent = post(
            gateway,
            "/v2/models/tiny/infer",
            json.dumps(JSON_BODY).encode(),
            {"Content-Type": content_type},
        )
        assert sent.status_code == 200, (content_type, sent.text)


def test_binary_inputs_and_outputs_with_the_triton_client_defaults(gateway):
    answer_with(gateway)
    body, headers = triton_request()  # binary input, no outputs named: binary_data_output
    response = post(gateway, "/v2/models/tiny/infer", body, headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    request = gateway.producer.sent[0][0]
    assert request.inputs[0].to_numpy().tolist() == X.tolist()
    result = triton_result(response)
    y = result.as_numpy("y")
    assert y.dtype == np.float32 and y.tolist() == (X * 2).tolist()
    header = result.get_response()
    assert (
        header["model_name"] == "tiny" and header["parameters"]["request_id"] == request.request_id
    )
    assert header["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}
    ]


def test_each_output_asks_binary_or_json(make_gateway, repository):
    gateway = with_task(
        make_gateway,
        repository,
        [{"name": "x", "datatype": "FP32", "shape": [3]}],
        [Y, {"name": "names", "datatype": "BYTES", "shape": [3]}],
    )
    answer_with(
        gateway, Tensor.from_numpy("names", np.array([["ä", "", "longer text"]], dtype=object))
    )
    outputs = [
        httpclient.InferRequestedOutput("y", binary_data=False),
        httpclient.InferRequestedOutput("names"),
    ]
    body, headers = triton_request(outputs=outputs)
    response = post(gateway, "/v2/models/tiny/infer", body, headers)
    assert response.status_code == 200, response.text
    result = triton_result(response)
    assert result.get_output("y")["data"] == (X * 2).ravel().tolist()
    assert result.as_numpy("names").tolist() == [[s.encode() for s in ("ä", "", "longer text")]]
    # the wire format itself: JSON header, then 4-byte little-endian length per BYTES element
    length = int(response.headers["Inference-Header-Content-Length"])
    assert json.loads(response.content[:length])["outputs"][1]["parameters"] == {
        "binary_data_size": 4 * 3 + 2 + 11
    }
    assert response.content[length:] == b"".join(
        struct.pack("<I", len(s)) + s for s in ("ä".encode(), b"", b"longer text")
    )
    # binary_data_output asks for all of them
    both = {**json.loads(json.dumps(JSON_BODY)), "parameters": {"binary_data_output": True}}
    raw = gateway.post("/v2/models/tiny/infer", json=both)
    assert [o["parameters"] for o in triton_result(raw).get_response()["outputs"]] == [
        {"binary_data_size": 12},
        {"binary_data_size": 25},
    ]


TEXT = [{"name": "text", "datatype": "BYTES", "shape": []}]


def test_binary_bytes_input_reaches_the_worker_as_text(make_gateway, repository):
    gateway = with_task(make_gateway, repository, TEXT, [Y])
    answer_with(gateway, Tensor.from_numpy("y", np.ones((3, 3), dtype=np.float32)))
    texts = np.array(["héllo", "a", "b c"], dtype=object)
    tensor = httpclient.InferInput("text", [3], "BYTES").set_data_from_numpy(texts)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    response = post(
        gateway, "/v2/models/tiny/infer", body, {"Inference-Header-Content-Length": str(json_size)}
    )
    assert response.status_code == 200, response.text
    assert gateway.producer.sent[0][0].inputs[0].to_numpy().tolist() == ["héllo", "a", "b c"]
    assert triton_result(response).as_numpy("y").shape == (3, 3)


def _framed(header: dict, *chunks: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def binary_x(size=12, **extra):
    return {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": size},
                **extra,
            }
        ]
    }


@pytest.mark.parametrize(
    "body,headers,status,words",
    [
        (*_framed(binary_x(), X.tobytes()[:8]), 400, "past the body's end"),
        (*_framed(binary_x(), X.tobytes() + b"\0"), 400, "belong to no input"),
        (*_framed(binary_x(size=10), X.tobytes()[:10]), 422, "whole number of FP32"),
        (*_framed(binary_x(size=-1)), 422, "non-negative integer"),
        (*_framed(binary_x(data=[1, 2, 3]), X.tobytes()), 422, "both data and"),
        (b"{}", {"Inference-Header-Content-Length": "9"}, 400, "within the body"),
        (b"{}", {"Inference-Header-Content-Length": "x"}, 400, "within the body"),
        (
            b"\xff\xfe" + X.tobytes(),
            {"Inference-Header-Content-Length": "2"},
            400,
            "not a JSON object",
        ),
    ],
)
def test_malformed_binary_bodies_are_4xx_before_publishing(gateway, body, headers, status, words):
    failed = error(post(gateway, "/v2/models/tiny/infer", body, headers), status, "INVALID_REQUEST")
    assert words in failed["message"]
    assert gateway.producer.sent == []


def test_binary_bytes_elements_must_be_whole_and_utf8(make_gateway, repository):
    gateway = with_task(make_gateway, repository, TEXT, [Y])
    for raw, words in (
        (struct.pack("<I", 2) + b"\xff\xfe", "UTF-8"),
        (struct.pack("<I", 9) + b"ab", "runs past"),
        (b"\x01\x00", "cut off"),
    ):
        header = {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
        failed = error(
            post(gateway, "/v2/models/tiny/infer", *_framed(header, raw)), 422, "INVALID_REQUEST"
        )
        assert words in failed["message"]
    assert gateway.producer.sent == []


def test_output_parameters_are_typed_and_classification_refused(gateway):
    for parameters in ({"binary_data": "yes"}, {"classification": 3}):
        body = {**JSON_BODY, "outputs": [{"name": "y", "parameters": parameters}]}
        error(gateway.post("/v2/models/tiny/infer", json=body), 422, "INVALID_REQUEST")
    error(
        gateway.post(
            "/v2/models/tiny/infer", json={**JSON_BODY, "parameters": {"binary_data_output": 1}}
        ),
        422,
        "INVALID_REQUEST",
    )
    assert gateway.producer.sent == []


def test_v2_error_bodies_carry_kserves_error_string(gateway):
    cases = [
        gateway.post("/v2/models/nope/infer", json=JSON_BODY),  # TASK_NOT_FOUND
        gateway.post("/v2/models/tiny/infer", json={"inputs": []}),  # validation
        gateway.post("/v2/models/tiny/infer", content=b"{not json"),  # malformed JSON
        gateway.get("/v2/models/nope"),
        gateway.get("/v2/models/tiny/versions/9/ready"),
    ]
    for response in cases:
        body = response.json()
        assert response.status_code >= 400 and body["error"] == body["message"], body
        assert {"error_code", "message", "request_id", "timestamp", "details"} <= set(body)
    # the Triton client raises with the error string (not "an exception occurred ... decoding")
    from tritonclient.http._utils import _get_error

    class Answer:
        status_code = cases[0].status_code

        @staticmethod
        def read():
            return cases[0].content

    assert _get_error(Answer()).message() == cases[0].json()["message"]
    # /v1 keeps the SPEC's body only
    assert "error" not in gateway.post("/v1/infer/nope", json={"inputs": {"x": [1, 2, 3]}}).json()


def test_openapi_documents_the_binary_extension(gateway):
    schema = gateway.get("/openapi.json").json()
    infer = schema["paths"]["/v2/models/{task}/infer"]["post"]
    # a binary request is described, not declared: as a schema it would admit any bytes (mostly a 400)
    assert set(infer["requestBody"]["content"]) == {"application/json"}
    assert "Inference-Header-Content-Length" in infer["description"]
    ok = infer["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "application/octet-stream"}
    assert "Inference-Header-Content-Length" in ok["headers"]
    assert infer["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OIPErrorBody"
    )
    assert "error" in schema["components"]["schemas"]["OIPErrorBody"]["required"]
