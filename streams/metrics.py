"""Prometheus metrics of the worker (names follow ``inference_<thing>_<unit>``; labels bounded)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# NOTE: a registry of its own: gateway and worker metrics share names (their jobs tell them apart)
# and must not collide when both packages are imported into one process (tests).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "inference_requests_total",
    "Requests finished by the worker",
    ["task", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "inference_request_duration_seconds",
    "Request creation to result, end to end",
    ["task"],
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
QUEUE_SECONDS = Histogram(
    "inference_queue_seconds",
    "Request creation to its batch starting",
    ["task", "priority"],
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
COMPUTE_SECONDS = Histogram(
    "inference_compute_seconds",
    "Model time per batch",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "inference_batch_size",
    "Items per batch",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
ERRORS = Counter(
    "inference_errors_total",
    "Failed requests by error code",
    ["task", "error_code"],
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "inference_cache_hits_total", "Requests answered from the content cache", registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "inference_dead_letters_total", "Events sent to the dead-letter topic", registry=REGISTRY
)
DUPLICATES = Counter(
    "inference_duplicates_total", "Redelivered requests not run again", registry=REGISTRY
)
QUEUED = Gauge(
    "inference_batcher_queued",
    "Requests waiting in a model's batcher",
    ["model"],
    registry=REGISTRY,
)
BATCH_COST = Gauge(
    "inference_batch_cost_ms",
    "Fitted time of a batch, per term: fixed, per item, per input "
    "unit (text byte or tensor element) of compute; delivery (results written)",
    ["model", "version", "term"],
    registry=REGISTRY,
)
FEATURE_LOOKUP_SECONDS = Histogram(
    "inference_feature_lookup_seconds",
    "Feature lookup per request of a batch: source cache (all rows from Redis) or db",
    ["task", "source"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
SERVICE_SECONDS = Gauge(
    "inference_service_seconds_per_item",
    "Smoothed compute seconds per item",
    ["model", "version"],
    registry=REGISTRY,
)


def watch_cost(model: str, version: str, cost) -> None:
    """Export a model version's :class:`~streams.costs.BatchCost` as it is fitted (NaN until then)."""
    for term in ("fixed_ms", "per_item_ms", "per_unit_ms", "delivery_ms"):
        BATCH_COST.labels(model, version, term.removesuffix("_ms")).set_function(
            lambda t=term: _or_nan(cost.to_dict()[t])
        )
    SERVICE_SECONDS.labels(model, version).set_function(lambda: _or_nan(cost.per_item_s))


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


CIRCUIT_STATE = Gauge(
    "inference_circuit_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ["name"],
    registry=REGISTRY,
)
PARTITIONS_PAUSED = Gauge(
    "inference_partitions_paused",
    "Request partitions paused while a circuit breaker is open",
    registry=REGISTRY,
)
