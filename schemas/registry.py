"""A small synchronous client for a Confluent-compatible schema registry (REST API v1).

Only the two calls the codec needs: register a schema under a subject, and fetch a
schema by id. Results are cached by the codec, so each runs once per schema.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from schemas.errors import EncodeError, RegistryUnavailable, UnknownSchema

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryClient:
    """Talks to `<url>/subjects/...` and `<url>/schemas/ids/...` over HTTP."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, client: httpx.Client | None = None):
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx  # NOTE: imported lazily; most deployments never configure a registry

            self._client = httpx.Client(
                base_url=self._url,
                timeout=self._timeout_s,
                headers={"Accept": _CONTENT_TYPE},
            )
        return self._client

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"schema registry {self._url}: {exc}") from exc
        if response.status_code >= 500:
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
        if response.status_code != 200:
            # 409 incompatible, 422 invalid: the schema itself is refused, retrying won't help.
            raise EncodeError(
                f"schema registry refused {subject}: HTTP {response.status_code} {response.text}"
            )
        schema_id = int(response.json()["id"])
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
        if self._client is not None and self._owns_client:
            self._client.close()
        self._client = None
