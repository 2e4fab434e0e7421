"""The gateway's OpenTelemetry spans beyond FastAPI's own: the Kafka produce span and the wait
for the result. Only the OpenTelemetry API is used here; the shell installs the SDK when tracing
is configured (``streaminfer.tracing``), and until it does every span is the API's no-op, which
still carries an incoming ``traceparent`` on to Kafka.

NOTE: the HTTP server span is FastAPI's (built in since 0.142: a SERVER span per request, named
``POST /v1/infer/{task}``, the child of the caller's ``traceparent``); these spans are made
inside it. Context goes into Kafka headers, and into the request's Avro ``trace`` map, through
the propagators ``OTEL_PROPAGATORS`` names (W3C TraceContext and Baggage by default).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind

from streaminfer.schemas.keys import KAFKA_HEADERS

TRACER_NAME = "streaminfer.gateway"
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_tracer: tuple[Any, trace.Tracer, bool] | None = None
_warned = False
logger = logging.getLogger(__name__)


def tracer() -> tuple[trace.Tracer, bool]:
    """The gateway's tracer from the provider installed now (tests install and remove them),
    and whether one is installed at all: without one no span is made (the submit path's cost)."""
    global _tracer
    provider = trace.get_tracer_provider()
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer(TRACER_NAME), not isinstance(provider, _NO_SDK))
    return _tracer[1], _tracer[2]


def _traced() -> bool:
    return trace.get_current_span().get_span_context().is_valid


def continued(endpoint: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Decorates an inference route: the caller's trace context is current while it runs.
    FastAPI's server span makes it so where an SDK is installed; without one FastAPI reads no
    header, so the context is extracted here and still reaches Kafka (no-op spans carry it)."""

    @functools.wraps(endpoint)
    async def route(*args: Any, **kwargs: Any) -> Any:
        headers = kwargs["request"].headers
        if _traced() or not any(name in headers for name in propagate.get_global_textmap().fields):
            return await endpoint(*args, **kwargs)
        token = context.attach(propagate.extract(headers))
        try:
            return await endpoint(*args, **kwargs)
        finally:
            context.detach(token)

    return route


def trace_context() -> dict[str, str]:
    """The current context as the propagators write it (``traceparent``, ...): the request's
    Avro ``trace`` map. Empty when there is no valid context."""
    carrier: dict[str, str] = {}
    if _traced():
        propagate.inject(carrier)
    return carrier


def response_headers() -> dict[str, str]:
    """``traceparent`` of the current span for the HTTP answer, so a client finds its trace; with
    tracing off it is the one the client sent (the no-op span carries it)."""
    carrier = trace_context()
    return {"traceparent": carrier["traceparent"]} if "traceparent" in carrier else {}


def _broken(what: str) -> None:
    """Log (the first time at WARNING) that the SDK raised in ``what``: the request goes on
    without that span."""
    global _warned
    logger.log(
        logging.DEBUG if _warned else logging.WARNING,
        "tracing failed in %s; carrying on without it (further failures are logged at DEBUG)",
        what,
        exc_info=True,
    )
    _warned = True


@contextmanager
def _span(tracer_: trace.Tracer, name: str, **kwargs: Any) -> Iterator[trace.Span | None]:
    """``start_as_current_span`` that never raises from the SDK: None when it cannot start;
    an error of the body goes through as it is."""
    try:
        manager = tracer_.start_as_current_span(name, **kwargs)
        span = manager.__enter__()
    except Exception:
        _broken(f"the {name!r} span")
        yield None
        return
    try:
        yield span
    except BaseException as exc:
        try:
            manager.__exit__(type(exc), exc, exc.__traceback__)
        except Exception as raised:
            if raised is not exc:
                _broken(f"the {name!r} span")
        raise
    else:
        try:
            manager.__exit__(None, None, None)
        except Exception:
            _broken(f"the {name!r} span")


def _untraced_headers() -> list[tuple[str, bytes]]:
    headers: list[tuple[str, bytes]] = []
    if _traced():
        try:
            propagate.inject(headers, setter=KAFKA_HEADERS)
        except Exception:
            _broken("the request's trace headers")
            return []
    return headers


@contextmanager
def producing(
    topic: str, request_id: str, partition: int | None
) -> Iterator[list[tuple[str, bytes]]]:
    """A PRODUCER span ``send <topic>`` for the request's event; yields the Kafka headers that
    carry its context (an empty list: none)."""
    tracer_, enabled = tracer()
    if not enabled:  # no span; the context that is current (the caller's) goes on
        yield _untraced_headers()
        return
    with _span(tracer_, f"send {topic}", kind=SpanKind.PRODUCER) as span:
        if span is None:
            yield _untraced_headers()
            return
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "messaging.destination.name": topic,
                    "messaging.kafka.message.key": request_id,
                    "streaminfer.request_id": request_id,
                }
            )
            if partition is not None:
                span.set_attribute("messaging.destination.partition.id", str(partition))
        yield _untraced_headers()


@contextmanager
def waiting(request_id: str, timeout_s: float) -> Iterator[Callable[[object], None]]:
    """The HTTP wait for the result, ``wait result``; yields a function to call with the result
    (None: none within the wait)."""
    tracer_, enabled = tracer()
    if not enabled:
        yield _ignore
        return
    with _span(tracer_, "wait result") as span:
        if span is None:
            yield _ignore
            return
        recording = span.is_recording()
        if recording:
            span.set_attributes(
                {"streaminfer.request_id": request_id, "streaminfer.wait_s": timeout_s}
            )

        def found(result: object) -> None:
            if recording:
                span.set_attribute("streaminfer.result.found", result is not None)
                status = getattr(getattr(result, "status", None), "value", None)
                if status:
                    span.set_attribute("streaminfer.result.status", status)

        yield found


def _ignore(result: object) -> None:
    pass
