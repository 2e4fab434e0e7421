"""The route class of the /v2 routes: how Triton's and KServe's clients send a body, and the
error body they read.

Triton and KServe read an infer body as JSON whatever its ``Content-Type`` (tritonclient sends
none), or, with ``Inference-Header-Content-Length``, as the binary tensor data extension's JSON
header and tensor bytes; their clients raise with the ``error`` string of an error body.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers

from .limits import BodyTooLarge
from .oip_binary import HEADER, split_request


class OIPRoute(APIRoute):
    """A /v2 route: an infer body is read as JSON whatever its Content-Type, or as the binary
    extension's JSON header and tensor bytes when ``Inference-Header-Content-Length`` is sent;
    an error answer also carries KServe's ``error`` (the string tritonclient and KServe's
    client raise with)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        reads_body = self.body_field is not None

        async def handler(request: Request) -> Response:
            try:
                if reads_body:
                    await _read_as_json(request)
                return await handle(request)
            except BodyTooLarge:  # the size limit's middleware answers it
                raise
            except Exception as exc:  # noqa: BLE001 - answered by the app's own handler, then amended
                return await _kserve_error(request, exc)

        return handler


async def _read_as_json(request: Request) -> None:
    body = await request.body()
    raw = [(key, value) for key, value in request.scope["headers"] if key != b"content-type"]
    # NOTE: Starlette caches headers, body and JSON on the Request; FastAPI then validates the
    # body as for any JSON request (and answers malformed JSON with its own 400).
    request._headers = Headers(raw=[*raw, (b"content-type", b"application/json")])
    header_length = request.headers.get(HEADER)
    if header_length is not None:
        request._json = split_request(body, header_length)


async def _kserve_error(request: Request, exc: Exception) -> Response:
    handlers = request.app.exception_handlers
    handler = next((handlers[kind] for kind in type(exc).__mro__ if kind in handlers), None)
    if handler is None:
        raise exc
    response = await handler(request, exc)
    try:
        body = json.loads(response.body)
    except (AttributeError, ValueError):
        return response
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return response
    headers = {
        k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
    }
    return JSONResponse(
        {"error": body["message"], **body}, status_code=response.status_code, headers=headers
    )
