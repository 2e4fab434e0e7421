"""The gateway's limits: ASGI middleware that refuses bodies over the configured size before
they are read whole, and the per-client token bucket kept in Redis so the rate limit holds
across gateway instances."""

from __future__ import annotations

from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streaminfer.schemas import keys

from .apikeys import Principal
from .errors import PayloadTooLarge, TooManyRequests, error_json, reaching


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = value
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_body_bytes:
                await self._refuse(scope, receive, send)
                return
            if chunked is None:
                # the server reads no more than a declared length (the rest would be the next
                # request): nothing to count, and no wrappers on every submission's path
                await self.app(scope, receive, send)
                return
        seen = 0
        started = over = False

        async def limited_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if over:
                # NOTE: FastAPI catches any error while it reads the body and answers 400 ("error
                # parsing the body"); a body over the limit (chunked, so not refused above) is 413.
                if not started and message["type"] == "http.response.start":
                    started = True
                    await self._refuse(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # NOTE: before any route, so no request id yet, and not counted by route in inference_errors
        error = PayloadTooLarge(
            f"request body exceeds {self.max_body_bytes} bytes",
            details={"max_body_bytes": self.max_body_bytes},
        )
        await error_json(error, None)(scope, receive, send)


# Token bucket, atomically in Redis: refill by elapsed time, take one token or say how long to wait.
# NOTE: "now" is Redis' clock (TIME), not the gateway's: gateways whose clocks disagree would
# otherwise refill each other's buckets (one running ahead grants a burst at every call).
_BUCKET = """
if redis.replicate_commands then pcall(redis.replicate_commands) end  -- TIME before writes, Redis < 7
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, (1 - tokens) / rate
if tokens >= 1 then tokens = tokens - 1; allowed = 1; wait = 0 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, tostring(wait)}
"""


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str, per_s: float, burst: int) -> None:
        self._script = redis.register_script(_BUCKET)
        self._prefix = prefix
        self._per_s = per_s
        self._burst = burst

    async def check(self, principal: Principal) -> None:
        with reaching("rate limit store"):
            allowed, wait = await self._script(
                keys=[keys.rate_limit_key(self._prefix, principal.client_id)],
                args=[self._per_s, self._burst],
            )
        if not int(allowed):
            retry = max(1, int(float(wait) + 0.999))
            raise TooManyRequests(
                f"rate limit of {self._per_s:g}/s (burst {self._burst}) exceeded",
                headers={"Retry-After": str(retry)},
                details={"limit_per_s": self._per_s, "burst": self._burst},
            )
