"""The caller's OpenTelemetry context on the client's requests: the W3C ``traceparent`` (and what
else ``OTEL_PROPAGATORS`` names) on HTTP submissions and on Kafka events, so that a trace runs
from the caller's own span through the gateway and the worker. Nothing is added outside a span."""

from __future__ import annotations

from opentelemetry import propagate


def trace_headers() -> dict[str, str]:
    """The current context as propagation headers (empty when no span is active)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
