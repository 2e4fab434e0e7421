"""Processes a bench run measures: workers serving text-embedding with a given batch size."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import yaml

from streaminfer.schemas import keys

from .. import embedded
from ..kafka_admin import ensure_contract_topics
from ..settings import Settings
from .figures import TASK


def bench_repository(
    source: Path, target: Path, max_batch_size: int, instances: int | None = None
) -> Path:
    """A repository holding only text-embedding, with ``max_batch_size`` (and ``instances``, the
    batches computing at once) overridden."""
    task_dir = target / TASK
    task_dir.mkdir(parents=True)
    config = yaml.safe_load((source / TASK / "model.yaml").read_text())
    config["max_batch_size"] = max_batch_size
    if instances:
        config["instances"] = instances
    (task_dir / "model.yaml").write_text(yaml.safe_dump(config))
    for entry in (source / TASK).iterdir():
        if entry.is_dir():
            (task_dir / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    return target


@dataclass(frozen=True)
class Workers:
    prefix: str
    """The topic prefix they serve."""
    pids: tuple[int, ...]


@contextmanager
def bench_worker(
    kafka: str,
    redis_url: str,
    repository: Path,
    max_batch_size: int,
    threads: int | None,
    log_dir: Path,
    *,
    workers: int = 1,
    partitions: int | None = None,
    instances: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Workers]:
    """``workers`` worker processes in one consumer group, serving text-embedding with
    ``max_batch_size`` on a topic prefix of their own, created with ``partitions`` per topic
    (default: the setting), with ``env`` added to their environment (e.g.
    ``STREAMINFER_WORKER_SCHEDULING``); yields them once every worker holds partitions."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    extra_env = dict(env or {})
    settings = Settings(
        kafka_bootstrap_servers=kafka,
        topic_prefix=prefix,
        **({"topic_partitions": partitions} if partitions else {}),
    )
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        repo = bench_repository(repository, Path(tmp) / "repo", max_batch_size, instances)
        env = dict(
            os.environ,
            STREAMINFER_KAFKA_BOOTSTRAP_SERVERS=kafka,
            STREAMINFER_REDIS_URL=redis_url,
            STREAMINFER_TOPIC_PREFIX=prefix,
            STREAMINFER_MODEL_REPOSITORY=str(repo),
            STREAMINFER_TOPIC_PARTITIONS=str(settings.topic_partitions),
            STREAMINFER_LOG_LEVEL="WARNING",
        )
        if threads:
            env["STREAMINFER_WORKER_THREADS"] = str(threads)
        env.update(extra_env)
        asyncio.run(ensure_contract_topics(settings, [TASK]))
        procs: list[subprocess.Popen] = []
        metrics_urls = []
        for n in range(workers):
            metrics_port = embedded.free_port()
            log = stack.enter_context(open(log_dir / f"worker-{prefix}-{n}.log", "wb"))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "streaminfer", "--log-level", "WARNING", "worker"],
                    env=dict(env, STREAMINFER_WORKER_METRICS_PORT=str(metrics_port)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            stack.callback(embedded.terminate, procs[-1], 30)
            metrics_urls.append(f"http://127.0.0.1:{metrics_port}/metrics")
        for url in metrics_urls:
            embedded.wait_for_http(url, procs)
        wait_until_consuming(redis_url, prefix, workers, procs)
        yield Workers(prefix, tuple(proc.pid for proc in procs))


def wait_until_consuming(
    redis_url: str,
    prefix: str,
    workers: int,
    procs: list[subprocess.Popen],
    timeout_s: float = 120.0,
) -> None:
    """Until ``workers`` workers have a heartbeat in Redis, which they write only while they hold
    partitions: a run started earlier would see the group rebalance under it."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while sum(1 for _ in client.scan_iter(match=keys.worker_key(prefix, "*"))) < workers:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"a bench worker exited with {proc.returncode} before consuming"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{workers} workers on {prefix} did not all consume within {timeout_s}s"
                )
            time.sleep(0.2)
    finally:
        client.close()
