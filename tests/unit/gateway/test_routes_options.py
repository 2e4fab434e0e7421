"""``?wait`` and the headers of POST /v1/infer/{task}, validated by the route itself: the same
answers as when FastAPI validated them one parameter at a time (422 INVALID_REQUEST naming where
the bad value was), and the same OpenAPI parameters."""

from __future__ import annotations

import pytest
from helpers.http import assert_error

BODY = {"inputs": {"x": [1, 2, 3]}}


@pytest.mark.parametrize("wait", ["-1", "3601", "soon", "", "inf", "nan", "1e9"])
def test_a_bad_wait_is_422_at_the_query(gateway, wait):
    body = assert_error(
        gateway.post(f"/v1/infer/tiny?wait={wait}", json=BODY), 422, "INVALID_REQUEST"
    )
    assert [e["loc"] for e in body["details"]["errors"]] == [["query", "wait"]]
    assert gateway.producer.sent == []


@pytest.mark.parametrize("wait", ["0", "0.5", "3600"])
def test_a_good_wait_is_taken(gateway, wait):
    response = gateway.post(f"/v1/infer/tiny?wait={wait}", json=BODY)
    assert response.status_code == 202, response.text  # nothing answers in the unit gateway


def test_an_idempotency_key_past_256_characters_is_422_at_the_header(gateway):
    body = assert_error(
        gateway.post("/v1/infer/tiny", json=BODY, headers={"Idempotency-Key": "k" * 257}),
        422,
        "INVALID_REQUEST",
    )
    assert [e["loc"] for e in body["details"]["errors"]] == [["header", "idempotency-key"]]
    ok = gateway.post("/v1/infer/tiny", json=BODY, headers={"Idempotency-Key": "k" * 256})
    assert ok.status_code == 202, ok.text


def test_headers_reach_the_request(gateway):
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = gateway.post(
        "/v1/infer/tiny", json=BODY, headers={"traceparent": trace, "Prefer": "wait=0"}
    )
    assert response.status_code == 202 and response.headers["traceparent"] == trace
    request, _ = gateway.producer.sent[-1]
    assert request.trace == {"traceparent": trace}


def test_a_bad_prefer_wait_is_still_the_services_422(gateway):
    assert_error(
        gateway.post("/v1/infer/tiny", json=BODY, headers={"Prefer": "wait=soon"}),
        422,
        "INVALID_REQUEST",
    )


def test_a_bad_body_is_refused_before_the_options(gateway):
    body = assert_error(
        gateway.post("/v1/infer/tiny?wait=-1", json={"nope": 1}), 422, "INVALID_REQUEST"
    )
    assert ["body", "inputs"] in [e["loc"] for e in body["details"]["errors"]]


def test_the_parameters_stay_documented(gateway):
    params = gateway.get("/openapi.json").json()["paths"]["/v1/infer/{task}"]["post"]["parameters"]
    assert [(p["name"], p["in"]) for p in params] == [
        ("task", "path"),
        ("wait", "query"),
        ("prefer", "header"),
        ("traceparent", "header"),
        ("idempotency-key", "header"),
    ]
    wait = params[1]["schema"]["anyOf"][0]
    assert (wait["minimum"], wait["maximum"]) == (0, 3600)
    assert params[4]["schema"]["anyOf"][0]["maxLength"] == 256
