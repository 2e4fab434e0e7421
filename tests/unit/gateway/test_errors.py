"""Outages answer 503 SERVICE_UNAVAILABLE with Retry-After and the JSON error body on every
route, auth on (API key or JWT) or off: Redis away in the API-key lookup, the rate limiter or the
result store, and Kafka away in a publish."""

from __future__ import annotations

import time

import jwt
import pytest
import redis.exceptions
from aiokafka.errors import KafkaConnectionError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers.http import assert_error

from streaminfer.gateway.apikeys import ApiKeyStore, Principal
from streaminfer.gateway.limits import RateLimiter

# what redis-py raises when Redis is stopped, hangs, or the socket fails underneath it
OUTAGES = [
    redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    redis.exceptions.TimeoutError("Timeout reading from socket"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
]
IDS = ["redis-connection", "redis-timeout", "socket-reset", "timeout"]

BODY = {"inputs": {"x": [1, 2, 3]}}
ROUTES = [
    ("POST", "/v1/infer/tiny", BODY),
    ("GET", "/v1/results/some-id", None),
    ("DELETE", "/v1/requests/some-id", None),
    ("GET", "/v1/tasks", None),
    ("GET", "/admin/stats", None),
    (
        "POST",
        "/v2/models/tiny/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
    ),
    ("GET", "/v2/models/tiny", None),
]


class DownRedis:
    """A Redis client whose every command fails as when the server is away."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def register_script(self, script):
        async def run(*args, **kwargs):
            raise self.exc

        return run

    def __getattr__(self, name):
        async def fail(*args, **kwargs):
            raise self.exc

        return fail


class DownStore:
    """The result store with Redis away: every call raises what redis-py raises, unwrapped."""

    def __init__(self, exc: Exception) -> None:
        self.redis = DownRedis(exc)

    async def ping(self):
        return False

    def __getattr__(self, name):
        return getattr(self.redis, name)


class DownProducer:
    sent: list = []

    async def is_reachable(self):
        return True

    async def submit(self, request, accepted):
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")


class KeyStore:
    async def lookup(self, key):
        return Principal("alice", frozenset({"inference:submit", "inference:read"}), is_admin=True)


@pytest.fixture(scope="module")
def signing_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def secured(make_gateway, signing_key):
    """Makes gateways with auth on (API keys and JWTs signed by ``signing_key``)."""
    pem = (
        signing_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    def make(**kwargs):
        return make_gateway(auth="apikey,jwt", jwt_public_keys=pem, **kwargs)

    return make


def jwt_headers(signing_key) -> dict[str, str]:
    token = jwt.encode(
        {
            "sub": "alice",
            "permissions": ["inference:submit", "inference:read"],
            "is_admin": True,
            "exp": int(time.time()) + 300,
        },
        signing_key,
        algorithm="ES256",
    )
    return {"Authorization": f"Bearer {token}"}


def assert_unavailable(response) -> dict:
    body = assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert int(response.headers["retry-after"]) >= 1
    return body


@pytest.mark.parametrize("exc", OUTAGES, ids=IDS)
@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_api_key_lookup_without_redis_is_503(secured, exc, method, path, body):
    gateway = secured()
    gateway.app.state.auth.api_keys = ApiKeyStore(DownRedis(exc), "unit")
    response = gateway.request(method, path, json=body, headers={"X-API-Key": "si_some-key"})
    assert "API key store" in assert_unavailable(response)["message"]
    # an API key sent as a bearer token takes the same path
    assert_unavailable(
        gateway.request(method, path, json=body, headers={"Authorization": "Bearer si_some-key"})
    )


@pytest.mark.parametrize("exc", OUTAGES, ids=IDS)
@pytest.mark.parametrize("credentials", ["api key", "jwt"])
@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_rate_limiter_without_redis_is_503(
    secured, signing_key, exc, credentials, method, path, body
):
    gateway = secured()
    gateway.app.state.auth.api_keys = KeyStore()
    gateway.app.state.rate_limiter = RateLimiter(DownRedis(exc), "unit", per_s=100, burst=200)
    headers = {"X-API-Key": "si_some-key"} if credentials == "api key" else jwt_headers(signing_key)
    body_json = assert_unavailable(gateway.request(method, path, json=body, headers=headers))
    assert "rate limit store" in body_json["message"]
    assert gateway.producer.sent == []


@pytest.mark.parametrize("exc", OUTAGES, ids=IDS)
@pytest.mark.parametrize(
    "method,path,body",
    [r for r in ROUTES if r[1] not in ("/v1/tasks", "/v2/models/tiny")],
    ids=[f"{m} {p}" for m, p, _ in ROUTES if p not in ("/v1/tasks", "/v2/models/tiny")],
)
def test_result_store_without_redis_is_503_with_auth_off(make_gateway, exc, method, path, body):
    gateway = make_gateway(store=DownStore(exc))
    assert_unavailable(gateway.request(method, path, json=body))


@pytest.mark.parametrize("exc", OUTAGES, ids=IDS)
def test_result_store_without_redis_is_503_with_auth_on(secured, signing_key, exc):
    gateway = secured(store=DownStore(exc))
    gateway.app.state.auth.api_keys = KeyStore()
    for headers in ({"X-API-Key": "si_some-key"}, jwt_headers(signing_key)):
        assert_unavailable(gateway.post("/v1/infer/tiny", json=BODY, headers=headers))
        assert_unavailable(gateway.get("/v1/results/some-id", headers=headers))


def test_kafka_error_escaping_a_publish_is_503(make_gateway):
    gateway = make_gateway(producer=DownProducer())
    body = assert_unavailable(gateway.post("/v1/infer/tiny", json=BODY))
    assert body["details"] == {"dependency": "kafka"}
    assert_unavailable(gateway.post("/v2/models/tiny/infer", json=ROUTES[5][2]))


@pytest.mark.parametrize("exc", OUTAGES, ids=IDS)
def test_ready_is_503_not_500_when_redis_goes_away_after_the_ping(secured, exc):
    store = DownStore(exc)

    async def ping():
        return True  # answered, then the heartbeat scan fails

    store.ping = ping
    gateway = secured(store=store)
    for path in ("/ready", "/v2/health/ready"):
        response = gateway.get(path)
        assert response.status_code == 503 and response.headers["retry-after"], response.text
    assert gateway.get("/ready").json()["checks"]["redis"] is False
    assert_unavailable(gateway.get("/v2/models/tiny/ready"))


def test_503s_are_documented_with_the_error_body(make_gateway):
    paths = make_gateway().get("/openapi.json").json()["paths"]
    for method, path, _ in [*ROUTES, ("GET", "/v2/models/tiny/ready", None)]:
        documented = paths[path.replace("some-id", "{request_id}").replace("tiny", "{task}")][
            method.lower()
        ]
        schema = documented["responses"]["503"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(
            "/OIPErrorBody" if path.startswith("/v2") else "/ErrorBody"
        ), (method, path)
    ready = paths["/ready"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
    assert ready["$ref"].endswith("/Readiness"), "/ready's 503 is its checks, not an error body"
