"""ASGI middleware echoing a request id as ``X-Request-ID``: the client's own header, else the
id the route assigned (``request.state.request_id``).

A plain ASGI class rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs
every request through an extra task and memory streams, a measurable cost on the submit path.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestIdHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"x-request-id")
        incoming = raw.decode("latin-1") if raw is not None else None
        # Starlette keeps request.state in scope["state"]: the route's request_id lands here
        state = scope.setdefault("state", {})
        state["request_id"] = incoming

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                echoed = incoming or state.get("request_id")
                if echoed:
                    MutableHeaders(scope=message)["X-Request-ID"] = echoed
            await send(message)

        await self.app(scope, receive, send_with_id)
