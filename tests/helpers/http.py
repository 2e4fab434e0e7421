"""Assertions on the gateway's JSON error model (SPEC §5)."""

from __future__ import annotations

from urllib.parse import urlsplit

ERROR_KEYS = {"error_code", "message", "request_id", "timestamp", "details"}


def assert_error(response, status: int, code: str) -> dict:
    """The response is ``status`` with SPEC §5's error body and ``code``; returns the body."""
    assert response.status_code == status, response.text
    body = response.json()
    if urlsplit(str(response.url)).path.startswith("/v2"):  # and KServe's error string, the message
        assert body.get("error") == body.get("message"), body
        assert set(body) == ERROR_KEYS | {"error"} and body["error_code"] == code, body
    else:
        assert set(body) == ERROR_KEYS and body["error_code"] == code, body
    assert body["message"]
    return body
