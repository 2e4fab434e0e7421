"""Hostile bodies are 4xx in SPEC §5's error shape, never 500, and nothing is written before the
refusal (review finding 8 of issue 11): the built-in tasks' friendly forms, plus a hypothesis run
of hostile JSON on POST /v1/infer/{task}."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.http import ERROR_KEYS, assert_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BUILTIN_TASKS = ("image-classify", "tabular-classify", "text-embedding")  # builtin_gateway's tasks
FEATURE_NAMES = yaml.safe_load(
    (
        Path(__file__).resolve().parents[3]
        / "models"
        / "builtin"
        / "templates"
        / "tabular-classify.yaml"
    ).read_text()
)["friendly"]["inputs"]["features"]["names"]
# every feature given, the last one 10**400 (past float64): that one is what is refused
HUGE_FEATURE = (
    '{"inputs": {"features": {'
    + "".join(f'"{name}": 1.0, ' for name in FEATURE_NAMES[:-1])
    + f'"{FEATURE_NAMES[-1]}": {10**400}'
    + "}}}"
)


def post(gateway, task: str, body: str | bytes, **headers):
    return gateway.post(
        f"/v1/infer/{task}", content=body, headers={"content-type": "application/json", **headers}
    )


@pytest.mark.parametrize(
    "task,body",
    [
        ("text-embedding", '{"inputs": {"text": "a\\ud800b"}}'),
        ("text-embedding", '{"inputs": {"text": ["ok", "\\udfff"]}}'),
        (
            "text-embedding",
            '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}',
        ),
        ("text-embedding", '{"inputs": {"text": "ok"}, "parameters": {"p": "\\ud800"}}'),
        ("image-classify", json.dumps({"inputs": {"pixels": [[10**400] * 8] * 8}})),
        ("image-classify", json.dumps({"inputs": {"pixels": [[[-(10**400)] * 8] * 8]}})),
        ("tabular-classify", HUGE_FEATURE),
        ("text-embedding", json.dumps({"inputs": {"text": "hi"}, "deadline_ms": 10**30})),
        ("text-embedding", json.dumps({"inputs": {"text": "hi"}, "deadline_ms": -1})),
    ],
    ids=[
        "lone surrogate",
        "surrogate in a list",
        "surrogate in an OIP tensor",
        "surrogate in a parameter",
        "10**400 pixels",
        "-10**400 pixels",
        "10**400 feature",
        "deadline 10**30",
        "deadline -1",
    ],
)
def test_hostile_values_are_422_and_write_nothing(builtin_gateway, task, body):
    assert_error(post(builtin_gateway, task, body), 422, "INVALID_REQUEST")
    assert builtin_gateway.store.statuses == {} and builtin_gateway.producer.sent == []


def test_a_non_utf8_body_is_400_invalid_request(builtin_gateway):
    assert_error(
        post(builtin_gateway, "text-embedding", b'{"inputs": {"text": "\xff\xfe"}}'),
        400,
        "INVALID_REQUEST",
    )


@pytest.mark.parametrize("depth", [64, 200, 5000])
def test_json_nested_past_the_bound_is_400_invalid_request(builtin_gateway, depth):
    body = '{"inputs": ' + "[" * depth + "]" * depth + "}"
    assert_error(post(builtin_gateway, "image-classify", body), 400, "INVALID_REQUEST")


def test_nesting_within_the_bound_is_judged_on_its_content(builtin_gateway):
    body = '{"inputs": ' + "[" * 62 + "]" * 62 + "}"
    assert_error(post(builtin_gateway, "image-classify", body), 422, "INVALID_REQUEST")


def test_a_chunked_body_over_the_limit_is_413(builtin_gateway):
    def chunks():
        yield b'{"inputs": {"text": "'
        for _ in range(1100):
            yield b"a" * 1024
        yield b'"}}'

    body = assert_error(post(builtin_gateway, "text-embedding", chunks()), 413, "PAYLOAD_TOO_LARGE")
    assert body["details"] == {"max_body_bytes": 1 << 20}


# --- hypothesis: hostile JSON bodies -------------------------------------------------------------

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_TEXT = st.text(st.one_of(st.characters(), _SURROGATES), max_size=12)
_NUMBER_TOKENS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        str(10**400),
        str(-(10**400)),
        "1e-999",
        "-0",
        "0.0000000001",
    ]
)
_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    _TEXT,
    st.integers(min_value=10**300, max_value=10**400),
)


def _json_values(depth: int):
    return st.recursive(
        _SCALAR,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=3)
        ),
        max_leaves=depth,
    )


def _nested(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


_FRIENDLY = st.one_of(
    st.fixed_dictionaries({"text": _json_values(8)}),
    st.fixed_dictionaries(
        {
            "pixels": st.one_of(
                _json_values(8),
                st.lists(st.lists(_SCALAR, min_size=8, max_size=8), min_size=8, max_size=8),
            )
        }
    ),
    st.fixed_dictionaries({"image": _json_values(4)}),
    st.fixed_dictionaries(
        {"features": st.one_of(_json_values(8), st.dictionaries(_TEXT, _SCALAR, max_size=4))}
    ),
    st.lists(
        st.fixed_dictionaries(
            {
                "name": _SCALAR,
                "datatype": st.one_of(_SCALAR, st.sampled_from(["FP32", "BYTES", "INT64", "BOOL"])),
                "shape": _json_values(4),
                "data": _json_values(8),
            }
        ),
        max_size=2,
    ),
    _json_values(12),
)
_BODY = st.fixed_dictionaries(
    {"inputs": _FRIENDLY},
    optional={
        "priority": st.one_of(_SCALAR, st.sampled_from(["high", "normal", "low", 10, 11, -1])),
        "model_version": _json_values(2),
        "deadline_ms": st.one_of(_SCALAR, st.sampled_from([10**30, 0, -5, 1])),
        "parameters": st.one_of(_json_values(4), st.dictionaries(_TEXT, _SCALAR, max_size=4)),
        "extra": _json_values(2),
    },
)


def _encode(body, depth: int, token: str | None) -> str:
    text = json.dumps(_nested(body, depth) if depth else body, allow_nan=True, ensure_ascii=True)
    if token is not None:  # a raw token json.dumps never writes (1e999, 10**400 as text)
        text = text.replace("null", token, 1)
    return text


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=_BODY,
    task=st.sampled_from([*BUILTIN_TASKS, "no-such-task"]),
    depth=st.one_of(st.just(0), st.integers(min_value=1, max_value=200)),
    token=st.one_of(st.none(), _NUMBER_TOKENS),
    wait=st.sampled_from([None, "0", "-1", "NaN", "abc"]),
)
def test_hostile_json_bodies_are_never_a_5xx(builtin_gateway, body, task, depth, token, wait):
    url = f"/v1/infer/{task}" + (f"?wait={wait}" if wait is not None else "")
    response = builtin_gateway.post(
        url, content=_encode(body, depth, token), headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()
        assert set(error) == ERROR_KEYS and error["message"], error
        assert_error(response, response.status_code, error["error_code"])
