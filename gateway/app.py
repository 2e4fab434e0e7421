"""The FastAPI application: its Kafka producer and Redis client live in the lifespan and reach
routes through ``app.state``."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.collections import CollectionStore
from streaminfer.schemas.errors import RegistryUnavailable
from streaminfer.schemas.registry import RegistryClient

from .admin import router as admin_router
from .apikeys import ApiKeyStore
from .auth import Authenticator, load_public_keys
from .breakers import make_breakers
from .capacity import read_service
from .collections import router as collections_router
from .errors import ERROR_RESPONSES, install_error_handlers
from .inputs import InputLimits
from .lag import LagMonitor
from .limits import BodySizeLimit, RateLimiter
from .oip import router as oip_router
from .producer import RequestProducer
from .request_ids import RequestIdHeader
from .results import ResultStore
from .routes import router
from .service import InferenceService

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


class AuthNotConfigured(RuntimeError):
    pass


async def _refresh_tasks(service: InferenceService, interval_s: float) -> None:
    """New model versions (and tasks) dropped into the repository become addressable."""
    while interval_s:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(service.refresh_tasks)
        except Exception as exc:  # keep serving with what was read before
            logger.warning("re-reading the model repository failed: %s", exc)


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.wait([task])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def build_service(settings: Any, producer: RequestProducer, store: ResultStore) -> InferenceService:
    """The service behind the routes, configured from ``settings``."""
    return InferenceService(
        producer,
        store,
        settings.model_repository,
        settings.topic_prefix,
        settings.max_wait_s,
        settings.task_list,
        max_lag_per_task=settings.max_lag_per_task,
        limits=InputLimits(
            settings.max_text_chars, settings.max_image_bytes, settings.max_parameters
        ),
        default_deadline_ms=settings.default_deadline_ms,
    )


def create_app(
    settings: Any,
    *,
    kafka_options: dict[str, Any] | None = None,
    registry: RegistryClient | None = None,
) -> FastAPI:
    """``settings``: the shell's Settings (duck-typed: the gateway does not import the shell);
    ``kafka_options``: aiokafka's security keyword arguments, ``registry``: a registry client with
    its auth and TLS (both built by the shell)."""
    kafka_options = dict(kafka_options or {})
    if settings.auth is None:
        raise AuthNotConfigured(
            "refusing to start without authentication: set STREAMINFER_AUTH to jwt, apikey or "
            "jwt,apikey, or to 'disabled' to run without it on purpose"
        )
    if (
        settings.auth == "disabled"
        and not _is_loopback(settings.gateway_host)
        and not getattr(settings, "allow_insecure_bind", False)
    ):
        # NOTE: without auth the anonymous caller is an admin and nothing is rate limited
        raise AuthNotConfigured(
            f"refusing to serve without authentication on {settings.gateway_host}: with "
            "STREAMINFER_AUTH=disabled the gateway binds only to a loopback address unless "
            "STREAMINFER_ALLOW_INSECURE_BIND=true"
        )
    try:
        public_keys = load_public_keys(settings.jwt_public_keys) if "jwt" in settings.auth else []
        authenticator = Authenticator(
            settings.auth,
            None,
            public_keys,
            settings.jwt_algorithms,
            settings.jwt_issuer,
            settings.jwt_audience,
        )
    except (ValueError, OSError) as exc:
        raise AuthNotConfigured(str(exc)) from exc

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        codec = AvroCodec(
            registry_url=None if registry else settings.schema_registry_url, registry=registry
        )
        try:  # NOTE: in a thread, now: else the first encode registers over HTTP on the loop
            await codec.prepare_async()
        except RegistryUnavailable as exc:  # retried by the encode of the first request
            logger.warning("schema registry unavailable at start: %s", exc)
        producer = RequestProducer(
            settings.kafka_bootstrap_servers,
            codec,
            settings.topic_prefix,
            linger_ms=settings.kafka_linger_ms,
            request_timeout_ms=settings.kafka_request_timeout_ms,
            kafka_options=kafka_options,
        )
        store = ResultStore(settings.redis_dsn, codec, settings.topic_prefix, settings.result_ttl_s)
        breakers = make_breakers(
            getattr(settings, "circuit_failures", 5), getattr(settings, "circuit_reset_s", 5.0)
        )
        app.state.breakers = store.breakers = producer.breakers = breakers
        service = build_service(settings, producer, store)

        async def capacity(
            tasks: list[str],
        ) -> dict[str, dict]:  # store.redis exists once it started
            return await read_service(store.redis, settings.topic_prefix, tasks)

        lag = LagMonitor(
            settings.kafka_bootstrap_servers,
            settings.group_id,
            settings.topic_prefix,
            sorted(service.configs),
            kafka_options=kafka_options,
            service=capacity,
        )
        async with AsyncExitStack() as stack:
            for component in (producer, store, lag):
                await component.start()
                stack.push_async_callback(component.stop)
            service.lag = lag
            app.state.service = service
            app.state.collections = CollectionStore(store.redis, settings.topic_prefix)
            app.state.capacity = capacity
            authenticator.api_keys = ApiKeyStore(store.redis, settings.topic_prefix)
            app.state.rate_limiter = (
                None
                if authenticator.disabled
                else RateLimiter(
                    store.redis,
                    settings.topic_prefix,
                    settings.rate_limit_per_s,
                    settings.rate_limit_burst,
                )
            )
            logger.info("gateway serving tasks %s", ",".join(sorted(service.configs)))
            refresher = asyncio.create_task(_refresh_tasks(service, settings.worker_model_poll_s))
            stack.push_async_callback(_cancel, refresher)
            yield

    app = FastAPI(
        title="streaminfer gateway",
        version=VERSION,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        description="Publishes inference requests as Avro events to Kafka and serves their results "
        "from Redis. Errors: `{error_code, message, request_id, timestamp, details}`.",
    )
    app.state.auth = authenticator
    app.state.info = {
        "name": "streaminfer",
        "version": VERSION,
        "component": "gateway",
        "config": settings.summary(),
    }
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(oip_router)
    app.include_router(collections_router)

    app.add_middleware(RequestIdHeader)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    return app
