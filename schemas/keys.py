"""Redis keys and Kafka header names shared by gateway and worker: the only place
they are spelled. Every key starts with the deployment's prefix (the topic prefix)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

logger = logging.getLogger(__name__)

__all__ = [
    "HEADER_ERROR_TYPE",
    "HEADER_REQUEST_ID",
    "HEADER_TRACEPARENT",
    "HSET_IF_EXISTS",
    "KAFKA_HEADERS",
    "RESULT_FIELD_AVRO",
    "RESULT_FIELD_PUBLISHED",
    "SERVICE_STALE_MS",
    "STATUS_FIELD",
    "WORKER_INDEX_GRACE_MS",
    "Heartbeat",
    "RequestState",
    "api_client_key",
    "client_of_api_client_key",
    "decode_latency",
    "decode_service",
    "encode_latency",
    "encode_service",
    "api_key_key",
    "cache_key",
    "feature_key",
    "rate_limit_key",
    "cancel_key",
    "collection_keys",
    "collection_tombstone_keys",
    "collections_key",
    "dead_letter_key",
    "idempotency_key",
    "latency_key",
    "request_id_of_result_key",
    "result_channel",
    "result_key",
    "served_tasks_key",
    "service_key",
    "status_key",
    "worker_key",
    "workers_key",
]

HEADER_ERROR_TYPE = "streaminfer-error-type"
HEADER_REQUEST_ID = "streaminfer-request-id"
HEADER_TRACEPARENT = "traceparent"


class KafkaHeaders:
    """Getter and setter for OpenTelemetry's propagators on Kafka record headers, a list of
    ``(str, bytes)`` pairs as aiokafka and faust carry them (a mapping is read too):
    ``propagate.extract(headers, getter=KAFKA_HEADERS)``, ``propagate.inject(headers,
    setter=KAFKA_HEADERS)``. Duck-typed (``get``, ``keys``, ``set``), so schemas imports no
    OpenTelemetry. Names match case-insensitively; values that are not text are no value."""

    @staticmethod
    def _pairs(carrier):
        if not carrier:
            return ()
        return carrier.items() if hasattr(carrier, "items") else carrier

    def get(self, carrier, key: str) -> list[str] | None:
        # NOTE: on the worker's hot path (three lookups per event): a plain loop, no copies
        key = key.lower()
        values = None
        for k, v in self._pairs(carrier):
            if k == key or isinstance(k, str) and k.lower() == key:
                if isinstance(v, bytes | bytearray):
                    v = v.decode("utf-8", "replace")
                if isinstance(v, str):
                    values = [v] if values is None else [*values, v]
        return values

    def keys(self, carrier) -> list[str]:
        return [k for k, _ in self._pairs(carrier) if isinstance(k, str)]

    def set(self, carrier: list, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k.lower() != key.lower()]
        carrier.append((key, value.encode()))


KAFKA_HEADERS = KafkaHeaders()

# Fields of the result hash (result_key).
RESULT_FIELD_AVRO = "avro"
RESULT_FIELD_PUBLISHED = "published"

# The field of the status hash (status_key) that holds the request's state.
STATUS_FIELD = "status"


class RequestState(StrEnum):
    """A request's state in its status hash, as the gateway and workers write it: the gateway
    marks it queued (and cancelling when asked to), a worker running, then done once its result
    is published. A request with no state (or one no writer knows) is treated as queued."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLING = "cancelling"

    @classmethod
    def decode(cls, value: str | bytes | None) -> RequestState | None:
        """The state a status hash holds; None when it holds none, or text no writer writes."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        try:
            return cls(value)
        except ValueError:
            return None


# Lua: HSET field value on a hash only while it exists. A plain HSET after the hash expired would
# re-create it holding that one field and no TTL, kept for ever.
HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

# Members of workers_key whose heartbeat expired longer ago than this are dropped from the index;
# the slack allows for the clocks of workers and gateways to differ.
WORKER_INDEX_GRACE_MS = 60_000

# Stands in for "the task's default version" so the key never contains "None".
_DEFAULT_VERSION = "default"


def result_key(prefix: str, request_id: str) -> str:
    """Hash: ``avro`` (the stored InferenceResult) and ``published`` (set once it is on the
    results topic)."""
    return f"{prefix}:result:{request_id}"


def result_channel(prefix: str, request_id: str) -> str:
    """Pub/sub channel published to once the result is stored."""
    return f"{prefix}:result-ready:{request_id}"


def status_key(prefix: str, request_id: str) -> str:
    """Hash: state (queued, running, ...) and owner metadata of a request."""
    return f"{prefix}:status:{request_id}"


def request_id_of_result_key(prefix: str, key: str | bytes) -> str | None:
    """The request a ``result_key`` belongs to; None for a key of something else."""
    return _tail(result_key(prefix, ""), key)


def _tail(head: str, key: str | bytes) -> str | None:
    # the key's part after ``head``: the id as given (ids may hold colons), never a split on ":"
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return key[len(head) :] if key.startswith(head) and len(key) > len(head) else None


def cancel_key(prefix: str, request_id: str) -> str:
    """Flag set when a client cancels a request that has not run yet."""
    return f"{prefix}:cancel:{request_id}"


def dead_letter_key(prefix: str, topic: str, partition: int, offset: int) -> str:
    """Flag: the event at that topic, partition and offset is on the dead-letter topic."""
    return f"{prefix}:dead-lettered:{topic}:{partition}:{offset}"


def cache_key(prefix: str, task: str, model_version: str | int | None, digest: str) -> str:
    """Content cache entry for identical inputs (`input_digest`) to one model version."""
    version = _DEFAULT_VERSION if model_version is None else model_version
    return f"{prefix}:cache:{task}:{version}:{digest}"


def feature_key(prefix: str, task: str, model_version: str, store: str, entity_id: str) -> str:
    """Cached features (JSON, column -> value) of one entity of a feature lookup task, per model
    version and ``store`` (a short hash of the database URL and table it came from), so one
    version's or database's rows are never served for another."""
    return f"{prefix}:features:{task}:{model_version}:{store}:{entity_id}"


def worker_key(prefix: str, worker_id: str) -> str:
    """A live worker's heartbeat (JSON of its tasks), expiring unless renewed."""
    return f"{prefix}:worker:{worker_id}"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A live worker's heartbeat (the value under ``worker_key``): who it is and what it serves."""

    worker_id: str
    tasks: list[str]

    def encode(self) -> str:
        return json.dumps({"worker_id": self.worker_id, "tasks": list(self.tasks)})

    @classmethod
    def decode(cls, value: str | bytes) -> Heartbeat:
        """Raises ValueError for anything but a heartbeat ``encode`` wrote."""
        try:
            beat = json.loads(value)
            worker_id, tasks = beat["worker_id"], beat["tasks"]
        except (
            ValueError,
            KeyError,
            TypeError,
            RecursionError,
        ) as exc:  # NOTE: JSONDecodeError is a ValueError
            raise ValueError(f"not a worker heartbeat: {exc!r}") from None
        if (
            not isinstance(worker_id, str)
            or not isinstance(tasks, list)
            or not all(isinstance(t, str) for t in tasks)
        ):
            raise ValueError(
                "not a worker heartbeat: worker_id must be text and tasks a list of text"
            )
        return cls(worker_id, tasks)


def workers_key(prefix: str) -> str:
    """Sorted set: the workers that sent a heartbeat, member = worker_id, score = when that
    heartbeat expires (ms since the epoch). The index readers use instead of scanning for
    ``worker_key``s; the payload key's own TTL says whether a member is still alive."""
    return f"{prefix}:workers"


def served_tasks_key(prefix: str) -> str:
    """Set: every task a worker has ever served (announced in its heartbeat); never expires."""
    return f"{prefix}:served-tasks"


SERVICE_STALE_MS = 10_000
"""A worker's entry in a ``service_key`` hash older than this is from a worker that is gone."""


def service_key(prefix: str, task: str) -> str:
    """Hash: per worker serving ``task`` (field = worker_id), JSON of its batch-cost fit, its
    instances and when it said so (``at``, ms since the epoch); renewed with each heartbeat,
    and the whole key expires once no worker renews it."""
    return f"{prefix}:service:{task}"


def encode_service(figures: Mapping[str, object], at_ms: int) -> str:
    """A worker's entry in a ``service_key`` hash: its figures (batch-cost fit, ``instances``)
    and when it said so."""
    return json.dumps({**figures, "at": at_ms})


def decode_service(value: str | bytes) -> dict:
    """The figures of a ``service_key`` entry, ``at`` among them; ValueError unless it is a JSON
    object (whose fields the reader still checks: a foreign or old entry may lack some)."""
    try:
        figures = json.loads(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"not a service entry: {exc!r}") from None
    if not isinstance(figures, dict):
        raise ValueError(f"not a service entry: a JSON {type(figures).__name__}, not an object")
    return figures


def api_key_key(prefix: str, key_digest: str) -> str:
    """Hash: an API key's client, scopes and admin flag, under the SHA-256 of the key (never the key)."""
    return f"{prefix}:apikey:{key_digest}"


def api_client_key(prefix: str, client: str) -> str:
    """Set: the digests of a client's API keys (to list and revoke them)."""
    return f"{prefix}:apiclient:{client}"


def client_of_api_client_key(prefix: str, key: str | bytes) -> str | None:
    """The client an ``api_client_key`` names; None for a key of something else."""
    return _tail(api_client_key(prefix, ""), key)


def rate_limit_key(prefix: str, client: str) -> str:
    """Hash: a client's token bucket (tokens, last refill)."""
    return f"{prefix}:ratelimit:{client}"


def latency_key(prefix: str, task: str, priority: str) -> str:
    """Sorted set: recent results of a task and priority (score = completion time in ms,
    member = ``request_id:total_ms``), kept for a few minutes for /admin/stats."""
    return f"{prefix}:latency:{task}:{priority}"


def encode_latency(request_id: str, total_ms: float) -> str:
    """A member of a ``latency_key`` sorted set."""
    return f"{request_id}:{total_ms:.1f}"


def decode_latency(member: str | bytes) -> float:
    """The ``total_ms`` of a ``latency_key`` member; ValueError for one ``encode_latency``
    did not write."""
    if isinstance(member, bytes):
        member = member.decode("utf-8", "replace")
    _, colon, total_ms = member.rpartition(":")
    if not colon:
        raise ValueError(f"not a latency member: {member[:80]!r}")
    return float(total_ms)


def idempotency_key(prefix: str, client_id: str | None, key: str) -> str:
    """Maps a client's Idempotency-Key to its request.

    The client's key is hashed: it is arbitrary client text, and a fixed-length hex tail
    keeps `client:key` pairs from colliding when either contains a colon.
    """
    hashed = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{prefix}:idempotency:{client_id or 'anonymous'}:{hashed}"


def _namespace(client_id: str | None) -> str:
    # fixed-length hex: client ids are arbitrary text (colons too); None = auth disabled
    return hashlib.sha256((client_id or "").encode("utf-8")).hexdigest()[:32]


def collections_key(prefix: str, client_id: str | None) -> str:
    """Hash: a client's collections, name -> ``{"dimension", "created_at"}`` as JSON."""
    return f"{prefix}:collections:{_namespace(client_id)}"


def collection_keys(prefix: str, client_id: str | None, name: str) -> tuple[str, str, str]:
    """A client's collection ``name`` (names hold no colon): its items hash (id -> metadata
    JSON, newline, float32 vector), its changelog sorted set (id -> sequence number of its last
    write) and that sequence's counter (see ``schemas.collections``)."""
    base = f"{prefix}:collection:{_namespace(client_id)}:{name}"
    return f"{base}:items", f"{base}:changes", f"{base}:seq"


def collection_tombstone_keys(prefix: str, client_id: str | None, name: str) -> tuple[str, str]:
    """Its deleted ids (a capped sorted set, id -> sequence number of the delete) and the
    trim point (the highest sequence number trimmed from it; see ``schemas.collections``)."""
    base = f"{prefix}:collection:{_namespace(client_id)}:{name}"
    return f"{base}:deleted", f"{base}:trimmed"
