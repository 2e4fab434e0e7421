"""Processes a bench run measures: a worker serving text-embedding with a given batch size."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from .. import embedded
from ..kafka_admin import ensure_contract_topics
from ..settings import Settings
from .figures import TASK


def bench_repository(source: Path, target: Path, max_batch_size: int) -> Path:
    """A repository holding only text-embedding, with ``max_batch_size`` overridden."""
    task_dir = target / TASK
    task_dir.mkdir(parents=True)
    config = yaml.safe_load((source / TASK / "model.yaml").read_text())
    config["max_batch_size"] = max_batch_size
    (task_dir / "model.yaml").write_text(yaml.safe_dump(config))
    for entry in (source / TASK).iterdir():
        if entry.is_dir():
            (task_dir / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    return target


@contextmanager
def bench_worker(kafka: str, redis_url: str, repository: Path, max_batch_size: int, threads: int | None,
                 log_dir: Path) -> Iterator[str]:
    """A worker process serving text-embedding with ``max_batch_size``; yields its topic prefix."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = bench_repository(repository, Path(tmp) / "repo", max_batch_size)
        metrics_port = embedded.free_port()
        env = dict(os.environ, STREAMINFER_KAFKA_BOOTSTRAP_SERVERS=kafka, STREAMINFER_REDIS_URL=redis_url,
                   STREAMINFER_TOPIC_PREFIX=prefix, STREAMINFER_MODEL_REPOSITORY=str(repo),
                   STREAMINFER_WORKER_METRICS_PORT=str(metrics_port), STREAMINFER_LOG_LEVEL="WARNING")
        if threads:
            env["STREAMINFER_WORKER_THREADS"] = str(threads)
        settings = Settings(kafka_bootstrap_servers=kafka, topic_prefix=prefix)
        asyncio.run(ensure_contract_topics(settings, [TASK]))
        with open(log_dir / f"worker-{prefix}.log", "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "streaminfer", "--log-level", "WARNING", "worker"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                embedded.wait_for_http(f"http://127.0.0.1:{metrics_port}/metrics", [worker])
                yield prefix
            finally:
                embedded.terminate(worker, 30)
