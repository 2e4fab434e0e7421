"""`streaminfer up` starts everything, serves a request and leaves no process behind."""

from __future__ import annotations

import os
import signal
import sys

import httpx
import psutil
import pytest
from helpers.up import start_up

pytestmark = pytest.mark.integration


def test_up_serves_and_stops_cleanly(model_repository, tmp_path):
    env = dict(
        os.environ,
        STREAMINFER_MODEL_REPOSITORY=str(model_repository),
        STREAMINFER_TOPIC_PREFIX="uptest",
        STREAMINFER_WORKER_THREADS="2",
    )
    log = open(tmp_path / "up.log", "w+")  # noqa: SIM115
    up = start_up(
        [
            sys.executable,
            "-m",
            "streaminfer",
            "up",
            "--kafka-port",
            "0",
            "--redis-port",
            "0",
            "--tasks",
            "text-embedding",
        ],
        env,
        log,
    )
    proc, url, key, lines = up.proc, up.url, up.key, up.lines
    descendants: list[psutil.Process] = []
    try:
        assert url, f"no gateway line in {lines!r}"
        assert any(line.startswith("kafka:") for line in lines) and any(
            line.startswith("redis:") for line in lines
        )
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 4  # broker, redis, worker, gateway
        assert key, "up prints a dev API key"
        refused = httpx.post(
            f"{url}/v1/infer/text-embedding", json={"inputs": {"text": "no key"}}, timeout=30
        )
        assert refused.status_code == 401
        response = httpx.post(
            f"{url}/v1/infer/text-embedding",
            params={"wait": 30},
            headers={"X-API-Key": key},
            json={"inputs": {"text": "hello from up"}},
            timeout=60,
        )
        assert response.status_code == 200 and response.json()["status"] == "succeeded"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for child in alive:
        child.kill()
    assert not alive, f"left behind: {[p.pid for p in alive]}"
