"""API keys for integration tests, written straight into a stack's Redis."""

from __future__ import annotations


async def create_api_key(redis_url: str, prefix: str, client: str, admin: bool = False) -> str:
    from redis.asyncio import Redis

    from streaminfer.gateway.apikeys import ApiKeyStore

    redis = Redis.from_url(redis_url)
    try:
        return await ApiKeyStore(redis, prefix).create(
            client, ["inference:submit", "inference:read"], admin
        )
    finally:
        await redis.aclose()
