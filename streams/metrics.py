"""Prometheus metrics of the worker (names follow SPEC/issue: ``inference_<thing>_<unit>``)."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("inference_requests_total", "Requests finished by the worker", ["task", "status"])
QUEUE_SECONDS = Histogram(
    "inference_queue_seconds", "Time from the request's creation to its batch starting",
    ["task", "priority"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COMPUTE_SECONDS = Histogram(
    "inference_compute_seconds", "Model time per batch", ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "inference_batch_size", "Items per batch", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ERRORS = Counter("inference_errors_total", "Failed requests by error code", ["task", "error_code"])
CACHE_HITS = Counter("inference_cache_hits_total", "Requests answered from the content cache")
DEAD_LETTERS = Counter("inference_dead_letters_total", "Events sent to the dead-letter topic")
DUPLICATES = Counter("inference_duplicates_total", "Redelivered requests not run again")
QUEUED = Gauge("inference_batcher_queued", "Requests waiting in a model's batcher", ["model"])
