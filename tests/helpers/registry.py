"""A fake Confluent Schema Registry on a real socket (threaded, stdlib): the REST calls producers
and consumers make (register under a subject, fetch by id, list subjects and versions), optional
basic auth, optional TLS. One global id per schema, whatever the subject, as the real one."""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class RegistryState:
    first_id: int = 1
    credentials: tuple[str, str] | None = None
    schemas: dict[int, str] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, schema: str) -> int:
        with self.lock:
            # NOTE: as the real one, the same schema in other whitespace is the same schema.
            parsed = json.loads(schema)
            schema_id = next(
                (i for i, known in self.schemas.items() if json.loads(known) == parsed), None
            )
            if schema_id is None:
                schema_id = self.first_id + len(self.schemas)
                self.schemas[schema_id] = schema
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id


class _Handler(BaseHTTPRequestHandler):
    state: RegistryState

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _allowed(self) -> bool:
        header = self.headers.get("Authorization")
        self.state.calls.append(f"{self.command} {self.path}")
        self.state.authorizations.append(header)
        if self.state.credentials is None:
            return True
        user, password = self.state.credentials
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if header == expected:
            return True
        self._reply(401, {"error_code": 401, "message": "Unauthorized"})
        return False

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._allowed():
            return
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
            return self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
        try:
            request = json.loads(body)
            schema = request["schema"]
            json.loads(schema)
        except (ValueError, KeyError, TypeError):
            return self._reply(422, {"error_code": 42201, "message": "Invalid schema"})
        if request.get("schemaType", "AVRO") != "AVRO":
            return self._reply(422, {"error_code": 42201, "message": "not Avro"})
        self._reply(200, {"id": self.state.register(unquote(parts[1]), schema)})

    def do_GET(self) -> None:  # noqa: N802
        if not self._allowed():
            return
        parts = urlsplit(self.path).path.strip("/").split("/")
        if parts == ["subjects"]:
            return self._reply(200, sorted(self.state.subjects))
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            versions = self.state.subjects.get(unquote(parts[1]))
            if versions is None:
                return self._reply(404, {"error_code": 40401, "message": "Subject not found"})
            return self._reply(200, list(range(1, len(versions) + 1)))
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
            schema = self.state.schemas.get(int(parts[2]))
            if schema is None:
                return self._reply(404, {"error_code": 40403, "message": "Schema not found"})
            return self._reply(200, {"schema": schema})
        self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})


@contextmanager
def fake_registry(
    *,
    first_id: int = 1,
    credentials: tuple[str, str] | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> Iterator[tuple[str, RegistryState]]:
    """(url, state) of a registry on 127.0.0.1; HTTPS with `certfile`/`keyfile`."""
    state = RegistryState(first_id=first_id, credentials=credentials)
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scheme = "http"
    if certfile is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
