"""Authentication, ownership and rate limits on a gateway with auth on (JWT and API keys), with
the attacks a public gateway sees: no credentials, alg none, HS256 keyed with the public key,
expired, not-yet-valid, tampered and foreign-signed tokens, revoked and made-up API keys."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers.kafka import collect, produce_requests

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import InferenceRequest

pytestmark = pytest.mark.integration

SUBMIT_READ = ["inference:submit", "inference:read"]


def public_pem(private) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def signing_keys():
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def token(
    signing_keys,
    alg="ES256",
    sub="alice",
    permissions=SUBMIT_READ,
    admin=False,
    exp_in=300,
    **extra,
):
    claims = {
        "sub": sub,
        "permissions": permissions,
        "is_admin": admin,
        "exp": int(time.time()) + exp_in,
        **extra,
    }
    return jwt.encode(claims, signing_keys[alg], algorithm=alg)


@pytest.fixture
def secured(make_stack, redis_server, signing_keys, tmp_path):
    keys_file = tmp_path / "jwt-public-keys.pem"
    keys_file.write_text(public_pem(signing_keys["ES256"]) + public_pem(signing_keys["RS256"]))
    stack = make_stack(
        redis_url=redis_server,
        STREAMINFER_AUTH="jwt,apikey",
        STREAMINFER_JWT_PUBLIC_KEYS=str(keys_file),
        STREAMINFER_TASKS="text-embedding",
    )
    stack.add_worker()
    stack.add_gateway()
    return stack


async def api_key(stack, client: str, scopes=SUBMIT_READ, admin=False) -> str:
    from redis.asyncio import Redis

    from streaminfer.gateway.apikeys import ApiKeyStore

    redis = Redis.from_url(stack.redis_url)
    try:
        return await ApiKeyStore(redis, stack.prefix).create(client, scopes, admin)
    finally:
        await redis.aclose()


BODY = {"inputs": {"text": "secured"}}


async def test_tokens_and_attacks(secured, signing_keys):
    pem = public_pem(signing_keys["ES256"]).encode()
    header = (
        base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        .rstrip(b"=")
        .decode()
    )
    payload = (
        base64.urlsafe_b64encode(
            json.dumps(
                {
                    "sub": "mallory",
                    "permissions": SUBMIT_READ,
                    "is_admin": True,
                    "exp": int(time.time()) + 300,
                }
            ).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    good = token(signing_keys)
    head, _, sig = good.split(".")
    tampered = f"{head}.{payload}.{sig}"
    foreign = jwt.encode(
        {"sub": "eve", "permissions": SUBMIT_READ, "exp": int(time.time()) + 300},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )
    attacks = {
        "no credentials": {},
        "alg none": {"Authorization": f"Bearer {header}.{payload}."},
        "HS256 with a guessed secret": {
            "Authorization": "Bearer "
            + jwt.encode(
                {"sub": "mallory", "exp": int(time.time()) + 300}, "x" * 32, algorithm="HS256"
            )
        },
        "expired": {"Authorization": f"Bearer {token(signing_keys, exp_in=-60)}"},
        "not yet valid": {
            "Authorization": f"Bearer {token(signing_keys, nbf=int(time.time()) + 600)}"
        },
        "tampered claims": {"Authorization": f"Bearer {tampered}"},
        "foreign signer": {"Authorization": f"Bearer {foreign}"},
        "garbage bearer": {"Authorization": "Bearer a.b.c"},
        "made-up API key": {"X-API-Key": "si_not-a-real-key"},
    }
    # the real HS256 confusion attack: HMAC with the PEM public key as the secret (PyJWT refuses to
    # sign with a PEM as an HMAC key, so build it by hand)
    import hashlib
    import hmac

    hs_header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    signing_input = f"{hs_header}.{payload}".encode()
    signature = (
        base64.urlsafe_b64encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    attacks["HS256 keyed with the public key"] = {
        "Authorization": f"Bearer {hs_header}.{payload}.{signature}"
    }

    async with httpx.AsyncClient(base_url=secured.gateway_url, timeout=60) as client:
        for name, headers in attacks.items():
            response = await client.post("/v1/infer/text-embedding", json=BODY, headers=headers)
            assert response.status_code == 401, (name, response.text)
            assert response.json()["error_code"] == "UNAUTHORIZED", name
        for alg in ("ES256", "RS256"):
            ok = await client.post(
                "/v1/infer/text-embedding",
                json=BODY,
                params={"wait": 30},
                headers={"Authorization": f"Bearer {token(signing_keys, alg=alg)}"},
            )
            assert ok.status_code == 200 and ok.json()["status"] == "succeeded", alg
        read_only = token(signing_keys, permissions=["inference:read"])
        forbidden = await client.post(
            "/v1/infer/text-embedding", json=BODY, headers={"Authorization": f"Bearer {read_only}"}
        )
        assert forbidden.status_code == 403 and forbidden.json()["error_code"] == "FORBIDDEN"
        assert (await client.get("/health")).status_code == 200, "liveness stays open"
    print(
        f"\nauth: {len(attacks)} token/key attacks -> 401; ES256 and RS256 accepted; missing scope -> 403"
    )


async def test_api_keys_ownership_and_the_principal_in_events(secured, signing_keys):
    alice = await api_key(secured, "alice")
    bob = await api_key(secured, "bob")
    admin = await api_key(secured, "ops", admin=True)
    async with httpx.AsyncClient(base_url=secured.gateway_url, timeout=60) as client:
        submitted = await client.post(
            "/v1/infer/text-embedding",
            params={"wait": 30},
            headers={"X-API-Key": alice},
            json={**BODY, "client_id": "someone-else"},
        )
        assert submitted.status_code == 200
        rid = submitted.json()["request_id"]
        as_bearer = await client.get(
            f"/v1/results/{rid}", headers={"Authorization": f"Bearer {alice}"}
        )
        assert as_bearer.status_code == 200 and as_bearer.json()["status"] == "succeeded"
        for method in ("GET", "DELETE"):
            path = f"/v1/results/{rid}" if method == "GET" else f"/v1/requests/{rid}"
            other = await client.request(method, path, headers={"X-API-Key": bob})
            assert other.status_code == 404 and other.json()["error_code"] == "REQUEST_NOT_FOUND", (
                method
            )
        missing = await client.get(
            "/v1/results/00000000-0000-0000-0000-000000000000", headers={"X-API-Key": bob}
        )
        assert missing.json() == {**missing.json(), "error_code": "REQUEST_NOT_FOUND"}, (
            "same answer: no leak"
        )
        assert (
            await client.get(f"/v1/results/{rid}", headers={"X-API-Key": admin})
        ).status_code == 200
        assert (await client.get("/admin/stats", headers={"X-API-Key": alice})).status_code == 403
        assert (await client.get("/admin/stats", headers={"X-API-Key": admin})).status_code == 200

        # the event's client_id is the authenticated principal, never the body's
        events = await collect(
            secured.bootstrap,
            f"{secured.prefix}.requests.text-embedding.normal",
            lambda ms: any(m.key == rid.encode() for m in ms),
            timeout_s=30,
        )
        event = AvroCodec().decode(
            next(m for m in events if m.key == rid.encode()).value, InferenceRequest
        )
        assert event.client_id == "alice"

        # a Kafka-direct request is readable by its producing client's principal
        (direct,) = await produce_requests(secured.bootstrap, secured.prefix, 1, client_id="svc-a")
        svc_a = await api_key(secured, "svc-a")
        body = (
            await client.get(
                f"/v1/results/{direct}", params={"wait": 30}, headers={"X-API-Key": svc_a}
            )
        ).json()
        assert body["status"] == "succeeded"
        assert (
            await client.get(f"/v1/results/{direct}", headers={"X-API-Key": bob})
        ).status_code == 404

        # revoking ends the client's keys at once
        from redis.asyncio import Redis

        from streaminfer.gateway.apikeys import ApiKeyStore

        redis = Redis.from_url(secured.redis_url)
        try:
            store = ApiKeyStore(redis, secured.prefix)
            listed = {row["client"]: row for row in await store.list()}
            assert listed["alice"]["keys"] == 1 and "key" not in listed["alice"]
            assert all(not k.decode().endswith(alice) for k in await redis.keys("*")), (
                "keys stored hashed"
            )
            assert await store.revoke("alice") == 1
        finally:
            await redis.aclose()
        revoked = await client.post(
            "/v1/infer/text-embedding", json=BODY, headers={"X-API-Key": alice}
        )
        assert revoked.status_code == 401


async def test_rate_limit_holds_across_gateway_instances(secured):
    limited = {"STREAMINFER_RATE_LIMIT_PER_S": "0.5", "STREAMINFER_RATE_LIMIT_BURST": "3"}
    first, second = secured.add_gateway(**limited), secured.add_gateway(**limited)
    key = await api_key(secured, "bursty")
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(timeout=60) as client:
        codes = []
        for url in (first, second, first, second):
            codes.append(
                (
                    await client.post(f"{url}/v1/infer/text-embedding", json=BODY, headers=headers)
                ).status_code
            )
        assert codes[:3] == [202, 202, 202] and codes[3] == 429, codes
        limited_response = await client.post(
            f"{first}/v1/infer/text-embedding", json=BODY, headers=headers
        )
        assert limited_response.json()["error_code"] == "RATE_LIMIT_EXCEEDED"
        assert int(limited_response.headers["retry-after"]) >= 1
        other = await client.post(
            f"{first}/v1/infer/text-embedding",
            json=BODY,
            headers={"X-API-Key": await api_key(secured, "calm")},
        )
        assert other.status_code == 202, "the limit is per client"
