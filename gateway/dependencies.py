"""What the routers take from a request: the service behind them and the authenticated caller
(within its rate limit). Shared by the /v1, /v2, admin and collections routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .apikeys import Principal
from .service import InferenceService


def service(request: Request) -> InferenceService:
    return request.app.state.service


async def caller(request: Request) -> Principal:
    """The authenticated principal of this request, within its rate limit."""
    principal = await request.app.state.auth.authenticate(request)
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        await limiter.check(principal)
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(caller)]
