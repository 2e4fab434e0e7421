"""The registry client's answers (outage, refusal, unknown id) and the bounded, expiring
memory of failed look-ups."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from streaminfer.schemas.errors import (
    DecodeError,
    EncodeError,
    RegistryUnavailable,
    SchemaError,
    UnknownSchema,
)
from streaminfer.schemas.registry import LookupFailures, RegistryClient

Handler = Callable[[httpx.Request], httpx.Response]
URL = "http://registry.test:8081"


@pytest.fixture
def client_for() -> Iterator[Callable[[Handler], RegistryClient]]:
    made: list[httpx.Client] = []

    def make(handler: Handler) -> RegistryClient:
        made.append(httpx.Client(transport=httpx.MockTransport(handler)))
        return RegistryClient(URL, client=made[-1])  # no base_url needed

    yield make
    for client in made:
        client.close()


def _status(code: int, body: object = None) -> Handler:
    return lambda request: httpx.Response(code, json=body if body is not None else {})


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize(
    "handler",
    [_refuse, _time_out, _status(500), _status(503), _status(429), _status(408), _status(401)],
    ids=["refused", "timeout", "500", "503", "429", "408", "401"],
)
def test_outages_are_retriable_for_both_calls(
    client_for: Callable[[Handler], RegistryClient], handler: Handler
) -> None:
    client = client_for(handler)
    for call in (lambda: client.register("s", {"type": "string"}), lambda: client.schema_by_id(1)):
        with pytest.raises(RegistryUnavailable) as info:
            call()
        assert info.value.retriable is True and not isinstance(info.value, DecodeError)


@pytest.mark.parametrize("code", [409, 422])
def test_a_refused_schema_is_an_encode_error(
    client_for: Callable[[Handler], RegistryClient], code: int
) -> None:
    with pytest.raises(EncodeError) as info:
        client_for(_status(code, {"error_code": code})).register("s", {"type": "string"})
    assert info.value.retriable is False


@pytest.mark.parametrize("body", [{"no": "id"}, {"id": "x"}, [1]])
def test_an_unreadable_registration_answer_is_an_outage(
    client_for: Callable[[Handler], RegistryClient], body: object
) -> None:
    with pytest.raises(RegistryUnavailable):
        client_for(_status(200, body)).register("s", {"type": "string"})


def test_unknown_and_unusable_ids(client_for: Callable[[Handler], RegistryClient]) -> None:
    with pytest.raises(UnknownSchema):
        client_for(_status(404, {"error_code": 40403})).schema_by_id(5)
    with pytest.raises(UnknownSchema):
        client_for(_status(200, {"schema": "{}", "schemaType": "PROTOBUF"})).schema_by_id(5)
    with pytest.raises(UnknownSchema):
        client_for(_status(200, {"schema": "not json"})).schema_by_id(5)


def test_requests_go_to_the_configured_url(
    client_for: Callable[[Handler], RegistryClient],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"id": 7})
        return httpx.Response(200, json={"schema": json.dumps({"type": "string"})})

    client = client_for(handler)
    assert client.register("io.streaminfer.v1.Tensor", {"type": "string"}) == 7
    assert client.schema_by_id(7) == {"type": "string"}
    assert [str(r.url) for r in seen] == [
        f"{URL}/subjects/io.streaminfer.v1.Tensor/versions",
        f"{URL}/schemas/ids/7",
    ]
    assert all(r.headers["Accept"] == "application/vnd.schemaregistry.v1+json" for r in seen)
    client.close()  # a client passed in stays open: its owner closes it
    assert client_for(handler).schema_by_id(7) == {"type": "string"}


# -- LookupFailures -----------------------------------------------------------------------------


def _remembers(failures: LookupFailures, schema_id: int) -> bool:
    try:
        failures.check(schema_id)
    except SchemaError:
        return True
    return False


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_are_raised_again_until_they_expire() -> None:
    clock = _Clock()
    failures = LookupFailures(unknown_ttl_s=60, unavailable_ttl_s=1, clock=clock)
    failures.check(1)  # nothing remembered
    failures.remember(1, UnknownSchema("schema id 1 is not in the registry"))
    failures.remember(2, RegistryUnavailable("down"))
    for schema_id, error_type in ((1, UnknownSchema), (2, RegistryUnavailable)):
        with pytest.raises(error_type, match="remembered"):
            failures.check(schema_id)
    clock.now += 1.5  # the outage's back-off is over; the unknown id is still remembered
    failures.check(2)
    assert _remembers(failures, 1) and not _remembers(failures, 2)
    with pytest.raises(RegistryUnavailable) as info:
        failures.remember(3, RegistryUnavailable("down"))
        failures.check(3)
    assert info.value.retriable is True
    clock.now += 60
    failures.check(1)
    assert len(failures) == 1  # 3, whose back-off has not been checked since


def test_failures_are_bounded_least_recently_seen_first() -> None:
    failures = LookupFailures(max_ids=3, clock=_Clock())
    for schema_id in range(3):
        failures.remember(schema_id, UnknownSchema(f"id {schema_id}"))
    assert _remembers(failures, 0)  # seen: now the most recent
    failures.remember(3, UnknownSchema("id 3"))
    assert len(failures) == 3
    assert [_remembers(failures, i) for i in range(4)] == [True, False, True, True]
    for schema_id in range(10_000):
        failures.remember(schema_id, UnknownSchema("flood"))
    assert len(failures) == 3
    assert issubclass(UnknownSchema, SchemaError)
