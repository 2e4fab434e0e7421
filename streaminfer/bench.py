"""``streaminfer bench``: text-embedding through Kafka with batching on and off, beside the raw
ONNX Runtime model at the same batch sizes, in one run; prints throughput and latency percentiles
and writes them as JSON.

Kafka mode is what an upstream producer sees: Avro requests written straight to the request topic
by a closed loop holding ``--concurrency`` requests in flight, results read from the results topic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from tqdm import tqdm

from schemas import topics
from schemas.codec import AvroCodec
from schemas.records import InferenceRequest, InferenceResult, Priority, Tensor

from . import embedded
from .kafka_admin import ensure_contract_topics
from .settings import Settings

TASK = "text-embedding"
WORDS = ("stream", "kafka", "model", "batch", "latency", "gateway", "worker", "vector", "search",
         "result", "cluster", "partition", "offset", "schema", "tensor", "inference")


@dataclass
class Figures:
    scenario: str
    max_batch_size: int
    items: int
    seconds: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_batch: float | None = None


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 24)))) + f" #{i}" for i in range(n)]


def figures(scenario: str, batch: int, latencies_s: list[float], seconds: float, items: int,
            mean_batch: float | None = None) -> Figures:
    ms = np.asarray(latencies_s) * 1000.0
    return Figures(scenario, batch, items, round(seconds, 3), round(items / seconds, 1),
                   *(round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)), round(float(ms.max()), 2),
                   None if mean_batch is None else round(mean_batch, 2))


def bench_raw(repository: Path, texts: list[str], batch: int, threads: int | None) -> Figures:
    """The model alone: consecutive batches of ``batch`` texts; latency = one batch's compute."""
    from models.repository import ModelRepository

    model = ModelRepository(repository, device="cpu", intra_op_num_threads=threads).load(TASK)
    latencies = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(texts), batch), desc=f"raw onnxruntime batch={batch}", unit="batch", leave=False):
        t0 = time.perf_counter()
        model.predict_batch({"text": np.array(texts[i:i + batch], dtype=object)})
        latencies.append(time.perf_counter() - t0)
    return figures(f"raw onnxruntime (batch {batch})", batch, latencies, time.perf_counter() - start, len(texts))


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


async def drive_kafka(bootstrap: str, prefix: str, texts: list[str], concurrency: int, desc: str
                      ) -> tuple[list[float], float, list[int]]:
    codec = AvroCodec()
    results_topic = topics.results_topic(prefix, TASK)
    consumer = AIOKafkaConsumer(results_topic, bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=10, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    latencies: list[float] = []
    batch_sizes: list[int] = []
    window = asyncio.Semaphore(concurrency)
    done = asyncio.Event()
    progress = tqdm(total=len(texts), desc=desc, unit="req", leave=False)

    async def receive():
        while len(latencies) < len(texts):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for message in records:
                    rid = message.key.decode()
                    if rid in sent:
                        result = codec.decode(message.value, InferenceResult)
                        latencies.append(time.perf_counter() - sent.pop(rid))
                        batch_sizes.append(result.batch_size)
                        window.release()
                        progress.update()
        done.set()

    receiver = asyncio.create_task(receive())
    start = time.perf_counter()
    try:
        for text in texts:
            await window.acquire()
            request = InferenceRequest(request_id=str(uuid.uuid4()), task=TASK, priority=Priority.NORMAL,
                                       inputs=[Tensor.from_numpy("text", np.array([text], dtype=object))])
            sent[request.request_id] = time.perf_counter()
            await producer.send(topics.request_topic(prefix, TASK, Priority.NORMAL), codec.encode(request),
                                key=request.request_id.encode())
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - start
    finally:
        receiver.cancel()
        progress.close()
        await producer.stop()
        await consumer.stop()
    return latencies, elapsed, batch_sizes


def bench_kafka(kafka: str, redis_url: str, repository: Path, texts: list[str], max_batch_size: int,
                concurrency: int, threads: int | None, log_dir: Path) -> Figures:
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
                _wait_metrics(metrics_port, worker)
                asyncio.run(drive_kafka(kafka, prefix, texts[:50], concurrency, "warm-up"))
                latencies, seconds, sizes = asyncio.run(
                    drive_kafka(kafka, prefix, texts, concurrency, f"kafka max_batch_size={max_batch_size}"))
            finally:
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    name = f"kafka, batching {'on' if max_batch_size > 1 else 'off'} (max {max_batch_size})"
    return figures(name, max_batch_size, latencies, seconds, len(texts), float(np.mean(sizes)))


def _wait_metrics(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench worker exited with {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("bench worker did not start")


def table(rows: list[Figures]) -> str:
    head = "| scenario | items | items/s | p50 ms | p95 ms | p99 ms | max ms | mean batch |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.items} | {r.throughput:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {r.max_ms:.1f} | {'' if r.mean_batch is None else r.mean_batch} |")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    settings = Settings()
    repository = Path(settings.model_repository)
    from models.builtin import build_all

    build_all(repository, tasks=[TASK])
    max_batch = args.batch_size or yaml.safe_load((repository / TASK / "model.yaml").read_text())["max_batch_size"]
    texts = corpus(args.requests)
    threads = settings.worker_threads or os.cpu_count()
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [bench_raw(repository, texts, max_batch, threads), bench_raw(repository, texts, 1, threads)]
    with embedded.tansu(log_dir=out_dir) as kafka, embedded.redis(log_dir=out_dir) as redis:
        for batch in (max_batch, 1):
            rows.append(bench_kafka(embedded.bootstrap_address(kafka), embedded.redis_address(redis), repository,
                                    texts, batch, args.concurrency, threads, out_dir))
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "requests": args.requests, "concurrency": args.concurrency, "rows": [asdict(r) for r in rows]}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    print(table(rows))
    raw, kafka_on = rows[0], rows[2]
    print(f"\nkafka batching on / raw onnxruntime at batch {max_batch}: "
          f"{kafka_on.throughput / raw.throughput:.0%} of raw throughput; "
          f"batching on vs off: {kafka_on.throughput / rows[3].throughput:.1f}x")
    print(f"JSON: {out_dir / 'bench.json'}")
    shutil.rmtree(out_dir / "tmp", ignore_errors=True)
    return 0
