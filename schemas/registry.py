"""A small synchronous client for a Confluent-compatible schema registry (REST API v1), and
the codec's bounded memory of failed schema-id look-ups.

Only the two calls the codec needs: register a schema under a subject, and fetch a
schema by id. Results are cached by the codec, so each runs once per schema; the codec
runs them in a thread when called from an event loop (`AvroCodec.decode_async`,
`AvroCodec.prepare_async`). An outage (no connection, timeout, HTTP 5xx, 408, 429, an
unreadable answer) is RegistryUnavailable, which is retriable; only a schema the registry
refuses (409, 422) is an EncodeError, and an id it does not know (404) UnknownSchema.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from streaminfer.schemas.errors import EncodeError, RegistryUnavailable, SchemaError, UnknownSchema

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

__all__ = ["LookupFailures", "RegistryClient"]

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_REFUSED = (409, 422)  # incompatible, invalid: the schema itself is refused


class RegistryClient:
    """Talks to `<url>/subjects/...` and `<url>/schemas/ids/...` over HTTP.

    `client` may be any httpx.Client (auth, TLS, a mock transport); requests use absolute
    URLs, so it needs no base_url. A client passed in is not closed by `close()`.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0, client: httpx.Client | None = None):
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()  # the codec calls from worker threads

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
            raise RegistryUnavailable(f"schema registry {self._url}: {exc!r}") from exc
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise RegistryUnavailable(
                f"schema registry {self._url}{path}: HTTP {response.status_code}"
            )
        return response

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register `schema` under `subject` (idempotent) and return its global id."""
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
        if response.status_code != 200:  # e.g. 401/403/404: a misconfiguration, not the record
            raise RegistryUnavailable(
                f"schema registry {self._url}{path}: HTTP {response.status_code}"
            )
        try:
            schema_id = int(response.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryUnavailable(
                f"schema registry {self._url}{path}: unreadable answer"
            ) from exc
        logger.info("registered schema %s with registry id %d", subject, schema_id)
        return schema_id

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
