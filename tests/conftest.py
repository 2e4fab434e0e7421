"""Fixtures shared by every test: the built model repository (built once when missing and kept
between runs), and for integration tests a real Tansu broker, a real redis-server, a worker
process and a gateway process, all on loopback and stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The built-in repository, built when missing (cached between runs)."""
    from models.builtin import build_all, default_repository

    repo = Path(os.environ.get("STREAMINFER_TEST_MODEL_REPOSITORY") or default_repository())
    build_all(repo)
    return repo


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[str]:
    from streaminfer import embedded

    with embedded.tansu(log_dir=_log_dir()) as server:
        yield embedded.bootstrap_address(server)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    from streaminfer import embedded

    with embedded.redis(log_dir=_log_dir()) as server:
        yield embedded.redis_address(server)


def _log_dir() -> Path:
    path = ROOT / "var" / "test-logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Stack:
    """A running worker and gateway on the session's broker and Redis."""

    bootstrap: str
    redis_url: str
    prefix: str
    gateway_url: str
    env: dict[str, str]
    repository: Path
    worker: subprocess.Popen
    gateway: subprocess.Popen


def spawn(argv: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
    log = open(_log_dir() / log_name, "ab")  # noqa: SIM115 - closed when the process is reaped
    proc = subprocess.Popen([sys.executable, "-m", "streaminfer", *argv], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    proc._log = log  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc._log.close()  # type: ignore[attr-defined]
    return proc.returncode


def stack_env(bootstrap: str, redis_url: str, prefix: str, repository: Path, **extra: str) -> dict[str, str]:
    from streaminfer.embedded import free_port

    env = dict(os.environ)
    env.update({
        "STREAMINFER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMINFER_REDIS_URL": redis_url,
        "STREAMINFER_TOPIC_PREFIX": prefix,
        "STREAMINFER_MODEL_REPOSITORY": str(repository),
        "STREAMINFER_AUTH": "disabled",
        "STREAMINFER_GATEWAY_HOST": "127.0.0.1",
        "STREAMINFER_GATEWAY_PORT": str(free_port()),
        "STREAMINFER_WORKER_METRICS_PORT": str(free_port()),
        "STREAMINFER_WORKER_THREADS": "2",
    })
    env.update(extra)
    return env


def wait_http_ready(url: str, procs: list[subprocess.Popen], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode} during start-up"
        try:
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready in {timeout_s}s")


def wait_worker_ready(metrics_port: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """The worker serves /metrics once its models are loaded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode} during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready in {timeout_s}s")


@pytest.fixture(scope="session")
def stack(kafka_server: str, redis_server: str, model_repository: Path) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = stack_env(kafka_server, redis_server, prefix, model_repository)
    worker = spawn(["worker"], env, f"worker-{prefix}.log")
    gateway = None
    try:
        wait_worker_ready(env["STREAMINFER_WORKER_METRICS_PORT"], worker)
        gateway = spawn(["gateway"], env, f"gateway-{prefix}.log")
        url = f"http://127.0.0.1:{env['STREAMINFER_GATEWAY_PORT']}"
        wait_http_ready(url, [worker, gateway])
        yield Stack(kafka_server, redis_server, prefix, url, env, model_repository, worker, gateway)
    finally:
        if gateway is not None:
            stop(gateway)
        stop(worker)
