"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for load generation: it spends a
fraction of httpx's CPU per request, so one process can drive a gateway at thousands of req/s.

It speaks only what a load generator needs: one request at a time per connection, responses
framed by ``Content-Length`` (what the gateway sends), and reconnects on ``Connection: close``.

NOTE: kept instead of ``streaminfer.client`` for load generation. Measured here (2 shared cores,
busy; 5 s of submissions over 32 connections to one gateway): this client 0.10-0.14 ms of client
CPU per request and 363-533 req/s; ``streaminfer.client.AsyncClient`` 4.6-9.8 ms and 43-96
req/s, most of it in httpx/httpcore itself (plain ``httpx.AsyncClient``: 4.3-4.8 ms).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def encode_request(
    method: str, host: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of one HTTP/1.1 request with a Content-Length body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post_json(host: str, path: str, payload: dict, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return encode_request(
        "POST", host, path, body, {"Content-Type": "application/json", **(headers or {})}
    )


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and headers of a response head (status line to the blank line)."""
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {status_line!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(rest[:3]), headers


async def read_response(reader: asyncio.StreamReader) -> Response:
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ValueError("chunked responses are not supported by this load generator")
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Response(status, headers, body)


class HttpConnection:
    """One keep-alive connection sending requests one after another."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(raw)
        response = await read_response(self._reader)
        if not response.keep_alive:
            await self.close()
        return response

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass  # the server closed first
