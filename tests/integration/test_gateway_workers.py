"""``streaminfer gateway --workers 2``: two gateway processes share one port, and each serves
requests end to end (through the shared stack's broker, worker and Redis)."""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest
from conftest import spawn, stop, wait_http_ready

pytestmark = pytest.mark.integration

TASK = "text-embedding"


def serving_processes(supervisor: psutil.Process) -> list[psutil.Process]:
    """uvicorn's gateway processes under its supervisor (not multiprocessing's resource tracker)."""
    return [
        child
        for child in supervisor.children()
        if "resource_tracker" not in " ".join(child.cmdline())
    ]


def holders_of_connections(processes: list[psutil.Process], port: int) -> set[int]:
    """PIDs among ``processes`` holding an established connection accepted on ``port``."""
    return {
        p.pid
        for p in processes
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    }


async def submit(client: httpx.AsyncClient, text: str) -> dict:
    response = await client.post(
        f"/v1/infer/{TASK}", params={"wait": 30}, json={"inputs": {"text": text}}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_two_gateway_processes_serve_requests(stack):
    from streaminfer.embedded import free_port

    port = str(free_port())  # a port of its own: the shared stack's gateway keeps its own
    gateway = spawn(
        ["gateway", "--workers", "2"],
        dict(stack.env, STREAMINFER_GATEWAY_PORT=port),
        f"gateway-{stack.prefix}-workers2.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ready(url, [gateway])
        supervisor = psutil.Process(gateway.pid)
        deadline = time.monotonic() + 60
        while len(serving := serving_processes(supervisor)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert len(serving) == 2, f"expected two gateway processes, found {serving}"

        # both processes answer: fresh connections land on either; within a few rounds on each
        seen: set[int] = set()
        for _ in range(20):
            limits = httpx.Limits(max_keepalive_connections=16, max_connections=16)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
                replies = await asyncio.gather(*(client.get("/ready") for _ in range(16)))
                assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
                seen |= holders_of_connections(serving, int(port))
            if seen == {p.pid for p in serving}:
                break
            await asyncio.sleep(0.5)  # the second process may still be starting its lifespan
        assert seen == {p.pid for p in serving}, (
            f"only {seen} of {[p.pid for p in serving]} took connections"
        )

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            bodies = await asyncio.gather(
                *(submit(client, f"served by either process {i}") for i in range(8))
            )
            assert all(b["status"] == "succeeded" for b in bodies), bodies
            assert len({b["request_id"] for b in bodies}) == 8
            # a result is readable through whichever process the next connection lands on
            for body in bodies:
                again = await client.get(f"/v1/results/{body['request_id']}")
                assert again.status_code == 200 and again.json()["status"] == "succeeded", (
                    again.text
                )
    finally:
        code = stop(gateway, 30)
    assert code == 0, f"the gateway supervisor exited with {code}"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in serving), (
        "a gateway process outlived its supervisor"
    )


async def test_two_gateway_processes_serve_https(stack, tmp_path):
    """The TLS settings reach each process uvicorn starts: both answer HTTPS with the certificate."""
    import ssl

    from helpers.tls import make_pki

    from streaminfer.embedded import free_port, wait_for_http

    pki = make_pki(tmp_path / "pki")
    port = str(free_port())
    env = dict(
        stack.env,
        STREAMINFER_GATEWAY_PORT=port,
        STREAMINFER_GATEWAY_SSL_CERTFILE=str(pki.server_cert),
        STREAMINFER_GATEWAY_SSL_KEYFILE=str(pki.server_key),
    )
    gateway = spawn(["gateway", "--workers", "2"], env, f"gateway-{stack.prefix}-workers2-tls.log")
    try:
        url = f"https://127.0.0.1:{port}"
        verify = ssl.create_default_context(cafile=str(pki.ca))
        wait_for_http(f"{url}/ready", [gateway], timeout_s=60, verify=verify)
        serving = serving_processes(psutil.Process(gateway.pid))
        deadline = time.monotonic() + 60
        while len(serving) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            serving = serving_processes(psutil.Process(gateway.pid))
        assert len(serving) == 2
        async with httpx.AsyncClient(base_url=url, timeout=60, verify=verify) as client:
            bodies = await asyncio.gather(*(submit(client, f"over HTTPS {i}") for i in range(4)))
        assert all(b["status"] == "succeeded" for b in bodies), bodies
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):  # no plain HTTP
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        assert stop(gateway, 30) == 0
