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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

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
NO_CACHE = {"cache": "false"}  # measure the model path, not the content cache
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
    """The model alone, configured as a worker runs it: consecutive batches of ``batch`` texts,
    ``instances`` of them computing at once (model.yaml); latency = one batch's compute."""
    from models.repository import ModelRepository

    repo = ModelRepository(repository, device="cpu", intra_op_num_threads=threads)
    instances = repo.get_config(TASK).instances
    model = repo.load(TASK)
    progress = tqdm(total=len(texts), desc=f"raw onnxruntime batch={batch}", unit="item", leave=False)

    def one(i: int) -> float:
        t0 = time.perf_counter()
        model.predict_batch({"text": np.array(texts[i:i + batch], dtype=object)})
        progress.update(len(texts[i:i + batch]))
        return time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(instances) as pool:
        latencies = list(pool.map(one, range(0, len(texts), batch)))
    seconds = time.perf_counter() - start
    progress.close()
    return figures(f"raw onnxruntime (batch {batch})", batch, latencies, seconds, len(texts))


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
                                auto_offset_reset="earliest", fetch_max_wait_ms=Settings().kafka_fetch_max_wait_ms, enable_auto_commit=False)
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
                                       inputs=[Tensor.from_numpy("text", np.array([text], dtype=object))],
                                       parameters=NO_CACHE)
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


def bench_kafka(kafka: str, redis_url: str, repository: Path, texts: list[str], max_batch_size: int,
                concurrency: int, threads: int | None, log_dir: Path) -> Figures:
    with bench_worker(kafka, redis_url, repository, max_batch_size, threads, log_dir) as prefix:
        asyncio.run(drive_kafka(kafka, prefix, texts[:50], concurrency, "warm-up"))
        latencies, seconds, sizes = asyncio.run(
            drive_kafka(kafka, prefix, texts, concurrency, f"kafka max_batch_size={max_batch_size}"))
    name = f"kafka, batching {'on' if max_batch_size > 1 else 'off'} (max {max_batch_size})"
    return figures(name, max_batch_size, latencies, seconds, len(texts), float(np.mean(sizes)))


async def drive_priority_burst(bootstrap: str, prefix: str, texts: list[str], mix: tuple[float, float, float],
                               seed: int = 1) -> dict[str, list[float]]:
    """Write every request at once (a backlog: saturation), priorities drawn by ``mix``
    (high, normal, low); return each priority's queueing times (created -> batch start), ms."""
    codec = AvroCodec()
    rng = np.random.default_rng(seed)
    levels = [Priority.HIGH, Priority.NORMAL, Priority.LOW]
    drawn = rng.choice(3, size=len(texts), p=list(mix))
    priority_of: dict[str, str] = {}
    consumer = AIOKafkaConsumer(topics.results_topic(prefix, TASK), bootstrap_servers=bootstrap,
                                group_id=f"bench-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                                fetch_max_wait_ms=Settings().kafka_fetch_max_wait_ms, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    queued: dict[str, list[float]] = {p.topic_suffix: [] for p in levels}
    try:
        futures = []
        for text, level in zip(texts, drawn, strict=True):
            priority = levels[level]
            request = InferenceRequest(request_id=str(uuid.uuid4()), task=TASK, priority=priority,
                                       inputs=[Tensor.from_numpy("text", np.array([text], dtype=object))],
                                       parameters=NO_CACHE)
            priority_of[request.request_id] = priority.topic_suffix
            futures.append(await producer.send(topics.request_topic(prefix, TASK, priority), codec.encode(request),
                                               key=request.request_id.encode()))
        await asyncio.gather(*futures)
        with tqdm(total=len(texts), desc="priority burst", unit="req", leave=False) as progress:
            seen = 0
            while seen < len(texts):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for message in records:
                        level = priority_of.pop(message.key.decode(), None)
                        if level is not None:
                            queued[level].append(codec.decode(message.value, InferenceResult).timings.queued_ms)
                            seen += 1
                            progress.update()
    finally:
        await producer.stop()
        await consumer.stop()
    return queued


def table(rows: list[Figures]) -> str:
    head = "| scenario | items | items/s | p50 ms | p95 ms | p99 ms | max ms | mean batch |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.items} | {r.throughput:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {r.max_ms:.1f} | {'' if r.mean_batch is None else r.mean_batch} |")
    return "\n".join(lines)


def bench_priority(kafka: str, redis_url: str, repository: Path, texts: list[str], max_batch_size: int,
                   threads: int | None, log_dir: Path) -> dict:
    with bench_worker(kafka, redis_url, repository, max_batch_size, threads, log_dir) as prefix:
        asyncio.run(drive_kafka(kafka, prefix, texts[:50], 64, "warm-up"))
        queued = asyncio.run(drive_priority_burst(kafka, prefix, texts, (0.1, 0.8, 0.1)))
    summary = {level: {"n": len(ms), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}}
               for level, ms in queued.items() if ms}
    summary["high_p95_over_low_p95"] = round(summary["high"]["p95_ms"] / max(summary["low"]["p95_ms"], 1e-9), 3)
    return summary


def run_bench(args: argparse.Namespace) -> int:
    settings = Settings()
    repository = Path(settings.model_repository)
    from models.builtin import build_all

    build_all(repository, tasks=[TASK])
    max_batch = args.batch_size or yaml.safe_load((repository / TASK / "model.yaml").read_text())["max_batch_size"]
    texts = corpus(args.requests)
    threads = settings.worker_threads
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version()},
                    "requests": args.requests, "concurrency": args.concurrency}
    rows: list[Figures] = []
    if args.scenario in ("batching", "all"):
        rows = [bench_raw(repository, texts, max_batch, threads), bench_raw(repository, texts, 1, threads)]
    with embedded.tansu(log_dir=out_dir) as kafka, embedded.redis(log_dir=out_dir) as redis:
        bootstrap, redis_url = embedded.bootstrap_address(kafka), embedded.redis_address(redis)
        if args.scenario in ("batching", "all"):
            for batch in (max_batch, 1):
                rows.append(bench_kafka(bootstrap, redis_url, repository, texts, batch, args.concurrency,
                                        threads, out_dir))
        if args.scenario in ("priority", "all"):
            report["priority"] = bench_priority(bootstrap, redis_url, repository, texts, max_batch, threads, out_dir)
    report["rows"] = [asdict(r) for r in rows]
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    if rows:
        print(table(rows))
        raw, kafka_on = rows[0], rows[2]
        print(f"\nkafka batching on / raw onnxruntime at batch {max_batch}: "
              f"{kafka_on.throughput / raw.throughput:.0%} of raw throughput; "
              f"batching on vs off: {kafka_on.throughput / rows[3].throughput:.1f}x")
    if "priority" in report:
        print("\nqueueing at saturation, 10/80/10 high/normal/low (ms):")
        for level in ("high", "normal", "low"):
            figures_ = report["priority"][level]
            print(f"  {level:<7} n={figures_['n']:<5} p50 {figures_['p50_ms']:>8.1f}  p95 {figures_['p95_ms']:>8.1f}"
                  f"  p99 {figures_['p99_ms']:>8.1f}")
        print(f"  high p95 / low p95 = {report['priority']['high_p95_over_low_p95']}")
    print(f"JSON: {out_dir / 'bench.json'}")
    shutil.rmtree(out_dir / "tmp", ignore_errors=True)
    return 0
