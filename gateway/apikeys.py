"""API keys: created once and shown once, stored only as SHA-256 digests in Redis, with the
client they belong to, its scopes and an admin flag. Revoking a client ends its keys at once."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from streaminfer.schemas import keys

from .errors import reaching

SCOPES = ("inference:submit", "inference:read")
KEY_PREFIX = "si_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the client's name (becomes the events' ``client_id``), scopes, admin."""

    client_id: str
    scopes: frozenset[str]
    is_admin: bool = False

    def can(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def create(self, client: str, scopes: list[str], admin: bool = False) -> str:
        unknown = set(scopes) - set(SCOPES)
        if unknown or not client:
            raise ValueError(f"unknown scopes {sorted(unknown)}; scopes are {', '.join(SCOPES)}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        hashed = digest(key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.api_key_key(self._prefix, hashed),
                mapping={
                    "client": client,
                    "scopes": ",".join(sorted(set(scopes))),
                    "admin": "1" if admin else "0",
                    "created_at": str(int(time.time())),
                },
            )
            pipe.sadd(keys.api_client_key(self._prefix, client), hashed)
            await pipe.execute()
        return key

    async def lookup(self, key: str) -> Principal | None:
        """The key's principal, None for an unknown or revoked key; 503 when Redis is away
        (never 401: the key may well be valid)."""
        with reaching("API key store"):
            entry = await self._redis.hgetall(keys.api_key_key(self._prefix, digest(key)))
        if not entry:
            return None
        entry = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in entry.items()
        }
        scopes = frozenset(s for s in entry.get("scopes", "").split(",") if s)
        return Principal(entry["client"], scopes, entry.get("admin") == "1")

    async def list(self) -> list[dict]:
        """Clients with their scopes and how many keys they hold (never a key)."""
        clients = []
        async for name in self._redis.scan_iter(match=keys.api_client_key(self._prefix, "*")):
            name = name.decode() if isinstance(name, bytes) else name
            client = keys.client_of_api_client_key(self._prefix, name)
            if client is None:  # matched the pattern's glob, yet not one of our keys
                continue
            digests = await self._redis.smembers(name)
            entries = [
                await self._redis.hgetall(keys.api_key_key(self._prefix, d.decode()))
                for d in digests
            ]
            entries = [e for e in entries if e]
            if entries:
                first = {k.decode(): v.decode() for k, v in entries[0].items()}
                clients.append(
                    {
                        "client": client,
                        "scopes": first["scopes"],
                        "admin": first["admin"] == "1",
                        "keys": len(entries),
                    }
                )
        return sorted(clients, key=lambda c: c["client"])

    async def revoke(self, client: str) -> int:
        members = await self._redis.smembers(keys.api_client_key(self._prefix, client))
        async with self._redis.pipeline(transaction=True) as pipe:
            for hashed in members:
                pipe.delete(keys.api_key_key(self._prefix, hashed.decode()))
            pipe.delete(keys.api_client_key(self._prefix, client))
            await pipe.execute()
        return len(members)
