"""A gateway app wired to an in-memory producer and result store (no broker, no Redis), over a
repository holding one tiny task described by a model.yaml."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from streaminfer.gateway.app import create_app
from streaminfer.gateway.results import IdempotencyClaim
from streaminfer.gateway.service import InferenceService
from streaminfer.schemas.records import InferenceResult
from streaminfer.settings import Settings

TASK_YAML = {
    "task": "tiny",
    "name": "tiny-model",
    "backend": "onnxruntime",
    "max_batch_size": 4,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [3]}],
}


class MemoryProducer:
    def __init__(self) -> None:
        self.sent = []
        self.reachable = True

    async def is_reachable(self):
        return self.reachable

    async def submit(self, request, accepted):
        self.sent.append((request, accepted))


class MemoryStore:
    def __init__(self) -> None:
        self.results: dict[str, InferenceResult] = {}
        self.statuses: dict[str, dict] = {}
        self.cancelled: set[str] = set()
        self.claims: dict = {}
        self.workers = {"w1": ["tiny"]}
        self.served: set[str] = set()

    async def ping(self):
        return True

    async def live_workers(self):
        return dict(self.workers)

    async def served_tasks(self, seen=()):
        self.served.update(seen)
        return set(self.served)

    async def claim_idempotency(self, client_id, key, request_id, digest):
        bound = self.claims.setdefault((client_id, key), [request_id, digest, False])
        return IdempotencyClaim(bound[0], same_body=bound[1] == digest, published=bound[2])

    async def confirm_idempotency(self, client_id, key, request_id, digest):
        self.claims[(client_id, key)][2] = True

    async def mark_queued(self, request_id, task, client_id):
        self.statuses.setdefault(request_id, {"status": "queued", "task": task})

    async def status(self, request_id):
        return self.statuses.get(request_id, {})

    async def result(self, request_id):
        return self.results.get(request_id)

    async def wait(self, request_id, timeout_s):
        deadline = asyncio.get_running_loop().time() + timeout_s
        while request_id not in self.results and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self.results.get(request_id)

    async def cancel(self, request_id):
        self.cancelled.add(request_id)

    async def delete(self, request_id):
        self.results.pop(request_id, None)
        return 1

    async def recent_latencies(self, task, priority, since_ms):
        return []


@pytest.fixture
def repository(tmp_path) -> Path:
    task_dir = tmp_path / "tiny"
    (task_dir / "1").mkdir(parents=True)
    (task_dir / "1" / "model.onnx").write_bytes(b"not needed by the gateway")
    (task_dir / "model.yaml").write_text(yaml.safe_dump(TASK_YAML))
    return tmp_path


@pytest.fixture
def make_gateway(repository):
    """A gateway app over ``store`` and ``producer`` (in-memory ones by default), unstarted."""

    def make(store=None, producer=None, **settings) -> TestClient:
        settings = {"auth": "disabled", "max_body_bytes": 4096, **settings}
        app = create_app(Settings(model_repository=repository, **settings))
        producer, store = producer or MemoryProducer(), store or MemoryStore()
        app.state.service = InferenceService(producer, store, repository, "unit", max_wait_s=2)
        client = TestClient(
            app, raise_server_exceptions=False
        )  # no lifespan: nothing to connect to
        client.producer, client.store = producer, store
        return client

    return make


@pytest.fixture
def gateway(make_gateway):
    return make_gateway()


BUILTIN_TASKS = ("image-classify", "tabular-classify", "text-embedding")


@pytest.fixture
def builtin_gateway(tmp_path):
    """A gateway (in-memory producer and store, auth disabled) over the built-in tasks' model.yaml
    templates, each with a version directory holding placeholder files: the gateway reads only
    the yaml, so nothing needs building."""
    templates = Path(__file__).resolve().parents[3] / "models" / "builtin" / "templates"
    for task in BUILTIN_TASKS:
        raw = yaml.safe_load((templates / f"{task}.yaml").read_text())
        version = tmp_path / task / "1"
        version.mkdir(parents=True)
        (tmp_path / task / "model.yaml").write_text(yaml.safe_dump(raw))
        for name in (raw["artifact"], (raw.get("preprocess") or {}).get("tokenizer")):
            if name:
                (version / name).write_bytes(b"placeholder")
    app = create_app(Settings(model_repository=tmp_path, auth="disabled", max_body_bytes=1 << 20))
    store = MemoryStore()
    store.workers = {"w1": list(BUILTIN_TASKS)}
    producer = MemoryProducer()
    app.state.service = InferenceService(producer, store, tmp_path, "unit", max_wait_s=2)
    client = TestClient(app, raise_server_exceptions=False)
    client.producer, client.store = producer, store
    return client
