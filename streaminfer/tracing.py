"""OpenTelemetry SDK setup of the gateway and worker processes.

Tracing is on only where an exporter is configured: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) for the default OTLP/HTTP exporter, or another exporter
named by ``OTEL_TRACES_EXPORTER`` (e.g. ``console``, found by its entry point as the SDK's
auto-configuration does). ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it
off. Otherwise nothing is installed and the API's no-op tracer is what gateway and streams get.

Everything else is read by the SDK itself from its standard variables: the resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; ``service.name`` defaults to
``streaminfer-gateway`` / ``streaminfer-worker``), the sampler (``OTEL_TRACES_SAMPLER[_ARG]``),
span limits (``OTEL_SPAN_*``), the batch processor (``OTEL_BSP_*``) and the exporter
(``OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,HEADERS,TIMEOUT,COMPRESSION,CERTIFICATE,...}``).
The provider is shut down (its spans flushed) when the process exits, and for the gateway when
its app's lifespan ends (:func:`flush_on_shutdown`).
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

logger = logging.getLogger(__name__)

GATEWAY = "streaminfer-gateway"
WORKER = "streaminfer-worker"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
EXPORTER_GROUP = "opentelemetry_traces_exporter"
"""The entry-point group the SDK's auto-configuration finds span exporters in."""


def _otlp_exporter() -> SpanExporter | None:
    """The OTLP exporter, only where an endpoint is set (the SDK reads it and the rest)."""
    if not any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return None
    protocol = (
        os.environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
        or os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        return _entry_point_exporter(
            "otlp_proto_grpc", "pip install opentelemetry-exporter-otlp-proto-grpc"
        )
    if protocol != "http/protobuf":
        logger.error(
            "tracing off: OTLP protocol %r is not supported (http/protobuf or grpc)", protocol
        )
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _entry_point_exporter(name: str, hint: str = "") -> SpanExporter | None:
    found = metadata.entry_points(group=EXPORTER_GROUP, name=name)
    if not found:
        logger.error(
            "no span exporter named %r is installed%s; it exports nothing",
            name,
            f" ({hint})" if hint else "",
        )
        return None
    return next(iter(found)).load()()


def exporters() -> list[SpanExporter]:
    """The span exporters the environment configures (none: tracing stays off)."""
    if os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return []
    names = [
        n.strip() for n in os.environ.get(OTEL_TRACES_EXPORTER, "otlp").split(",") if n.strip()
    ]
    if not names or "none" in names:
        return []
    made = [
        _otlp_exporter() if name in ("otlp", "otlp_proto_http") else _entry_point_exporter(name)
        for name in dict.fromkeys(names)
    ]
    return [exporter for exporter in made if exporter is not None]


def resource(service_name: str) -> Resource:
    """The SDK's resource (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``, detectors), with
    our service name and version where the environment names none."""
    from_env = OTELResourceDetector().detect().attributes
    try:
        version = metadata.version("streaminfer")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    defaults = {SERVICE_NAME: service_name, SERVICE_VERSION: version}
    return Resource.create({k: v for k, v in defaults.items() if k not in from_env})


def install(service_name: str) -> TracerProvider | None:
    """Install the SDK's TracerProvider for this process when an exporter is configured (see the
    module docstring); returns it, or None when tracing stays off. Called once per process, where
    the gateway's app or the worker is built; a second call returns the provider installed."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    chosen = exporters()
    if not chosen:
        return None
    # NOTE: shutdown_on_exit (the default) registers an atexit hook that flushes the batch processor
    provider = TracerProvider(resource=resource(service_name), shutdown_on_exit=True)
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info(
        "tracing on: %s exporting with %s",
        service_name,
        ", ".join(type(e).__name__ for e in chosen),
    )
    return provider


def flush_on_shutdown(app: Any, provider: TracerProvider | None) -> None:
    """Shut ``provider`` down (flushing its spans) when the ASGI ``app``'s lifespan ends.

    NOTE: atexit is not enough for the gateway: once uvicorn has shut down on SIGTERM it raises
    the signal again with the default handler, which ends the process without atexit hooks."""
    if provider is None:
        return
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any):
        try:
            async with inner(app_) as state:
                yield state
        finally:
            provider.shutdown()

    app.router.lifespan_context = lifespan
