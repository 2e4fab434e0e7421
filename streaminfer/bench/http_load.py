"""Load through the HTTP gateway: one gateway process, and closed loops of keep-alive clients that
either wait for each result (``http``) or only submit (``gateway submit``: the 202 path)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from .. import embedded
from .figures import NO_CACHE, TASK
from .http_client import HttpConnection, Response, encode_request, post_json

WAIT_S = 30.0
"""How long an ``http`` client asks the gateway to wait for its result."""


@dataclass(frozen=True)
class RunningGateway:
    host: str
    port: int
    pid: int
    """The gateway's process: with ``--workers N``, uvicorn's supervisor of the N serving ones."""
    workers: tuple[int, ...] = ()
    """PIDs of the N serving processes of ``--workers N`` (N > 1); empty for one process."""

    @property
    def serving(self) -> tuple[int, ...]:
        return self.workers or (self.pid,)


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` (all its threads')."""
    return [child.pid for child in psutil.Process(pid).children()]


@contextmanager
def bench_gateway(
    kafka: str, redis_url: str, prefix: str, repository: Path, log_dir: Path, workers: int = 1
) -> Iterator[RunningGateway]:
    """A gateway serving text-embedding under ``prefix`` from ``workers`` processes, without auth,
    lag bound or rate limit (they would refuse the load under test); stopped by PID at exit."""
    port = embedded.free_port()
    env = dict(
        os.environ,
        STREAMINFER_KAFKA_BOOTSTRAP_SERVERS=kafka,
        STREAMINFER_REDIS_URL=redis_url,
        STREAMINFER_TOPIC_PREFIX=prefix,
        STREAMINFER_MODEL_REPOSITORY=str(repository),
        STREAMINFER_TASKS=TASK,
        STREAMINFER_GATEWAY_HOST=embedded.LOOPBACK,
        STREAMINFER_GATEWAY_PORT=str(port),
        STREAMINFER_AUTH="disabled",
        STREAMINFER_MAX_LAG_PER_TASK="0",
        STREAMINFER_LOG_LEVEL="WARNING",
        # NOTE: no rate limiter runs without auth; these only make sure of it
        STREAMINFER_RATE_LIMIT_PER_S="1e9",
        STREAMINFER_RATE_LIMIT_BURST=str(10**9),
    )
    with open(log_dir / f"gateway-{prefix}-{workers}.log", "wb") as log:
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streaminfer",
                "--log-level",
                "WARNING",
                "gateway",
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            embedded.wait_for_http(f"http://{embedded.LOOPBACK}:{port}/health", [gateway])
            serving: tuple[int, ...] = ()
            if workers > 1:
                # uvicorn's supervisor also runs a resource tracker: the serving ones are the
                # children that are gateways, all started before connections are opened
                deadline = time.monotonic() + 60
                while len(serving) < workers and time.monotonic() < deadline:
                    time.sleep(0.2)
                    serving = tuple(c for c in child_pids(gateway.pid) if _is_gateway_worker(c))
                if len(serving) < workers:
                    raise RuntimeError(f"{workers} gateway processes did not start: {serving}")
                time.sleep(2.0)  # their lifespans (Kafka, Redis) start; each answers only then
            yield RunningGateway(embedded.LOOPBACK, port, gateway.pid, serving)
        finally:
            embedded.terminate(gateway, 30)


def _is_gateway_worker(pid: int) -> bool:
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:  # gone already, or not ours to read
        return False
    return not any("resource_tracker" in part for part in cmdline)


def mark_served(redis_url: str, prefix: str, task: str) -> None:
    """Record ``task`` as served under ``prefix``, as a worker's heartbeat would: the submit
    bench runs no worker, and the gateway refuses (503) a task no worker has ever served."""
    from redis import Redis

    from streaminfer.schemas import keys

    with Redis.from_url(redis_url) as redis:
        redis.sadd(keys.served_tasks_key(prefix), task)


def result_succeeded(response: Response) -> bool:
    """200 with a result whose status is succeeded (lower-case in the result JSON, SPEC §8)."""
    if response.status != 200:
        return False
    try:
        return str(json.loads(response.body).get("status", "")).lower() == "succeeded"
    except (ValueError, AttributeError):
        return False


def accepted(response: Response) -> bool:
    return response.status == 202


async def closed_loop(
    gateway: RunningGateway,
    requests: Iterable[bytes],
    connections: int,
    is_success: Callable[[Response], bool],
    progress: tqdm,
    until: float | None = None,
) -> tuple[list[float], int, float]:
    """Send ``requests`` over ``connections`` keep-alive connections, one in flight on each, until
    they run out or ``time.perf_counter()`` passes ``until``. Returns each request's latency
    (response received - request sent), the count of failures, and the elapsed seconds."""
    pending = iter(requests)  # shared: each request goes to whichever connection is free
    latencies: list[float] = []
    failures = 0

    async def client() -> None:
        nonlocal failures
        connection = HttpConnection(gateway.host, gateway.port)
        try:
            for raw in pending:
                if until is not None and time.perf_counter() >= until:
                    break
                sent = time.perf_counter()
                try:
                    ok = is_success(await connection.request(raw))
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    await connection.close()
                    ok = False
                latencies.append(time.perf_counter() - sent)
                failures += not ok
                progress.update()
        finally:
            await connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return latencies, failures, time.perf_counter() - start


def _run(coroutine: Coroutine):
    """``asyncio.run`` on uvloop when installed (uvicorn[standard] brings it): less client CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def measure_http(
    gateway: RunningGateway, texts: list[str], concurrency: int, desc: str
) -> tuple[list[float], int, float]:
    """Closed loop of text-embedding submissions that wait for their result (``?wait=``)."""
    host = f"{gateway.host}:{gateway.port}"
    requests = [
        post_json(
            host,
            f"/v1/infer/{TASK}?wait={WAIT_S:g}",
            {"inputs": {"text": t}, "parameters": NO_CACHE},
        )
        for t in texts
    ]
    with tqdm(total=len(requests), desc=desc, unit="req", leave=False) as progress:
        return _run(closed_loop(gateway, requests, concurrency, result_succeeded, progress))


def measure_submit(
    gateway: RunningGateway, texts: list[str], connections: int, seconds: float, desc: str
) -> tuple[list[float], int, float]:
    """Closed loop of submissions without waiting (202), for ``seconds``."""
    host = f"{gateway.host}:{gateway.port}"
    requests = [
        post_json(host, f"/v1/infer/{TASK}", {"inputs": {"text": t}, "parameters": NO_CACHE})
        for t in texts
    ]
    return _for_seconds(gateway, requests, connections, seconds, accepted, desc)


def measure_floor(
    gateway: RunningGateway, connections: int, seconds: float
) -> tuple[list[float], int, float]:
    """The same closed loop on ``GET /health`` (no body, no Redis, no Kafka): what the HTTP stack
    alone allows this process, the baseline the submit path is compared with."""
    request = encode_request("GET", f"{gateway.host}:{gateway.port}", "/health")
    return _for_seconds(
        gateway, [request], connections, seconds, lambda r: r.status == 200, "GET /health"
    )


def _for_seconds(
    gateway: RunningGateway,
    requests: list[bytes],
    connections: int,
    seconds: float,
    is_success: Callable[[Response], bool],
    desc: str,
) -> tuple[list[float], int, float]:
    with tqdm(desc=desc, unit="req", leave=False) as progress:
        until = time.perf_counter() + seconds
        return _run(
            closed_loop(
                gateway, itertools.cycle(requests), connections, is_success, progress, until
            )
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads; not its children's)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each named process, and this one ("load generator"), uses inside the block."""
    used: dict[str, float] = {}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own = time.process_time()
    yield used
    used.update({name: round(cpu_seconds(pid) - before[name], 2) for name, pid in pids.items()})
    used["load generator"] = round(time.process_time() - own, 2)


def submit_summary(
    latencies: list[float], failures: int, seconds: float, connections: int, cpu: dict[str, float]
) -> dict:
    ms = np.asarray(latencies) * 1000.0
    return {
        "connections": connections,
        "seconds": round(seconds, 3),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
        "max_ms": round(float(ms.max()), 2),
        "non_202": failures,
        "cpu_seconds": cpu,
        "cpu_percent_of_a_core": {
            name: round(100 * used / seconds, 1) for name, used in cpu.items()
        },
    }
