"""Prometheus metrics of the gateway (names follow ``inference_<thing>_<unit>``; labels bounded)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# NOTE: a registry of its own: gateway and worker metrics share names (their jobs tell them apart)
# and must not collide when both packages are imported into one process (tests).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

REQUESTS = Counter(
    "inference_requests_total",
    "Requests seen by the gateway, by outcome",
    ["task", "status"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "inference_errors_total",
    "Error responses by error code",
    ["task", "error_code"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "inference_request_duration_seconds",
    "Submit to result, for requests answered with their result",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "inference_consumer_lag",
    "Requests not yet committed by the workers",
    ["task", "priority"],
    registry=REGISTRY,
)
DRAIN_SECONDS = Gauge(
    "inference_drain_seconds",
    "Seconds the live instances take to work off the lag: lag x "
    "smoothed per-item service time / live instances (NaN: no live worker has timed a batch)",
    ["task", "priority"],
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "inference_circuit_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ["name"],
    registry=REGISTRY,
)
