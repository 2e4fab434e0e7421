"""streaminfer.client against httpx.MockTransport: retries and Retry-After, idempotency keys kept
across retries, the gateway's error bodies, and decoding the tensors it answers with (hostile
ones included); the request building of the Kafka producer."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import types

import httpx
import numpy as np
import pytest
from aiokafka.errors import KafkaConnectionError

from streaminfer.client import (
    AsyncClient,
    Client,
    ClientError,
    Result,
    ResultConsumer,
    RetryPolicy,
    build_request,
)
from streaminfer.client import aio as client_aio
from streaminfer.client import http as client_http
from streaminfer.client import kafka as client_kafka
from streaminfer.client.request_events import input_tensor
from streaminfer.client.retries import parse_retry_after
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import (
    DataType,
    Error,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
)

RID = "6f1c1f8e-4a53-4bd4-9d64-0f4d4c6a9f10"
EMBEDDING_TASK = {
    "task": "text-embedding",
    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [384]}],
    "friendly_outputs": {"embedding": "embedding"},
}
DIGITS_TASK = {
    "task": "image-classify",
    "friendly_outputs": {"label": "label", "probabilities": "probabilities"},
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": []},
        {"name": "probabilities", "datatype": "FP32", "shape": [10]},
    ],
}
TAGGER_TASK = {
    "task": "tagger",
    "outputs": [{"name": "tag", "datatype": "BYTES", "shape": []}],
    "friendly_outputs": {"tag": "tag"},
}


def done_body(
    task: str, outputs: dict, status: str = "succeeded", error: dict | None = None
) -> dict:
    return {
        "request_id": RID,
        "task": task,
        "status": status,
        "model": {"name": "m", "version": "1"},
        "outputs": outputs,
        "timings": {"queued_ms": 1.5, "inference_ms": 2.0, "total_ms": 4.0},
        "batch_size": 1,
        "attempts": 1,
        "error": error,
    }


def error_body(code: str, message: str = "no") -> dict:
    return {
        "error_code": code,
        "message": message,
        "request_id": RID,
        "timestamp": "2026-12-01T00:00:00+00:00",
        "details": {"why": "test"},
    }


class Gateway:
    """A scripted gateway: answers per (method, path) in order (the last one repeats); records requests."""

    def __init__(
        self, script: dict[tuple[str, str], list], tasks: list[dict] | None = None
    ) -> None:
        self.script = {key: list(answers) for key, answers in script.items()}
        self.tasks = tasks if tasks is not None else [EMBEDDING_TASK, DIGITS_TASK, TAGGER_TASK]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key == ("GET", "/v1/tasks") and key not in self.script:
            return httpx.Response(200, json={"tasks": self.tasks})
        answers = self.script[key]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_http, "_sleep", slept.append)

    async def fake_async_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(client_aio, "_async_sleep", fake_async_sleep)
    return slept


def client_for(gateway: Gateway, **options) -> Client:
    return Client("http://gateway.test", transport=httpx.MockTransport(gateway), **options)


INFER = ("POST", "/v1/infer/text-embedding")


# -- results and tensors ------------------------------------------------------------------


def test_infer_decodes_an_embedding_as_float32_with_the_batch_dimension(sleeps):
    vector = np.linspace(-1, 1, 384, dtype=np.float32)
    gateway = Gateway(
        {
            INFER: [
                httpx.Response(
                    200, json=done_body("text-embedding", {"embedding": vector.tolist()})
                )
            ]
        }
    )
    with client_for(gateway, api_key="si_secret") as client:
        result = client.infer(
            "text-embedding",
            {"text": "hello"},
            wait=5,
            priority="high",
            deadline_ms=900,
            parameters={"cache": False},
        )
    assert (
        result.status == "succeeded"
        and result.request_id == RID
        and result.task == "text-embedding"
    )
    embedding = result.outputs["embedding"]
    assert embedding.dtype == np.float32 and embedding.shape == (1, 384)
    np.testing.assert_array_equal(embedding[0], vector)
    assert result.model.name == "m" and result.model.version == "1"
    assert (
        result.timings == {"queued_ms": 1.5, "inference_ms": 2.0, "total_ms": 4.0}
        and result.error is None
    )
    posted = gateway.sent(*INFER)[0]
    assert posted.headers["x-api-key"] == "si_secret" and posted.url.params["wait"] == "5.0"
    assert json.loads(posted.content) == {
        "inputs": {"text": "hello"},
        "priority": "high",
        "deadline_ms": 900,
        "parameters": {"cache": False},
    }
    assert len(posted.headers["idempotency-key"]) == 36
    assert sleeps == []


def test_several_items_and_integer_and_text_outputs_keep_their_datatypes():
    probabilities = np.full((2, 10), 0.1, dtype=np.float32)
    digits = Gateway(
        {
            ("POST", "/v1/infer/image-classify"): [
                httpx.Response(
                    200,
                    json=done_body(
                        "image-classify", {"label": [3, 7], "probabilities": probabilities.tolist()}
                    ),
                )
            ],
            ("POST", "/v1/infer/tagger"): [
                httpx.Response(200, json=done_body("tagger", {"tag": "cat"}))
            ],
        }
    )
    with client_for(digits) as client:
        result = client.infer("image-classify", {"pixels": np.zeros((2, 8, 8))})
        tagged = client.infer("tagger", {"text": "x"})
    assert result.outputs["label"].dtype == np.int64 and result.outputs["label"].tolist() == [3, 7]
    assert result.outputs["probabilities"].shape == (2, 10)
    assert tagged.outputs["tag"].dtype == object and tagged.outputs["tag"].tolist() == ["cat"]
    # numpy inputs are sent as JSON lists
    assert (
        json.loads(digits.sent("POST", "/v1/infer/image-classify")[0].content)["inputs"]["pixels"][
            1
        ][7]
        == [0.0] * 8
    )
    assert len(digits.sent("GET", "/v1/tasks")) == 1  # signatures fetched once, then kept


@pytest.mark.parametrize(
    ("outputs", "tasks", "problem"),
    [
        ({"embedding": [0.5] * 383}, None, "does not match"),
        ({"embedding": [[0.5] * 384, [0.5] * 3]}, None, "does not fit"),
        ({"embedding": ["0.5"] * 384}, None, "str item"),
        ({"embedding": [{"x": 1}] * 384}, None, "dict item"),
        (
            {"embedding": [0.5] * 384},
            [
                {
                    **EMBEDDING_TASK,
                    "outputs": [{"name": "embedding", "datatype": "FP128", "shape": [384]}],
                }
            ],
            "unknown datatype",
        ),
        (
            {"embedding": [0.5] * 384},
            [
                {
                    **EMBEDDING_TASK,
                    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": "384"}],
                }
            ],
            "no valid shape",
        ),
    ],
)
def test_outputs_that_do_not_fit_the_signature_are_invalid_responses(outputs, tasks, problem):
    gateway = Gateway(
        {INFER: [httpx.Response(200, json=done_body("text-embedding", outputs))]}, tasks=tasks
    )
    with client_for(gateway) as client, pytest.raises(ClientError) as caught:
        client.infer("text-embedding", {"text": "x"})
    assert caught.value.error_code == "INVALID_RESPONSE" and caught.value.status_code is None
    assert problem in caught.value.message and caught.value.request_id == RID


def test_null_floats_are_nan_but_null_or_fractional_labels_are_refused():
    assert np.isnan(
        Result.from_body(
            done_body("t", {"embedding": [None] + [0.0] * 383}), EMBEDDING_TASK
        ).outputs["embedding"][0, 0]
    )
    for labels in ([1, None], [1, 2.5]):
        with pytest.raises(ClientError, match="does not fit"):
            Result.from_body(
                done_body("t", {"label": labels, "probabilities": [[0.1] * 10] * 2}), DIGITS_TASK
            )
    with pytest.raises(ClientError, match="ragged BYTES"):
        Result.from_body(done_body("t", {"tag": [["a"], ["b", "c"]]}), TAGGER_TASK)


def test_outputs_of_a_task_without_a_signature_are_read_as_json_says():
    result = Result.from_body(
        done_body(
            "unknown-task", {"scores": [[1.0, 2.0]], "similar": [{"id": "a"}, {"id": "b", "x": 1}]}
        )
    )
    assert result.outputs["scores"].dtype == np.float64 and result.outputs["scores"].shape == (1, 2)
    assert [item["id"] for item in result.outputs["similar"]] == ["a", "b"]


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"status": "succeeded"},
        {"request_id": RID},
        {"request_id": RID, "status": "x", "outputs": [1, 2]},
        {"request_id": RID, "status": "failed", "error": {"message": "no code"}},
    ],
)
def test_malformed_result_bodies_are_invalid_responses(body):
    with pytest.raises(ClientError) as caught:
        Result.from_body(body, EMBEDDING_TASK)
    assert caught.value.error_code == "INVALID_RESPONSE"


def test_a_body_that_is_not_json_is_an_invalid_response():
    gateway = Gateway({INFER: [httpx.Response(200, content=b"{not json")]})
    with client_for(gateway) as client, pytest.raises(ClientError) as caught:
        client.infer("text-embedding", {"text": "x"})
    assert caught.value.error_code == "INVALID_RESPONSE" and caught.value.status_code == 200


def test_a_failed_request_is_a_result_with_its_error_and_raise_for_error_raises_it():
    body = done_body(
        "text-embedding",
        {},
        status="failed",
        error={"code": "INFERENCE_FAILED", "message": "model broke", "retriable": False},
    )
    result = Result.from_body(body, EMBEDDING_TASK)
    assert (
        result.status == "failed"
        and result.outputs == {}
        and result.error.code == "INFERENCE_FAILED"
    )
    with pytest.raises(ClientError) as caught:
        result.raise_for_error()
    assert caught.value.error_code == "INFERENCE_FAILED" and caught.value.message == "model broke"
    pending = Result.from_body({"request_id": RID, "task": "t", "status": "queued"})
    assert pending.raise_for_error() is pending and not pending.is_done


def test_result_from_a_kafka_record_matches_the_http_form():
    record = InferenceResult(
        request_id=RID,
        task="text-embedding",
        status=Status.FAILED,
        worker_id="w",
        model_name="mini",
        model_version="2",
        outputs=[Tensor.from_numpy("embedding", np.ones((1, 384), dtype=np.float32))],
        error=Error("X", "y", retriable=True),
        batch_size=3,
    )
    result = Result.from_record(record)
    assert result.status == "failed" and result.error.code == "X" and result.error.retriable
    assert result.outputs["embedding"].dtype == np.float32 and result.outputs[
        "embedding"
    ].shape == (1, 384)
    assert (
        result.model.version == "2"
        and result.batch_size == 3
        and set(result.timings) == {"queued_ms", "inference_ms", "total_ms"}
    )


# -- waiting ------------------------------------------------------------------------------


def test_infer_long_polls_a_queued_request_until_it_is_done():
    gateway = Gateway(
        {
            INFER: [
                httpx.Response(
                    202, json={"request_id": RID, "task": "text-embedding", "status": "queued"}
                )
            ],
            ("GET", f"/v1/results/{RID}"): [
                httpx.Response(
                    200, json={"request_id": RID, "task": "text-embedding", "status": "running"}
                ),
                httpx.Response(200, json=done_body("text-embedding", {"embedding": [0.0] * 384})),
            ],
        }
    )
    with client_for(gateway) as client:
        result = client.infer("text-embedding", {"text": "x"}, wait=30)
    polls = gateway.sent("GET", f"/v1/results/{RID}")
    assert result.succeeded and len(polls) == 2
    assert all(0 < float(p.url.params["wait"]) <= 30 for p in polls)


def test_infer_without_wait_and_submit_return_at_once():
    queued = httpx.Response(
        202, json={"request_id": RID, "task": "text-embedding", "status": "queued"}
    )
    gateway = Gateway({INFER: [queued]})
    with client_for(gateway) as client:
        pending = client.infer("text-embedding", {"text": "x"}, wait=0)
        request_id = client.submit("text-embedding", {"text": "x"}, idempotency_key="mine")
    assert pending.status == "queued" and pending.outputs == {} and request_id == RID
    sent = gateway.sent(*INFER)
    assert "wait" not in sent[0].url.params and sent[1].headers["idempotency-key"] == "mine"
    assert sent[0].headers["idempotency-key"] != sent[1].headers["idempotency-key"]


def test_cancel_tasks_and_result():
    gateway = Gateway(
        {
            ("DELETE", f"/v1/requests/{RID}"): [
                httpx.Response(200, json={"request_id": RID, "status": "cancelling"})
            ],
            ("GET", f"/v1/results/{RID}"): [
                httpx.Response(200, json={"request_id": RID, "status": "queued", "task": "t"})
            ],
        }
    )
    with client_for(gateway) as client:
        assert client.cancel(RID) == "cancelling"
        assert [t["task"] for t in client.tasks()] == ["text-embedding", "image-classify", "tagger"]
        assert client.result(RID).status == "queued"


# -- retries ------------------------------------------------------------------------------


def test_429_is_retried_after_retry_after_with_the_same_idempotency_key(sleeps):
    limited = httpx.Response(
        429, json=error_body("RATE_LIMIT_EXCEEDED"), headers={"Retry-After": "2"}
    )
    gateway = Gateway(
        {INFER: [limited, limited, httpx.Response(200, json=done_body("text-embedding", {}))]}
    )
    with client_for(gateway) as client:
        assert client.infer("text-embedding", {"text": "x"}).succeeded
    keys = {r.headers["idempotency-key"] for r in gateway.sent(*INFER)}
    assert sleeps == [2.0, 2.0] and len(gateway.sent(*INFER)) == 3 and len(keys) == 1


def test_a_huge_retry_after_is_capped(sleeps):
    unavailable = httpx.Response(
        503, json=error_body("SERVICE_UNAVAILABLE"), headers={"Retry-After": "1e9"}
    )
    gateway = Gateway(
        {INFER: [unavailable, httpx.Response(200, json=done_body("text-embedding", {}))]}
    )
    with client_for(gateway, retry=RetryPolicy(max_retry_after_s=7, max_total_s=60)) as client:
        assert client.infer("text-embedding", {"text": "x"}).succeeded
    assert sleeps == [7.0]


def test_retries_stop_after_max_attempts_with_the_last_error(sleeps):
    unavailable = httpx.Response(
        503, json=error_body("SERVICE_UNAVAILABLE", "broker away"), headers={"Retry-After": "1"}
    )
    gateway = Gateway({INFER: [unavailable]})
    with (
        client_for(gateway, retry=RetryPolicy(max_attempts=3)) as client,
        pytest.raises(ClientError) as caught,
    ):
        client.submit("text-embedding", {"text": "x"})
    error = caught.value
    assert (error.error_code, error.status_code, error.attempts, error.retry_after_s) == (
        "SERVICE_UNAVAILABLE",
        503,
        3,
        1.0,
    )
    assert error.retriable and error.message == "broker away" and error.details == {"why": "test"}
    assert sleeps == [1.0, 1.0] and len(gateway.sent(*INFER)) == 3


def test_retries_stop_once_their_waits_would_pass_the_time_budget(sleeps):
    limited = httpx.Response(429, json=error_body("OVERLOADED"), headers={"Retry-After": "4"})
    gateway = Gateway({INFER: [limited]})
    with (
        client_for(gateway, retry=RetryPolicy(max_attempts=10, max_total_s=10)) as client,
        pytest.raises(ClientError),
    ):
        client.submit("text-embedding", {"text": "x"})
    assert sleeps == [4.0, 4.0] and len(gateway.sent(*INFER)) == 3


def test_without_retry_after_the_wait_backs_off(sleeps):
    gateway = Gateway(
        {
            INFER: [
                httpx.Response(
                    503, json=error_body("SERVICE_UNAVAILABLE"), headers={"Retry-After": "soon"}
                )
            ]
        }
    )
    with (
        client_for(gateway, retry=RetryPolicy(max_attempts=4, backoff_s=1)) as client,
        pytest.raises(ClientError),
    ):
        client.submit("text-embedding", {"text": "x"})
    assert (
        len(sleeps) == 3 and 0.5 <= sleeps[0] <= 1 and 1 <= sleeps[1] <= 2 and 2 <= sleeps[2] <= 4
    )


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 500, 504])
def test_other_errors_are_not_retried(sleeps, status):
    gateway = Gateway({INFER: [httpx.Response(status, json=error_body("SOME_CODE"))]})
    with client_for(gateway) as client, pytest.raises(ClientError) as caught:
        client.infer("text-embedding", {"text": "x"})
    assert (
        caught.value.status_code == status
        and caught.value.error_code == "SOME_CODE"
        and not caught.value.retriable
    )
    assert sleeps == [] and len(gateway.requests) == 1


def test_an_error_body_that_is_not_the_gateways_is_http_status():
    gateway = Gateway({INFER: [httpx.Response(502, content=b"<html>bad gateway</html>")]})
    with client_for(gateway) as client, pytest.raises(ClientError) as caught:
        client.infer("text-embedding", {"text": "x"})
    assert caught.value.error_code == "HTTP_502" and "bad gateway" in caught.value.message


def test_connection_errors_are_retried_only_where_resending_is_safe(sleeps):
    lost = httpx.ConnectError("connection refused")
    gateway = Gateway(
        {
            INFER: [
                lost,
                httpx.ReadTimeout("slow"),
                httpx.Response(202, json={"request_id": RID, "status": "queued"}),
            ],
            ("POST", "/v2/models/text-embedding/infer"): [lost],
        }
    )
    with client_for(gateway) as client:
        assert client.submit("text-embedding", {"text": "x"}) == RID
        with pytest.raises(ClientError) as caught:
            client.model_infer("text-embedding", {"text": np.array(["x"], dtype=object)})
    assert (
        len({r.headers["idempotency-key"] for r in gateway.sent(*INFER)}) == 1 and len(sleeps) == 2
    )
    assert caught.value.error_code == "CONNECTION_ERROR" and caught.value.status_code is None
    assert len(gateway.sent("POST", "/v2/models/text-embedding/infer")) == 1


def test_a_probe_answers_false_on_503_without_retrying(sleeps):
    gateway = Gateway(
        {
            ("GET", "/v2/health/ready"): [
                httpx.Response(503, json={"ready": False}, headers={"Retry-After": "1"})
            ],
            ("GET", "/v2/models/text-embedding/ready"): [httpx.Response(200, json={"ready": True})],
        }
    )
    with client_for(gateway) as client:
        assert client.server_ready() is False and client.model_ready("text-embedding") is True
    assert sleeps == [] and len(gateway.requests) == 2


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        ("0.25", 0.25),
        ("-3", 0.0),
        ("nan", None),
        ("soon", None),
        (None, None),
        ("inf", float("inf")),
        ("", None),
    ],
)
def test_parse_retry_after(header, seconds):
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_reads_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(when) <= 31
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past


# -- auth ---------------------------------------------------------------------------------


def test_a_token_is_sent_as_a_bearer_and_both_credentials_are_refused():
    gateway = Gateway({})
    with client_for(gateway, token="a.b.c") as client:
        client.tasks()
    assert (
        gateway.requests[0].headers["authorization"] == "Bearer a.b.c"
        and "x-api-key" not in gateway.requests[0].headers
    )
    with pytest.raises(ValueError, match="not both"):
        Client("http://x", api_key="k", token="t")


# -- /v2 ----------------------------------------------------------------------------------


def test_model_infer_sends_oip_tensors_and_decodes_the_answer():
    answer = {
        "model_name": "image-classify",
        "id": "1",
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [4, 2]},
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 2],
                "data": [0.25, 0.75, 1.0, 0.0],
            },
            {
                "name": "raw",
                "datatype": "BYTES",
                "shape": [1],
                "data": ["/w=="],
                "parameters": {"content_type": "base64"},
            },
        ],
    }
    gateway = Gateway(
        {("POST", "/v2/models/image-classify/versions/1/infer"): [httpx.Response(200, json=answer)]}
    )
    with client_for(gateway) as client:
        outputs = client.model_infer(
            "image-classify",
            {"pixels": np.zeros((2, 8, 8), dtype=np.float32)},
            version="1",
            outputs=["label", "probabilities", "raw"],
        )
    assert outputs["label"].dtype == np.int64 and outputs["label"].tolist() == [4, 2]
    assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (2, 2)
    assert outputs["raw"].tolist() == [b"\xff"]
    sent = json.loads(gateway.requests[0].content)
    assert sent["inputs"] == [
        {"name": "pixels", "shape": [2, 8, 8], "datatype": "FP32", "data": [0.0] * 128}
    ]
    assert sent["outputs"] == [{"name": "label"}, {"name": "probabilities"}, {"name": "raw"}]


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "x", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0]},
        {"name": "x", "datatype": "COMPLEX", "shape": [1], "data": [1]},
        {"name": "x", "datatype": "FP32", "shape": [-1], "data": [1.0]},
        {"name": "x", "datatype": "INT64", "shape": [1], "data": ["1"]},
        {
            "name": "x",
            "datatype": "BYTES",
            "shape": [1],
            "data": ["%%"],
            "parameters": {"content_type": "base64"},
        },
        {"datatype": "FP32", "shape": [1], "data": [1.0]},
    ],
)
def test_hostile_oip_answers_are_invalid_responses(tensor):
    gateway = Gateway(
        {("POST", "/v2/models/m/infer"): [httpx.Response(200, json={"outputs": [tensor]})]}
    )
    with client_for(gateway) as client, pytest.raises(ClientError) as caught:
        client.model_infer("m", {"x": np.ones(1, dtype=np.float32)})
    assert caught.value.error_code == "INVALID_RESPONSE"


def test_model_infer_refuses_a_dtype_the_contract_lacks():
    with client_for(Gateway({})) as client, pytest.raises(ValueError, match="uint32"):
        client.model_infer("m", {"x": np.ones(1, dtype=np.uint32)})


# -- async --------------------------------------------------------------------------------


async def test_async_client_retries_and_decodes_like_the_sync_one(sleeps):
    async def handler(request: httpx.Request) -> httpx.Response:
        return gateway(request)

    gateway = Gateway(
        {
            INFER: [
                httpx.Response(
                    503, json=error_body("SERVICE_UNAVAILABLE"), headers={"Retry-After": "3"}
                ),
                httpx.Response(200, json=done_body("text-embedding", {"embedding": [0.5] * 384})),
            ],
            ("GET", f"/v1/results/{RID}"): [
                httpx.Response(404, json=error_body("REQUEST_NOT_FOUND"))
            ],
        }
    )
    async with AsyncClient(
        "http://gateway.test", api_key="k", transport=httpx.MockTransport(handler)
    ) as client:
        result = await client.infer("text-embedding", {"text": "x"})
        with pytest.raises(ClientError) as caught:
            await client.result(RID, wait=1)
    assert result.outputs["embedding"].dtype == np.float32 and result.outputs[
        "embedding"
    ].shape == (1, 384)
    assert (
        sleeps == [3.0] and len({r.headers["idempotency-key"] for r in gateway.sent(*INFER)}) == 1
    )
    assert caught.value.error_code == "REQUEST_NOT_FOUND" and caught.value.status_code == 404


# -- Kafka requests -----------------------------------------------------------------------


def test_build_request_makes_tensors_as_the_gateway_would():
    request = build_request(
        "image-classify",
        {"pixels": [[[1.5] * 8] * 8]},
        priority=8,
        deadline_ms=500,
        parameters={"cache": False},
        created_at=1_000,
        client_id="me",
        traceparent="00-ab-cd-01",
    )
    (pixels,) = request.inputs
    assert (pixels.datatype, pixels.shape) == (DataType.FP32, [1, 8, 8])
    assert (
        request.priority is Priority.HIGH
        and request.deadline_at == 1_500
        and request.parameters == {"cache": "False"}
    )
    assert request.client_id == "me" and request.trace == {"traceparent": "00-ab-cd-01"}
    codec = AvroCodec()
    assert codec.decode(codec.encode(request), InferenceRequest) == request


@pytest.mark.parametrize(
    ("value", "datatype", "shape"),
    [
        ("hello", DataType.BYTES, [1]),
        (["a", "b"], DataType.BYTES, [2]),
        ([b"\x00\xff"], DataType.BYTES, [1]),
        ([[1, 2], [3, 4]], DataType.INT64, [2, 2]),
        (np.arange(3, dtype=np.int16), DataType.INT16, [3]),
        (np.zeros((1, 2), dtype=np.float64), DataType.FP64, [1, 2]),
        ([True, False], DataType.BOOL, [2]),
    ],
)
def test_input_tensor_datatypes(value, datatype, shape):
    tensor = input_tensor("x", value)
    assert (tensor.datatype, tensor.shape) == (datatype, shape)


@pytest.mark.parametrize(
    ("task", "inputs", "options", "message"),
    [
        ("Bad Task", {"text": "x"}, {}, "invalid task"),
        ("text-embedding", {}, {}, "non-empty mapping"),
        ("text-embedding", {"text": []}, {}, "empty"),
        ("text-embedding", {"text": [["a"], ["b", "c"]]}, {}, "ragged"),
        ("text-embedding", {"text": ["a", 1]}, {}, "all be str or bytes"),
        ("text-embedding", {"x": np.array(["a", 1], dtype=object)}, {}, "str or bytes"),
        ("text-embedding", {"x": [[1.0], [2.0, 3.0]]}, {}, "rectangular"),
        ("text-embedding", {"text": "x"}, {"priority": "urgent"}, "priority"),
        ("text-embedding", {"text": "x"}, {"deadline_ms": 0}, "deadline_ms"),
        ("text-embedding", {"text": "x"}, {"deadline_ms": True}, "deadline_ms"),
    ],
)
def test_build_request_refuses_what_the_worker_would(task, inputs, options, message):
    with pytest.raises(ValueError, match=message):
        build_request(task, inputs, **options)


def test_inputs_that_are_not_json_are_refused_before_sending():
    gateway = Gateway({})
    with client_for(gateway) as client, pytest.raises(ValueError):
        client.submit("text-embedding", {"features": [float("nan")]})
    assert gateway.requests == []


# -- ResultConsumer over a fake aiokafka consumer --------------------------------------------


class FakeKafkaConsumer:
    """aiokafka's consumer as ResultConsumer uses it; ``batches`` are handed out by getmany."""

    def __init__(self, batches: asyncio.Queue, **options) -> None:
        self.batches = batches
        self.options = options
        self.stopped = False

    async def start(self) -> None: ...

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    async def topics(self) -> set[str]:
        return set()

    def assign(self, partitions) -> None:
        self.assigned = partitions

    async def position(self, partition) -> int:
        return 0

    async def getmany(self, timeout_ms: int):
        item = await self.batches.get()
        if isinstance(item, Exception):
            raise item
        return {"tp": item}

    async def stop(self) -> None:
        self.stopped = True


def message(value: bytes, offset: int = 0):
    return types.SimpleNamespace(value=value, partition=0, offset=offset)


def encoded_result(request_id: str) -> bytes:
    return AvroCodec().encode(
        InferenceResult(
            request_id=request_id, task="text-embedding", status=Status.SUCCEEDED, worker_id="w"
        )
    )


@pytest.fixture
def fake_kafka(monkeypatch):
    batches: asyncio.Queue = asyncio.Queue()
    made: list[FakeKafkaConsumer] = []

    def make(**options):
        made.append(FakeKafkaConsumer(batches, **options))
        return made[-1]

    monkeypatch.setattr(client_kafka, "AIOKafkaConsumer", make)
    return batches, made


async def test_result_consumer_keeps_what_it_waits_for_however_many_others_arrive(fake_kafka):
    batches, made = fake_kafka
    seen: list[str] = []
    async with ResultConsumer(
        "broker:9092",
        "text-embedding",
        prefix="p",
        max_buffered=2,
        on_record=lambda r: seen.append(r.request_id),
    ) as consumer:
        assert (
            made[0].options["group_id"] is None and made[0].options["auto_offset_reset"] == "latest"
        )
        batches.put_nowait([message(encoded_result("early"))])
        assert (await consumer.wait(["early"], timeout=5))[
            "early"
        ].status == "succeeded"  # arrived first
        waiting = asyncio.create_task(consumer.wait(["a", "b"], timeout=5))
        await asyncio.sleep(0)
        batches.put_nowait(
            [message(encoded_result("a")), message(b"\xc3\x01 not avro")]
            + [message(encoded_result(f"other-{i}")) for i in range(5)]
        )  # evicts "a"
        batches.put_nowait([message(encoded_result("b"))])
        results = await waiting
        assert set(results) == {"a", "b"} and "undecodable" not in seen and len(seen) == 8
        assert await consumer.wait(["never"], timeout=0.05) == {}
    assert made[0].stopped


async def test_result_consumer_waiters_fail_when_reading_fails(fake_kafka):
    batches, _ = fake_kafka
    async with ResultConsumer("broker:9092", "text-embedding") as consumer:
        waiting = asyncio.create_task(consumer.wait(["x"], timeout=30))
        await asyncio.sleep(0)
        batches.put_nowait(KafkaConnectionError("broker gone"))
        with pytest.raises(ClientError) as caught:
            await asyncio.wait_for(waiting, 5)
    assert caught.value.error_code == "KAFKA_ERROR" and isinstance(
        consumer.failure, KafkaConnectionError
    )


# -- streaminfer submit ---------------------------------------------------------------------


def run_submit(monkeypatch, capsys, gateway: Gateway, *argv: str) -> tuple[int, str, str]:
    import streaminfer.client as client_package
    from streaminfer import cli

    class MockedClient(Client):
        def __init__(self, base_url: str, **options) -> None:
            super().__init__(base_url, transport=httpx.MockTransport(gateway), **options)

    monkeypatch.setattr(client_package, "Client", MockedClient)
    with pytest.raises(SystemExit) as exited:
        cli.main(["submit", *argv, "--url", "http://gateway.test"])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_submit_prints_the_gateways_result_body(monkeypatch, capsys):
    body = done_body("text-embedding", {"embedding": [0.25] * 384})
    gateway = Gateway({INFER: [httpx.Response(200, json=body)]})
    code, out, _ = run_submit(
        monkeypatch,
        capsys,
        gateway,
        "text-embedding",
        "--text",
        "a",
        "b",
        "--priority",
        "low",
        "--api-key",
        "si_k",
    )
    assert code == 0 and json.loads(out) == body
    sent = gateway.sent(*INFER)[0]
    assert json.loads(sent.content) == {"inputs": {"text": ["a", "b"]}, "priority": "low"}
    assert sent.headers["x-api-key"] == "si_k" and sent.headers["idempotency-key"]


def test_submit_prints_error_bodies_and_exits_1(monkeypatch, capsys):
    refused = Gateway(
        {("POST", "/v1/infer/nope"): [httpx.Response(404, json=error_body("TASK_NOT_FOUND"))]}
    )
    code, out, _ = run_submit(monkeypatch, capsys, refused, "nope", "--text", "x")
    assert code == 1 and json.loads(out)["error_code"] == "TASK_NOT_FOUND"
    unreachable = Gateway({("POST", "/v1/infer/nope"): [httpx.ConnectError("refused")]})
    monkeypatch.setattr(client_http, "_sleep", lambda s: None)
    code, out, _ = run_submit(monkeypatch, capsys, unreachable, "nope", "--text", "x")
    assert code == 1 and json.loads(out)["error_code"] == "CONNECTION_ERROR"


@pytest.mark.parametrize(
    "body", ['{"inputs": {"text": "x"}, "bogus": 1}', '["not", "an", "object"]', "{}"]
)
def test_submit_refuses_a_body_it_cannot_send(monkeypatch, capsys, body):
    gateway = Gateway({})
    code, _, err = run_submit(monkeypatch, capsys, gateway, "text-embedding", "--json", body)
    assert code == 2 and "inputs" in err and gateway.requests == []


# -- /v2 binary tensor data -----------------------------------------------------------------


def test_binary_requests_are_what_the_gateway_reads_and_its_binary_answers_decode():
    from streaminfer.client.oip_binary import HEADER as CLIENT_HEADER
    from streaminfer.gateway.oip_binary import HEADER, binary_response, raw_bytes, split_request

    captured: list[httpx.Request] = []
    embedding = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    tags = raw_bytes(np.array(["cat", b"\xff"], dtype=object), "BYTES")  # not UTF-8: stays bytes
    answer = binary_response(
        {
            "model_name": "m",
            "outputs": [
                {
                    "name": "embedding",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": embedding.nbytes},
                },
                {
                    "name": "tag",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(tags)},
                },
                {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 2]},
            ],
        },
        [raw_bytes(embedding, "FP32"), tags],
    )

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200, content=answer.body, headers=dict(answer.headers))

    with Client("http://gateway.test", transport=httpx.MockTransport(handler)) as client:
        outputs = client.model_infer(
            "m",
            {
                "text": np.array(["héllo", "x"], dtype=object),
                "pixels": np.ones((2, 2), dtype=np.float16),
            },
            binary=True,
        )
    np.testing.assert_array_equal(outputs["embedding"], embedding)
    assert outputs["embedding"].dtype == np.float32 and outputs["label"].tolist() == [1, 2]
    assert outputs["tag"].tolist() == ["cat", b"\xff"]
    sent = captured[0]
    assert CLIENT_HEADER == HEADER and sent.headers["content-type"] == "application/octet-stream"
    parsed = split_request(sent.content, sent.headers[HEADER])  # the gateway's own reader
    assert parsed["parameters"] == {"binary_data_output": True}
    assert [t["data"] for t in parsed["inputs"]] == [["héllo", "x"], [1.0] * 4]


@pytest.mark.parametrize(
    ("content", "length"),
    [
        (b'{"outputs": []}', "99"),
        (b'{"outputs": []}', "-1"),
        (b"{nope}", "6"),
        (
            b'{"outputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}abcd',
            None,
        ),
        (
            b'{"outputs": [{"name": "x", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 8}}]}abcdefgh',
            None,
        ),
        (
            b'{"outputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}abcdEXTRA',
            None,
        ),
        (
            b'{"outputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}\x09\x00\x00\x00ab',
            None,
        ),
        (
            b'{"outputs": [{"name": "x", "datatype": "ODD", "shape": [1], "parameters": {"binary_data_size": 1}}]}a',
            None,
        ),
    ],
)
def test_hostile_binary_answers_are_invalid_responses(content, length):
    from streaminfer.client.oip_binary import split_answer

    if length is None:
        length = str(content.index(b"]}") + 2)
    with pytest.raises(ClientError) as caught:
        split_answer(content, length)
    assert caught.value.error_code == "INVALID_RESPONSE"


# -- OpenTelemetry context ------------------------------------------------------------------


def test_the_callers_trace_context_goes_on_submissions_and_kafka_events():
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    gateway = Gateway({INFER: [httpx.Response(202, json={"request_id": RID, "status": "queued"})]})
    with client_for(gateway) as client:
        client.submit("text-embedding", {"text": "outside any span"})
        with tracer.start_as_current_span("caller") as span:
            client.submit("text-embedding", {"text": "inside"})
            request = build_request("text-embedding", {"text": "x"})
            pinned = build_request(
                "text-embedding",
                {"text": "x"},
                traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            )
    trace_id = format(span.get_span_context().trace_id, "032x")
    outside, inside = gateway.sent(*INFER)
    assert "traceparent" not in outside.headers
    assert inside.headers["traceparent"].split("-")[1] == trace_id
    assert request.trace["traceparent"].split("-")[1] == trace_id
    assert pinned.trace == {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert build_request("text-embedding", {"text": "x"}).trace == {}
