"""The bench's HTTP load generator: response framing on a keep-alive stream, and what counts as
a success."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from tqdm import tqdm

from streaminfer.bench.http_client import Response, encode_request, parse_head, read_response
from streaminfer.bench.http_load import (
    RunningGateway,
    accepted,
    closed_loop,
    cpu_seconds,
    result_succeeded,
)

QUEUED = json.dumps({"request_id": "r1", "task": "text-embedding", "status": "queued"}).encode()
DONE = json.dumps(
    {"request_id": "r2", "status": "succeeded", "outputs": {"embedding": [0.5]}}
).encode()


def response_bytes(status: str, body: bytes, *extra: str) -> bytes:
    head = [
        f"HTTP/1.1 {status}",
        "date: Mon, 01 Jan 2024 00:00:00 GMT",
        "server: uvicorn",
        f"content-length: {len(body)}",
        "content-type: application/json",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def stream_of(*responses: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(b"".join(responses))
    reader.feed_eof()
    return reader


def test_parse_head_reads_status_and_lower_cased_headers():
    status, headers = parse_head(
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\nX-Request-ID:  abc \r\n\r\n"
    )
    assert status == 202
    assert headers == {"content-length": "12", "x-request-id": "abc"}


def test_parse_head_refuses_what_is_not_http():
    with pytest.raises(ValueError):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


async def test_keep_alive_stream_yields_each_response_with_its_body():
    reader = stream_of(
        response_bytes("202 Accepted", QUEUED),
        response_bytes("200 OK", DONE),
        response_bytes("204 No Content", b""),
    )
    first, second, third = [await read_response(reader) for _ in range(3)]
    assert (first.status, first.body, first.keep_alive) == (202, QUEUED, True)
    assert (second.status, json.loads(second.body)["status"]) == (200, "succeeded")
    assert (third.status, third.body) == (204, b"")
    assert reader.at_eof()


async def test_connection_close_is_seen():
    response = await read_response(
        stream_of(response_bytes("503 Service Unavailable", b"{}", "connection: close"))
    )
    assert response.status == 503 and not response.keep_alive


def test_encode_request_frames_the_body():
    raw = encode_request(
        "POST",
        "127.0.0.1:8000",
        "/v1/infer/text-embedding?wait=30",
        b'{"a":1}',
        {"Content-Type": "application/json"},
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /v1/infer/text-embedding?wait=30 HTTP/1.1"
    assert b"Content-Length: 7" in head and body == b'{"a":1}'


@pytest.mark.parametrize(
    ("response", "succeeded", "is_accepted"),
    [
        (Response(200, {}, DONE), True, False),
        (Response(202, {}, QUEUED), False, True),  # ?wait ran out: no result yet
        (Response(200, {}, json.dumps({"status": "failed"}).encode()), False, False),
        (Response(503, {}, b'{"error_code": "SERVICE_UNAVAILABLE"}'), False, False),
        (Response(429, {}, b'{"error_code": "OVERLOADED"}'), False, False),
        (Response(200, {}, b"not json"), False, False),
    ],
)
def test_what_counts_as_success(response, succeeded, is_accepted):
    assert result_succeeded(response) is succeeded
    assert accepted(response) is is_accepted


async def test_closed_loop_counts_error_statuses_as_failures():
    statuses = iter(
        [b"202 Accepted", b"503 Service Unavailable", b"202 Accepted", b"429 Too Many Requests"]
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):  # the requests below have no body
                writer.write(response_bytes(next(statuses).decode(), QUEUED))
        except asyncio.IncompleteReadError:
            writer.close()  # the client hung up

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    gateway = RunningGateway("127.0.0.1", server.sockets[0].getsockname()[1], os.getpid())
    requests = [encode_request("GET", "x", "/")] * 4
    try:
        with tqdm(disable=True) as progress:
            latencies, failures, _ = await closed_loop(gateway, requests, 1, accepted, progress)
    finally:
        server.close()
        await server.wait_closed()
    assert len(latencies) == 4 and failures == 2


def test_cpu_seconds_of_this_process():
    assert cpu_seconds(os.getpid()) > 0
