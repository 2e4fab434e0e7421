"""The worker's OpenTelemetry spans. Only the OpenTelemetry API is used here; the shell installs
the SDK when tracing is configured (``streaminfer.tracing``), and until it does no span is made
at all, while a request's context still travels on to its result's headers.

Per request: its context, from the event's Kafka headers (what the gateway, or any producer that
sets a W3C ``traceparent``, writes) or else from the Avro ``trace`` map; a ``queue wait`` span
(CONSUMER) from when the worker took the event to when its batch started computing, or it was
answered without running; a ``write result`` span (Redis, the results topic, the audit events)
whose context the result's Kafka headers carry on. Per batch: ONE ``batch <model>`` span
(INTERNAL), a root with a link to each request's queue wait (OpenTelemetry's model of a batch
that serves many traces); each request's write span links back to it.

An SDK (or an exporter, a sampler, a span processor of the operator's) that raises never stops
a request: every call into it is guarded (logged once, then at DEBUG), and what it was to make
goes without a span.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, StatusCode

from streaminfer.schemas.keys import KAFKA_HEADERS

if TYPE_CHECKING:
    from .outcomes import Outcome
    from .requests import PendingRequest

logger = logging.getLogger(__name__)

TRACER_NAME = "streaminfer.worker"
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_tracer: tuple[Any, trace.Tracer, bool] | None = None
_warned = False


def _broken(what: str) -> None:
    """Log (the first time at WARNING, with its traceback) that the SDK raised in ``what``."""
    global _warned
    if _warned:
        logger.debug("tracing failed in %s; carrying on without a span", what, exc_info=True)
        return
    _warned = True
    logger.warning(
        "tracing failed in %s; carrying on without spans where it fails "
        "(further failures are logged at DEBUG)",
        what,
        exc_info=True,
    )


def tracer() -> tuple[trace.Tracer, bool]:
    """The worker's tracer from the provider installed now (tests install and remove them),
    and whether one is installed at all: without one the worker makes no spans."""
    global _tracer
    provider = trace.get_tracer_provider()
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer(TRACER_NAME), not isinstance(provider, _NO_SDK))
    return _tracer[1], _tracer[2]


def _valid(context: Context | None) -> bool:
    return context is not None and trace.get_current_span(context).get_span_context().is_valid


def request_context(headers: Any, trace_map: dict[str, str] | None) -> Context | None:
    """The request's trace context: from its event's Kafka headers, else its Avro ``trace`` map
    (producers that write only that); None when neither carries a valid one. Never raises:
    whatever an event's headers say, it is answered."""
    try:
        if headers:
            context = propagate.extract(headers, getter=KAFKA_HEADERS)
            if _valid(context):
                return context
        if trace_map:
            context = propagate.extract(trace_map)
            if _valid(context):
                return context
    except Exception:  # a propagator that chokes on hostile input: the request goes untraced
        logger.warning("unreadable trace context ignored", exc_info=True)
    return None


def traceparent(outcome: Outcome) -> str | None:
    """The ``traceparent`` its result carries (for its log line), for a request that came with a
    context; None for the others."""
    if outcome.context is None:
        return None
    for key, value in result_headers(outcome) or ():
        if key == "traceparent":
            return value.decode()
    return None


def end_queue_wait(item: PendingRequest, end_ns: int | None = None) -> SpanContext | None:
    """End the request's ``queue wait`` (once; it starts when the worker took the event). A
    request that came without a context gets its trace here: the span is its root and later
    spans its children. Returns the span's context (None: no SDK)."""
    if item.waited:
        return None
    item.waited = True
    tracer_, enabled = tracer()
    if not enabled:
        return None
    source = item.source
    try:
        span = tracer_.start_span(
            f"queue wait {source.topic}",
            context=item.context or Context(),
            kind=SpanKind.CONSUMER,
            start_time=item.received_ns or None,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "receive",
                "messaging.destination.name": source.topic,
                "messaging.destination.partition.id": str(source.partition),
                "messaging.kafka.offset": source.offset,
                "streaminfer.request_id": item.request.request_id,
                "streaminfer.priority": item.priority.topic_suffix,
            },
        )
        span.end(end_time=end_ns)
        context = span.get_span_context()
    except Exception:
        _broken("the queue wait span")
        return None
    if item.context is None:
        item.root = trace.set_span_in_context(span)
    return context


@contextmanager
def batch(
    model_name: str, model_version: str, items: Sequence[PendingRequest], batch_items: int
) -> Iterator[SpanContext | None]:
    """ONE span for a batch's compute, ``batch <model>``, linked to each request's queue wait
    (ended here). Yields the batch span's context for the requests' write spans to link to."""
    tracer_, enabled = tracer()
    if not enabled:
        for item in items:
            item.waited = True
        yield None
        return
    now_ns = time.time_ns()
    waits = [end_queue_wait(item, now_ns) for item in items]
    links = [Link(c) for c in waits if c is not None and c.is_valid]
    try:
        span = tracer_.start_span(
            f"batch {model_name}",
            context=Context(),
            links=links,
            attributes={
                "streaminfer.model.name": model_name,
                "streaminfer.model.version": model_version,
                "streaminfer.batch.size": batch_items,
                "streaminfer.batch.requests": len(items),
                "messaging.batch.message_count": len(items),
            },
            start_time=now_ns,
        )
        context = span.get_span_context()
    except Exception:
        _broken("the batch span")
        span = context = None
    try:
        yield context
    except BaseException as exc:
        if span is not None:
            try:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR)
            except Exception:
                _broken("the batch span")
        raise
    finally:
        if span is not None:
            try:
                span.end()
            except Exception:
                _broken("the batch span")


def start_writes(outcomes: Sequence[Outcome]) -> list[Span]:
    """A ``write result`` span for each outcome, the child of its request's context (its write
    span is what its result's headers carry on); none without an SDK."""
    tracer_, enabled = tracer()
    if not enabled:
        return []
    started = []
    for outcome in outcomes:
        links = (
            [Link(outcome.batch)] if outcome.batch is not None and outcome.batch.is_valid else None
        )
        attributes = {"streaminfer.request_id": outcome.request_id}
        if outcome.result is not None:
            attributes["streaminfer.result.status"] = outcome.result.status.value
        if outcome.letter is not None:
            attributes["streaminfer.dead_letter.code"] = outcome.letter.code
        try:
            span = tracer_.start_span(
                "write result",
                context=outcome.context or outcome.root or Context(),
                links=links,
                attributes=attributes,
            )
        except Exception:  # its result's headers carry the context it came with
            _broken("a write span")
            continue
        outcome.span = span
        started.append(span)
    return started


def end_writes(spans: Sequence[Span], ok: bool) -> None:
    for span in spans:
        try:
            if not ok:  # the worker stops with them unwritten: they are redelivered
                span.set_status(StatusCode.ERROR, "not written; left for redelivery")
            span.end()
        except Exception:
            _broken("a write span")


def result_headers(outcome: Outcome) -> list[tuple[str, bytes]] | None:
    """Kafka headers of the outcome's result: its write span's context, else its request's (no
    SDK: the context the request came with, so a downstream consumer continues that trace).
    Made once per outcome."""
    if outcome.headers is not None:
        return outcome.headers
    if outcome.span is not None:
        context = trace.set_span_in_context(outcome.span)
    elif outcome.context is not None:
        context = outcome.context
    else:
        return None  # neither an SDK nor a context that came with the request
    headers: list[tuple[str, bytes]] = []
    try:
        propagate.inject(headers, context=context, setter=KAFKA_HEADERS)
    except Exception:  # a propagator that raises: the result goes without a trace header
        _broken("the result's trace headers")
        headers = []
    outcome.headers = headers
    return headers or None
