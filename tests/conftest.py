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
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The built-in repository, built when missing (cached between runs)."""
    from streaminfer.models.builtin import build_all, default_repository

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


def spawn(argv: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
    log = open(_log_dir() / log_name, "ab")  # noqa: SIM115 - closed when the process is reaped
    proc = subprocess.Popen(
        [sys.executable, "-m", "streaminfer", *argv],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    proc._log = log  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> int:
    from streaminfer.embedded import terminate

    code = terminate(proc, timeout_s)
    proc._log.close()  # type: ignore[attr-defined]
    return code


def stack_env(
    bootstrap: str, redis_url: str, prefix: str, repository: Path, **extra: str
) -> dict[str, str]:
    from streaminfer.embedded import free_port

    env = dict(os.environ)
    env.update(
        {
            "STREAMINFER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMINFER_REDIS_URL": redis_url,
            "STREAMINFER_TOPIC_PREFIX": prefix,
            "STREAMINFER_MODEL_REPOSITORY": str(repository),
            "STREAMINFER_AUTH": "disabled",
            "STREAMINFER_GATEWAY_HOST": "127.0.0.1",
            "STREAMINFER_GATEWAY_PORT": str(free_port()),
            "STREAMINFER_WORKER_METRICS_PORT": str(free_port()),
            "STREAMINFER_WORKER_THREADS": "2",
        }
    )
    env.update(extra)
    return env


def wait_http_ready(url: str, procs: list[subprocess.Popen], check_ready: bool = True) -> None:
    """Until /ready answers 200 (or, without ``check_ready``, until /health answers)."""
    from streaminfer.embedded import wait_for_http

    wait_for_http(f"{url}/{'ready' if check_ready else 'health'}", procs)


def wait_worker_ready(metrics_port: str, proc: subprocess.Popen) -> None:
    """The worker serves /metrics once its models are loaded."""
    from streaminfer.embedded import wait_for_http

    wait_for_http(f"http://127.0.0.1:{metrics_port}/metrics", [proc])


class Stack:
    """Workers and a gateway (processes) on a broker and a Redis, under their own topic prefix."""

    def __init__(self, bootstrap: str, redis_url: str, repository: Path, **env: str) -> None:
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.repository = repository
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.env = stack_env(bootstrap, redis_url, self.prefix, repository, **env)
        self.workers: list[subprocess.Popen] = []
        self.metrics_ports: list[int] = []
        self.worker_logs: list[Path] = []
        self.gateways: list[subprocess.Popen] = []
        self.gateway_url = ""

    def add_worker(self, wait: bool = True, **env: str) -> subprocess.Popen:
        from streaminfer.embedded import free_port

        worker_env = dict(self.env, STREAMINFER_WORKER_METRICS_PORT=str(free_port()), **env)
        log_name = f"worker-{self.prefix}-{len(self.workers)}.log"
        worker = spawn(["worker"], worker_env, log_name)
        self.worker_logs.append(_log_dir() / log_name)
        self.workers.append(worker)
        self.metrics_ports.append(int(worker_env["STREAMINFER_WORKER_METRICS_PORT"]))
        if wait:
            wait_worker_ready(worker_env["STREAMINFER_WORKER_METRICS_PORT"], worker)
        return worker

    def add_gateway(self, wait: bool = True, **env: str) -> str:
        from streaminfer.embedded import free_port

        gateway_env = dict(self.env, STREAMINFER_GATEWAY_PORT=str(free_port()), **env)
        gateway = spawn(["gateway"], gateway_env, f"gateway-{self.prefix}-{len(self.gateways)}.log")
        self.gateways.append(gateway)
        url = f"http://127.0.0.1:{gateway_env['STREAMINFER_GATEWAY_PORT']}"
        if wait:
            wait_http_ready(url, [gateway], check_ready=bool(self.workers))
        self.gateway_url = self.gateway_url or url
        return url

    def close(self, timeout_s: float = 15.0) -> None:
        procs = [p for p in self.gateways + self.workers if not p._log.closed]  # type: ignore[attr-defined]
        for (
            proc
        ) in procs:  # all signalled first: they shut down side by side, not one after another
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc._log.close()  # type: ignore[attr-defined]


def serving(kafka_server: str, redis_server: str, model_repository: Path, **env) -> Iterator[Stack]:
    """A stack with one worker and one gateway, closed after: the body of a fixture that shares
    one stack among tests (``yield from serving(...)``)."""
    shared = Stack(kafka_server, redis_server, model_repository, **env)
    try:
        shared.add_worker()
        shared.add_gateway()
        yield shared
    finally:
        shared.close()


@pytest.fixture(scope="session")
def stack(kafka_server: str, redis_server: str, model_repository: Path) -> Iterator[Stack]:
    """The shared stack: one worker (every built-in task) and one gateway."""
    yield from serving(kafka_server, redis_server, model_repository)


@pytest.fixture
def make_stack(kafka_server: str, model_repository: Path):
    """Builds dedicated stacks (for tests that kill, stop or starve their parts); closes them after."""
    made: list[Stack] = []

    def make(bootstrap: str | None = None, redis_url: str | None = None, **env: str) -> Stack:
        built = Stack(bootstrap or kafka_server, redis_url or "", model_repository, **env)
        made.append(built)
        return built

    def close_all() -> None:
        while made:
            made.pop().close()

    make.close_all = close_all  # type: ignore[attr-defined]
    yield make
    close_all()


# NOTE: own_redis and own_kafka take make_stack so that they are set up after it and torn down
# before it, and close its stacks first: workers and gateways stopped while their server is
# still up exit at once instead of waiting out their shutdown on a dead connection (20 s).
@pytest.fixture
def own_redis(make_stack) -> Iterator:
    """A Redis of the test's own (it may stop and restart it)."""
    from streaminfer import embedded

    server = embedded.redis(log_dir=_log_dir()).start()
    try:
        yield server
    finally:
        make_stack.close_all()
        server.stop()


@pytest.fixture
def own_kafka(make_stack) -> Iterator:
    """A broker of the test's own (it may pause it)."""
    from streaminfer import embedded

    server = embedded.tansu(log_dir=_log_dir()).start()
    try:
        yield server
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        make_stack.close_all()
        server.stop()
