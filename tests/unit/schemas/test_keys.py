"""Redis keys and Kafka header names."""

from __future__ import annotations

from streaminfer.schemas import keys


def test_request_scoped_keys_are_distinct() -> None:
    built = {
        keys.result_key("si", "r1"),
        keys.result_channel("si", "r1"),
        keys.status_key("si", "r1"),
        keys.cancel_key("si", "r1"),
    }
    assert len(built) == 4
    assert all(k.startswith("si:") and k.endswith(":r1") for k in built)
    assert keys.result_key("si", "r1") != keys.result_key("si", "r2")
    assert keys.result_key("a", "r1") != keys.result_key("b", "r1")


def test_cache_key() -> None:
    key = keys.cache_key("si", "text-embedding", "1", "ab" * 32)
    assert key == f"si:cache:text-embedding:1:{'ab' * 32}"
    assert "None" not in keys.cache_key("si", "t", None, "d")
    assert keys.cache_key("si", "t", 2, "d") == keys.cache_key("si", "t", "2", "d")


def test_idempotency_key_has_no_collisions_across_colons() -> None:
    a = keys.idempotency_key("si", "alice:x", "k")
    b = keys.idempotency_key("si", "alice", "x:k")
    assert a != b
    assert a.startswith("si:idempotency:alice:x:")
    assert keys.idempotency_key("si", "alice", "k") == keys.idempotency_key("si", "alice", "k")
    assert keys.idempotency_key("si", "alice", "k") != keys.idempotency_key("si", "bob", "k")
    long_key = keys.idempotency_key("si", "c", "x" * 10_000)
    assert len(long_key) < 100


def test_header_names() -> None:
    assert keys.HEADER_ERROR_TYPE == "streaminfer-error-type"
    assert keys.HEADER_REQUEST_ID == "streaminfer-request-id"
    assert keys.HEADER_TRACEPARENT == "traceparent"
