"""JWT claims are read strictly (review finding 3 of issue 11): real ES256 tokens, each claim of
the wrong JSON type a 401, scopes from ``permissions`` and the OAuth ``scope`` claim."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers.http import assert_error

from streaminfer.gateway.auth import Authenticator
from streaminfer.gateway.errors import Unauthorized

SUBMIT_READ = ["inference:submit", "inference:read"]


@pytest.fixture(scope="module")
def signing_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def public_pem(signing_key) -> str:
    return (
        signing_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def authenticator(public_pem) -> Authenticator:
    from streaminfer.gateway.auth import load_public_keys

    return Authenticator("jwt", None, load_public_keys(public_pem), "ES256")


def token(signing_key, **claims) -> str:
    return jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 300, **claims}, signing_key, algorithm="ES256"
    )


@pytest.mark.parametrize("is_admin", ["false", "true", 1, 0, None, [], {}], ids=repr)
def test_a_non_boolean_is_admin_is_an_invalid_token(authenticator, signing_key, is_admin):
    with pytest.raises(Unauthorized, match="is_admin must be a JSON boolean"):
        authenticator._verify_jwt(token(signing_key, permissions=SUBMIT_READ, is_admin=is_admin))


@pytest.mark.parametrize("is_admin", [True, False])
def test_a_boolean_is_admin_is_read_as_given(authenticator, signing_key, is_admin):
    principal = authenticator._verify_jwt(
        token(signing_key, permissions=SUBMIT_READ, is_admin=is_admin)
    )
    assert principal.is_admin is is_admin and principal.client_id == "alice"


def test_no_is_admin_claim_is_not_admin(authenticator, signing_key):
    assert authenticator._verify_jwt(token(signing_key, permissions=SUBMIT_READ)).is_admin is False


@pytest.mark.parametrize(
    "claims,scopes",
    [
        ({"permissions": SUBMIT_READ}, set(SUBMIT_READ)),
        ({"permissions": "inference:submit inference:read"}, set(SUBMIT_READ)),
        ({"scope": "inference:read"}, {"inference:read"}),
        ({"scope": ["inference:submit"]}, {"inference:submit"}),
        (
            {"permissions": ["inference:read"], "scope": "inference:submit openid"},
            {*SUBMIT_READ, "openid"},
        ),
        ({}, set()),
    ],
    ids=["permissions list", "permissions string", "scope string", "scope list", "both", "none"],
)
def test_scopes_are_a_list_or_a_space_separated_string_in_either_claim(
    authenticator, signing_key, claims, scopes
):
    assert authenticator._verify_jwt(token(signing_key, **claims)).scopes == scopes


@pytest.mark.parametrize("claim", ["permissions", "scope"])
@pytest.mark.parametrize(
    "value", [42, {"inference:read": True}, ["inference:read", 7], True], ids=repr
)
def test_scopes_of_another_type_are_an_invalid_token(authenticator, signing_key, claim, value):
    with pytest.raises(Unauthorized, match=f"{claim} must be a list of strings"):
        authenticator._verify_jwt(token(signing_key, **{claim: value}))


@pytest.mark.parametrize(
    "claims",
    [
        {"permissions": 42},
        {"permissions": {"inference:submit": True}},
        {"is_admin": "false", "permissions": SUBMIT_READ},
        {"scope": 3.5},
    ],
    ids=["permissions int", "permissions object", "is_admin string", "scope float"],
)
def test_loose_claims_over_http_are_401_never_500(make_gateway, public_pem, signing_key, claims):
    gateway = make_gateway(auth="jwt", jwt_public_keys=public_pem)
    headers = {"Authorization": f"Bearer {token(signing_key, **claims)}"}
    assert_error(gateway.get("/v1/results/abc", headers=headers), 401, "UNAUTHORIZED")
    assert_error(gateway.get("/admin/stats", headers=headers), 401, "UNAUTHORIZED")


def test_a_string_false_is_admin_reaches_no_admin_route(make_gateway, public_pem, signing_key):
    gateway = make_gateway(auth="jwt", jwt_public_keys=public_pem)
    admin = {"Authorization": f"Bearer {token(signing_key, is_admin=True)}"}
    assert gateway.get("/admin/stats", headers=admin).status_code != 401  # the route is there
    stringly = {"Authorization": f"Bearer {token(signing_key, is_admin='false')}"}
    assert gateway.get("/admin/stats", headers=stringly).status_code in (401, 403)
