"""``streaminfer up``: everything on loopback in one command, stopped together by Ctrl-C or SIGTERM.

Starts the embedded broker and Redis, creates the topics, builds missing models, then runs a worker
and the gateway as child processes of their own (the production shape) and waits."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import embedded
from .connectivity import gateway_url
from .kafka_admin import ensure_contract_topics
from .settings import Settings

EMBEDDED_PLAIN = (
    "STREAMINFER_KAFKA_SECURITY_PROTOCOL",
    "STREAMINFER_KAFKA_SASL_MECHANISM",
    "STREAMINFER_KAFKA_SASL_USERNAME",
    "STREAMINFER_KAFKA_SASL_PASSWORD",
    "STREAMINFER_KAFKA_SSL_CAFILE",
    "STREAMINFER_KAFKA_SSL_CERTFILE",
    "STREAMINFER_KAFKA_SSL_KEYFILE",
    "STREAMINFER_REDIS_SSL_CAFILE",
)


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streaminfer", *argv],
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )


def _stop(procs: list[subprocess.Popen], timeout_s: float = 15.0) -> None:
    for proc in procs:  # all at once: they stop in parallel
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        embedded.terminate(proc, timeout_s)


async def _dev_key(env: dict[str, str]) -> str:
    from redis.asyncio import Redis

    from streaminfer.gateway.apikeys import ApiKeyStore

    redis = Redis.from_url(Settings(redis_url=env["STREAMINFER_REDIS_URL"]).redis_dsn)
    try:
        store = ApiKeyStore(redis, env.get("STREAMINFER_TOPIC_PREFIX", "streaminfer"))
        return await store.create("dev", ["inference:submit", "inference:read"], admin=True)
    finally:
        await redis.aclose()


def run_up(args: argparse.Namespace) -> int:
    stop_requested = False

    def request_stop(signum, _frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    base = Settings()
    repo = Path(base.model_repository)
    from streaminfer.models.config import load_repository_configs

    if not any(c.versions for c in load_repository_configs(repo).values()):
        print(f"building the built-in models into {repo} ...", flush=True)
        from streaminfer.models.builtin import build_all

        build_all(repo)

    servers: list[embedded.EmbeddedServer] = []
    children: list[subprocess.Popen] = []
    try:
        kafka = embedded.tansu(args.kafka_port).start()
        servers.append(kafka)
        redis = embedded.redis(args.redis_port).start()
        servers.append(redis)
        gateway_port = embedded.free_port(args.gateway_port or base.gateway_port)
        env = dict(os.environ)
        env.update(
            {
                "STREAMINFER_KAFKA_BOOTSTRAP_SERVERS": embedded.bootstrap_address(kafka),
                "STREAMINFER_REDIS_URL": embedded.redis_address(redis),
                "STREAMINFER_GATEWAY_HOST": embedded.LOOPBACK,
                "STREAMINFER_GATEWAY_PORT": str(gateway_port),
                "STREAMINFER_AUTH": env.get("STREAMINFER_AUTH", "apikey"),
            }
        )
        # NOTE: the embedded broker and Redis speak plain TCP on loopback; only the gateway's own
        # HTTPS (STREAMINFER_GATEWAY_SSL_*) carries over from the environment.
        for name in EMBEDDED_PLAIN:
            env.pop(name, None)
        if args.tasks:
            env["STREAMINFER_TASKS"] = args.tasks
        settings = Settings(
            kafka_bootstrap_servers=env["STREAMINFER_KAFKA_BOOTSTRAP_SERVERS"],
            **{name.removeprefix("STREAMINFER_").lower(): None for name in EMBEDDED_PLAIN[1:]},
            kafka_security_protocol="PLAINTEXT",
        )
        tasks = (
            args.tasks.split(",")
            if args.tasks
            else sorted(t for t, c in load_repository_configs(repo).items() if c.versions)
        )
        asyncio.run(ensure_contract_topics(settings, tasks))
        for n in range(args.workers):
            worker_env = dict(
                env,
                STREAMINFER_WORKER_METRICS_PORT=str(
                    embedded.free_port(base.worker_metrics_port + n)
                ),
            )
            children.append(_spawn(["worker"], worker_env))
        children.append(_spawn(["gateway"], env))
        url = gateway_url(base, embedded.LOOPBACK, gateway_port)
        # NOTE: our own child on loopback; its certificate may name another host, so the probe does not verify it
        embedded.wait_for_http(
            f"{url}/ready", children, timeout_s=120, verify=not base.gateway_uses_tls
        )
        dev_key = asyncio.run(_dev_key(env)) if "apikey" in env["STREAMINFER_AUTH"] else None
        print(f"gateway:  {url}  (docs: {url}/docs)", flush=True)
        print(f"kafka:    {embedded.bootstrap_address(kafka)}", flush=True)
        print(f"redis:    {embedded.redis_address(redis)}", flush=True)
        auth_header = ""
        if dev_key:
            print(f"api key:  {dev_key}  (client 'dev', admin; shown once)", flush=True)
            auth_header = f"-H 'X-API-Key: {dev_key}' "
        print("try:", flush=True)
        print(
            f"  curl -s -X POST '{url}/v1/infer/text-embedding?wait=5' {auth_header}"
            "-H 'Content-Type: application/json' "
            '-d \'{"inputs": {"text": "Kafka is a distributed log"}}\'',
            flush=True,
        )
        print("Ctrl-C stops everything.", flush=True)
        while not stop_requested:
            for proc in children:
                if proc.poll() is not None:
                    print(
                        f"{' '.join(proc.args[3:])} exited with {proc.returncode}; stopping",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        _stop(children)
        for server in reversed(servers):
            server.stop()
