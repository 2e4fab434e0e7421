"""A Tansu broker and a redis-server behind TLS proxies (tests/helpers/tls_proxy.py): the broker
listens on one plain port and advertises the proxy's, so every client connection after bootstrap
goes through TLS too."""

from __future__ import annotations

import subprocess
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

from helpers.tls import Pki
from helpers.tls_proxy import TlsProxy
from streaminfer import embedded

REDIS_USER, REDIS_PASSWORD = "streaminfer", "s3cret-redis"


@contextmanager
def tls_kafka(pki: Pki, log_dir: Path, *, mutual: bool = False):
    """Yields the TLS bootstrap address ``127.0.0.1:<proxy port>`` and the proxy."""
    proxy_port = embedded.free_port()
    broker_port = embedded.free_port()
    server = embedded.EmbeddedServer(
        name="kafka (tansu) behind TLS",
        argv=[
            embedded.tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy_port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        host="127.0.0.1",
        port=broker_port,
        log_path=log_dir / f"tansu-tls-{proxy_port}.log",
    )
    with ExitStack() as stack:
        stack.enter_context(server)
        proxy = stack.enter_context(
            TlsProxy(
                broker_port,
                pki.server_cert,
                pki.server_key,
                port=proxy_port,
                client_ca=pki.ca if mutual else None,
            )
        )
        yield f"127.0.0.1:{proxy.port}", proxy


@contextmanager
def tls_redis(pki: Pki, log_dir: Path):
    """Yields ``rediss://user:password@127.0.0.1:<proxy port>/0``: ACL user, the default user off."""
    port = embedded.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="streaminfer-redis-tls-"))
    server = embedded.EmbeddedServer(
        name="redis behind TLS",
        argv=[
            embedded.redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--user",
            "default",
            "off",
            "--user",
            REDIS_USER,
            "on",
            f">{REDIS_PASSWORD}",
            "~*",
            "&*",
            "+@all",
        ],
        host="127.0.0.1",
        port=port,
        log_path=log_dir / f"redis-tls-{port}.log",
        workdir=workdir,
    )
    with server, TlsProxy(port, pki.server_cert, pki.server_key) as proxy:
        yield f"rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{proxy.port}/0"


def run_cli(
    argv: list[str], env: dict[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "streaminfer", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
