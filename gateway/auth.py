"""Who is calling: bearer JWTs (ES256/RS256, public keys from settings) and API keys (X-API-Key, or
as a bearer token), per ``STREAMINFER_AUTH``. How often they may call is ``limits.RateLimiter``."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import Request

from .apikeys import SCOPES, ApiKeyStore, Principal
from .errors import Forbidden, Unauthorized

logger = logging.getLogger(__name__)

ANONYMOUS = Principal("anonymous", frozenset(SCOPES), is_admin=True)  # auth disabled on purpose
ASYMMETRIC = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def load_public_keys(value: str | None) -> list:
    """PEM text, or paths (comma-separated) of PEM files; each may hold several keys."""
    if not value:
        return []
    texts = (
        [value]
        if "-----BEGIN" in value
        else [Path(p.strip()).read_text() for p in value.split(",") if p.strip()]
    )
    blocks = [block for text in texts for block in _PEM_BLOCK.findall(text)]
    if not blocks:
        raise ValueError("STREAMINFER_JWT_PUBLIC_KEYS holds no PEM public key")
    return [load_pem_public_key(block.encode()) for block in blocks]


class Authenticator:
    def __init__(
        self,
        modes: str,
        api_keys: ApiKeyStore | None,
        public_keys: list,
        algorithms: str,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        self.modes = set(modes.split(","))
        self.api_keys = api_keys
        """Set by the app once Redis is connected (its lifespan); None until then."""
        self._public_keys = public_keys
        # NOTE: symmetric algorithms are never accepted: with a public key as the HMAC secret,
        # anyone holding the public key could sign (the classic HS256 confusion attack).
        self._algorithms = [a.strip() for a in algorithms.split(",") if a.strip() in ASYMMETRIC]
        self._issuer = issuer
        self._audience = audience
        if "jwt" in self.modes and not self._public_keys:
            raise ValueError(
                "STREAMINFER_AUTH includes jwt but STREAMINFER_JWT_PUBLIC_KEYS is empty"
            )

    @property
    def disabled(self) -> bool:
        return self.modes == {"disabled"}

    async def authenticate(self, request: Request) -> Principal:
        if self.disabled:
            return ANONYMOUS
        api_key = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if api_key is None and scheme.lower() == "bearer" and token and token.count(".") != 2:
            api_key = token  # an API key sent as a bearer token
        if api_key is not None and "apikey" in self.modes:
            principal = await self.api_keys.lookup(api_key.strip())
            if principal is None:
                raise Unauthorized(
                    "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"}
                )
            return principal
        if scheme.lower() == "bearer" and token and "jwt" in self.modes:
            return self._verify_jwt(token.strip())
        raise Unauthorized(
            "credentials required: Authorization: Bearer <token> or X-API-Key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _verify_jwt(self, token: str) -> Principal:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {exc}") from exc
        if algorithm not in self._algorithms:
            raise Unauthorized(f"token algorithm {algorithm!r} is not accepted")
        options = {"require": ["exp", "sub"], "verify_aud": self._audience is not None}
        key_type = EllipticCurvePublicKey if algorithm.startswith("ES") else RSAPublicKey
        last: Exception | None = None
        for key in (k for k in self._public_keys if isinstance(k, key_type)):
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=self._algorithms,
                    options=options,
                    issuer=self._issuer,
                    audience=self._audience,
                    leeway=5,
                )
            except jwt.InvalidSignatureError as exc:  # maybe another of the configured keys
                last = exc
                continue
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise Unauthorized(f"invalid token: {exc}") from exc
            return principal_of(claims)
        raise Unauthorized(f"invalid token: {last or 'no configured key fits ' + algorithm}")


def principal_of(claims: dict) -> Principal:
    """The principal a verified token's claims name; a claim of the wrong JSON type is a 401.

    ``is_admin`` must be a JSON boolean: ``"false"`` (a string, as some identity providers send
    it) would be truthy. Scopes come from ``permissions`` and the OAuth ``scope`` claim, each a
    list of strings or one space-separated string.
    """
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("invalid token: sub must be a non-empty string")
    is_admin = claims.get("is_admin", False)
    if not isinstance(is_admin, bool):
        raise Unauthorized(
            f"invalid token: is_admin must be a JSON boolean, not {type(is_admin).__name__}"
        )
    scopes = _scope_claim(claims, "permissions") | _scope_claim(claims, "scope")
    return Principal(sub, scopes, is_admin)


def _scope_claim(claims: dict, name: str) -> frozenset[str]:
    value = claims.get(name)
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    raise Unauthorized(
        f"invalid token: {name} must be a list of strings or a space-separated string"
    )


def require(principal: Principal, scope: str) -> None:
    if not principal.can(scope):
        raise Forbidden(f"client {principal.client_id!r} lacks the {scope} permission")
