"""Redis keys and Kafka header names."""

from __future__ import annotations

import pytest

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


def test_request_states_are_the_words_in_redis() -> None:
    assert [s.value for s in keys.RequestState] == ["queued", "running", "done", "cancelling"]
    assert keys.STATUS_FIELD == "status"
    for state in keys.RequestState:
        assert keys.RequestState.decode(state.value) is state
        assert keys.RequestState.decode(state.value.encode()) is state


@pytest.mark.parametrize("garbled", [None, "", "QUEUED", "succeeded", b"\xff\xfe", "running "])
def test_a_state_no_writer_writes_decodes_to_none(garbled) -> None:
    assert keys.RequestState.decode(garbled) is None


def test_heartbeat_round_trip() -> None:
    beat = keys.Heartbeat("w-1", ["text-embedding", "image-classify"])
    encoded = beat.encode()
    assert keys.Heartbeat.decode(encoded) == beat
    assert keys.Heartbeat.decode(encoded.encode()) == beat  # as redis-py hands it back
    assert keys.Heartbeat.decode(keys.Heartbeat("w-2", []).encode()).tasks == []


@pytest.mark.parametrize(
    "garbled",
    [
        b"not json",
        b"\xff",
        b"[1, 2]",
        b'{"worker_id": "w"}',
        b'{"tasks": []}',
        b'{"worker_id": 7, "tasks": []}',
        b'{"worker_id": "w", "tasks": "text-embedding"}',
        b'{"worker_id": "w", "tasks": [1]}',
        b"[" * 100_000,
    ],
)
def test_a_garbled_heartbeat_is_a_value_error(garbled) -> None:
    with pytest.raises(ValueError, match="not a worker heartbeat"):
        keys.Heartbeat.decode(garbled)


def test_service_entry_round_trip() -> None:
    figures = {"instances": 2, "service_ms_per_item": 1.5, "fit": {"fixed_ms": 3.0}}
    decoded = keys.decode_service(keys.encode_service(figures, 1_700_000_000_000).encode())
    assert decoded == {**figures, "at": 1_700_000_000_000}


@pytest.mark.parametrize("garbled", [b"not json", b"[1, 2]", b"3", b"\xff", b"[" * 100_000])
def test_a_garbled_service_entry_is_a_value_error(garbled) -> None:
    with pytest.raises(ValueError, match="not a service entry"):
        keys.decode_service(garbled)


@pytest.mark.parametrize("request_id", ["r1", "a:b:c", "7f0c-uuid"])
def test_latency_member_round_trip(request_id) -> None:
    member = keys.encode_latency(request_id, 12.34)
    assert member == f"{request_id}:12.3"
    assert keys.decode_latency(member) == 12.3
    assert keys.decode_latency(member.encode()) == 12.3


@pytest.mark.parametrize("garbled", [b"no-colon", b"r1:", b"r1:fast", "r1:12ms"])
def test_a_garbled_latency_member_is_a_value_error(garbled) -> None:
    with pytest.raises(ValueError):
        keys.decode_latency(garbled)


@pytest.mark.parametrize("request_id", ["r1", "a:b", "x.y_z-1"])
def test_result_keys_parse_back_to_their_request(request_id) -> None:
    key = keys.result_key("si:eu", request_id)
    assert keys.request_id_of_result_key("si:eu", key) == request_id
    assert keys.request_id_of_result_key("si:eu", key.encode()) == request_id


@pytest.mark.parametrize("other", ["si:status:r1", "other:result:r1", "si:result:", "si:resultr1"])
def test_keys_of_something_else_are_no_result_key(other) -> None:
    assert keys.request_id_of_result_key("si", other) is None


def test_api_client_keys_parse_back_to_their_client() -> None:
    for client in ("alice", "team:ml", "bob-2"):
        key = keys.api_client_key("si", client)
        assert keys.client_of_api_client_key("si", key) == client
        assert keys.client_of_api_client_key("si", key.encode()) == client
    assert keys.client_of_api_client_key("si", keys.api_key_key("si", "ab" * 32)) is None
    assert keys.client_of_api_client_key("si", "si:apiclient:") is None
