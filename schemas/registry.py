"""A small synchronous client for a Confluent-compatible schema registry (REST API v1), the
subject naming strategies, and the codec's bounded memory of failed schema-id look-ups.

Only the two calls the codec needs: register a schema (under the subjects its strategy names),
and fetch a schema by id. Results are cached by the codec, so each runs once per schema; the
codec runs them in a thread when called from an event loop (`AvroCodec.decode_async`,
`AvroCodec.prepare_async`). An outage (no connection, timeout, HTTP 5xx, 408, 429, an
unreadable answer) is RegistryUnavailable, which is retriable; refused credentials (401, 403)
are RegistryAuthError, a RegistryUnavailable with a message that says so (retried, never
dead-lettered: the events are fine, the configuration is not); only a schema the registry
refuses (409, 422) is an EncodeError, and an id it does not know (404) UnknownSchema.

Subjects (`subject_strategy`), as Confluent's serializers name them:
    record        <record full name>                     RecordNameStrategy (the default)
    topic         <topic>-value, per topic it is written to   TopicNameStrategy
    topic_record  <topic>-<record full name>, per topic  TopicRecordNameStrategy
Registering one schema under several subjects gives one global id, so the bytes are the same
whatever the strategy; it decides which subjects the registry checks compatibility in. The codec
registers once per record type (at start): a task added while a process runs gets its topics'
subjects when that process next starts (decoding looks schemas up by id and never needs them).

NOTE: why not confluent-kafka's SchemaRegistryClient (2.16.1, read and measured here; it is a
dev dependency, and tests prove the wire interop with its AvroSerializer/AvroDeserializer):
- weight: `confluent-kafka[schemaregistry]` is a 4.9 MB wheel, about 23 MB installed (librdkafka
  12 MB, confluent_kafka 4.4 MB, authlib + joserfc 4.2 MB, httpx2 + httpcore2 1.9 MB, cachetools,
  truststore): a second Kafka client and a second HTTP stack next to aiokafka and httpx, for two
  REST calls. Importing its SchemaRegistryClient loads librdkafka: 480 ms and 46 MB RSS in a
  fresh interpreter, against 223 ms and 28 MB for httpx.
- its HTTP stack is httpx2 with a session built from its own config: the shell's httpx client
  (auth, CA: `streaminfer.connectivity.registry_client`) and httpx's MockTransport in the unit
  tests cannot be handed to it.
- its retries sleep inside the call (max.retries 3, 1-20 s jittered back-off): a worker asked
  to stop would sit in them; here a call fails fast and the worker's own retry loop, which ends
  on shutdown, waits the outage out (SPEC section 9).
- the async client cannot serve the codec's synchronous decode/encode; the sync one blocks
  just as this one does, so both would run in a thread.
- it caches by subject and schema, the codec already caches ids and writers.
What it has and this lacks: OAuth bearer tokens, mutual TLS, several URLs with fail-over. Any of
those needed would be the reason to wrap it behind this class's two methods.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from streaminfer.schemas.errors import EncodeError, RegistryUnavailable, SchemaError, UnknownSchema
from streaminfer.schemas.records import AuditEvent, DeadLetter, InferenceRequest, InferenceResult
from streaminfer.schemas.topics import audit_topic, dlq_topic, request_topics, results_topic

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

__all__ = [
    "SUBJECT_STRATEGIES",
    "LookupFailures",
    "RegistryAuthError",
    "RegistryClient",
    "record_topics",
    "subject_names",
]

SUBJECT_STRATEGIES = ("record", "topic", "topic_record")
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_REFUSED = (409, 422)  # incompatible, invalid: the schema itself is refused
_AUTH = (401, 403)

Topics = Callable[[str], Iterable[str]]
"""Record full name -> the topics it is written to (for the topic strategies)."""


class RegistryAuthError(RegistryUnavailable):
    """The registry refused our credentials (HTTP 401/403). Retriable like any outage, so no
    event is dead-lettered for it, but the message names the cause."""


def subject_names(strategy: str, record_name: str, topics: Iterable[str] = ()) -> list[str]:
    """The subjects `record_name` is registered under. A record written to no topic (a type
    nested in others, e.g. Tensor) falls back to its own name under every strategy."""
    if strategy not in SUBJECT_STRATEGIES:
        raise ValueError(f"unknown subject strategy {strategy!r}: one of {SUBJECT_STRATEGIES}")
    topics = list(dict.fromkeys(topics))
    if strategy == "record" or not topics:
        return [record_name]
    if strategy == "topic":
        return [f"{topic}-value" for topic in topics]
    return [f"{topic}-{record_name}" for topic in topics]


def record_topics(prefix: str, tasks: Iterable[str]) -> dict[str, list[str]]:
    """Which of our records is written to which topics (SPEC section 3), for `tasks`."""
    tasks = list(dict.fromkeys(tasks))
    return {
        InferenceRequest.AVRO_NAME: [t for task in tasks for t in request_topics(prefix, task)],
        InferenceResult.AVRO_NAME: [results_topic(prefix, task) for task in tasks],
        AuditEvent.AVRO_NAME: [audit_topic(prefix)],
        DeadLetter.AVRO_NAME: [dlq_topic(prefix)],
    }


def _cause(exc: BaseException) -> str:
    """What a transport error means, for the log: an untrusted certificate says so."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: the registry's certificate is not trusted ({seen.verify_message})"
        seen = seen.__cause__ or seen.__context__
    return repr(exc)


class RegistryClient:
    """Talks to `<url>/subjects/...` and `<url>/schemas/ids/...` over HTTP.

    `client` may be any httpx.Client (auth, TLS, a mock transport); requests use absolute
    URLs, so it needs no base_url. A client passed in is not closed by `close()`.
    `subject_strategy` is one of SUBJECT_STRATEGIES; `topics` (record full name -> topics)
    is asked at each registration and is required by the topic strategies.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
        subject_strategy: str = "record",
        topics: Topics | None = None,
    ):
        subject_names(subject_strategy, "check")  # unknown strategy: ValueError now
        if subject_strategy != "record" and topics is None:
            raise ValueError(f"subject strategy {subject_strategy!r} needs the records' topics")
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None
        self._strategy = subject_strategy
        self._topics = topics
        self._lock = threading.Lock()  # the codec calls from worker threads

    @property
    def subject_strategy(self) -> str:
        return self._strategy

    def subjects(self, record_name: str) -> list[str]:
        """The subjects `record_name` is registered under, now."""
        if self._strategy == "record" or self._topics is None:
            return [record_name]
        topics = self._topics(record_name)
        return subject_names(self._strategy, record_name, topics)

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx  # NOTE: imported lazily; most deployments never configure a registry

                self._client = httpx.Client(timeout=self._timeout_s)
            return self._client

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        headers = {"Accept": _CONTENT_TYPE, **kwargs.pop("headers", {})}
        try:
            response = self._http().request(method, self._url + path, headers=headers, **kwargs)
        except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
            raise RegistryUnavailable(f"schema registry {self._url}: {_cause(exc)}") from exc
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise RegistryUnavailable(
                f"schema registry {self._url}{path}: HTTP {response.status_code}"
            )
        if response.status_code in _AUTH:
            raise RegistryAuthError(
                f"schema registry {self._url}{path}: HTTP {response.status_code}: the registry "
                "refused the credentials (basic auth username and password)"
            )
        return response

    def register(self, record_name: str, schema: dict[str, Any]) -> int:
        """Register `schema` of record `record_name` under each subject its strategy names
        (idempotent) and return its global id."""
        ids = {subject: self._register(subject, schema) for subject in self.subjects(record_name)}
        if len(set(ids.values())) != 1:  # a registry keeps one id per schema, whatever subject
            raise RegistryUnavailable(f"schema registry {self._url}: {record_name} got ids {ids}")
        schema_id = next(iter(ids.values()))
        logger.info(
            "registered schema %s as %s with registry id %d", record_name, ", ".join(ids), schema_id
        )
        return schema_id

    def _register(self, subject: str, schema: dict[str, Any]) -> int:
        path = f"/subjects/{quote(subject, safe='')}/versions"
        body = {"schema": json.dumps(schema, separators=(",", ":"))}
        response = self._request(
            "POST", path, content=json.dumps(body), headers={"Content-Type": _CONTENT_TYPE}
        )
        if response.status_code in _REFUSED:
            # Retrying won't help: the schema needs changing, not the registry.
            raise EncodeError(
                f"schema registry refused {subject}: HTTP {response.status_code} {response.text}"
            )
        if response.status_code != 200:  # e.g. 404: a misconfiguration, not the record
            raise RegistryUnavailable(
                f"schema registry {self._url}{path}: HTTP {response.status_code}"
            )
        try:
            return int(response.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailable(
                f"schema registry {self._url}{path}: unreadable answer"
            ) from exc

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The writer schema (parsed JSON) registered under `schema_id`."""
        response = self._request("GET", f"/schemas/ids/{schema_id}")
        if response.status_code == 404:
            raise UnknownSchema(f"schema id {schema_id} is not in the registry")
        if response.status_code != 200:
            raise RegistryUnavailable(
                f"schema registry: schema id {schema_id}: HTTP {response.status_code}"
            )
        try:
            payload = response.json()
            if payload.get("schemaType", "AVRO") != "AVRO":
                raise UnknownSchema(f"schema id {schema_id} is not an Avro schema")
            return json.loads(payload["schema"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnknownSchema(f"schema id {schema_id}: unreadable registry answer") from exc

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._owns_client:
                self._client.close()
            self._client = None


class LookupFailures:
    """Schema ids whose look-up failed lately, so that a flood of events naming unknown
    (or random) ids does not reach the registry once per event.

    An unknown or unusable id (UnknownSchema) is remembered for `unknown_ttl_s`; an outage
    (RegistryUnavailable) for `unavailable_ttl_s` only, a short back-off before that id
    is asked for again. At most `max_ids` ids, least recently seen dropped first.
    """

    def __init__(
        self,
        *,
        max_ids: int = 1024,
        unknown_ttl_s: float = 60.0,
        unavailable_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._max_ids = max_ids
        self._unknown_ttl_s = unknown_ttl_s
        self._unavailable_ttl_s = unavailable_ttl_s
        self._clock = clock
        self._failures: OrderedDict[int, tuple[float, type[SchemaError], str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def check(self, schema_id: int) -> None:
        """Raise the failure remembered for `schema_id`, if it is still fresh."""
        with self._lock:
            entry = self._failures.get(schema_id)
            if entry is None:
                return
            expires, error_type, message = entry
            if self._clock() >= expires:
                del self._failures[schema_id]
                return
            self._failures.move_to_end(schema_id)
        raise error_type(f"{message} (remembered, not asked again yet)")

    def remember(self, schema_id: int, error: SchemaError) -> None:
        """Remember that looking `schema_id` up raised `error`."""
        retriable = isinstance(error, RegistryUnavailable)
        ttl = self._unavailable_ttl_s if retriable else self._unknown_ttl_s
        with self._lock:
            self._failures[schema_id] = (self._clock() + ttl, type(error), str(error))
            self._failures.move_to_end(schema_id)
            while len(self._failures) > self._max_ids:
                self._failures.popitem(last=False)
