"""Assertions on the gateway's JSON error model (SPEC §5)."""

from __future__ import annotations

ERROR_KEYS = {"error_code", "message", "request_id", "timestamp", "details"}


def assert_error(response, status: int, code: str) -> dict:
    """The response is ``status`` with SPEC §5's error body and ``code``; returns the body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS and body["error_code"] == code, body
    assert body["message"]
    return body
