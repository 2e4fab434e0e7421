"""The transport floor (the Kafka round trip with no model), one batch-1 compute of the real model,
and the ``light`` scenario: p50 end to end at ~5 % of saturation against floor + compute.

The floor's worker serves a text-embedding task whose model does nothing: a three-node ONNX
graph with the task's signature (``text`` BYTES ``[N]`` -> ``embedding`` FP32 ``[N, 384]``, all
zeros; no tokenizer), built in a temporary directory, never in the real repository. Everything
else (Avro, the request and results topics, intake, Redis writes, audit events, the downstream
consumer) is the same round trip the real model's requests make.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from .figures import TASK
from .kafka_load import drive_kafka, drive_open_loop
from .raw import bench_raw
from .stack import bench_worker

LIGHT_FRACTION = 0.05
LIGHT_SLACK_MS = 5.0
FLOOR_RATE_PER_S = 20.0
EMBEDDING_WIDTH = 384


def no_model_onnx() -> bytes:
    """An ONNX graph with text-embedding's signature that returns zeros: Shape -> Concat -> ConstantOfShape."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["text"], ["n"]),
            helper.make_node("Concat", ["n", "width"], ["shape"], axis=0),
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["embedding"],
                value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
            ),
        ],
        "no-model",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_WIDTH])],
        [helper.make_tensor("width", TensorProto.INT64, [1], [EMBEDDING_WIDTH])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def floor_repository(source: Path, target: Path) -> Path:
    """A repository at ``target`` whose text-embedding is ``source``'s model.yaml (batching,
    instances, delay) with the tokenizer dropped and ``no_model_onnx`` as version 1."""
    config = yaml.safe_load((source / TASK / "model.yaml").read_text())
    config.pop("preprocess", None)
    config.update(
        name="no-model",
        artifact="model.onnx",
        warmup=True,
        description="transport floor: returns zeros, computes nothing",
    )
    version = target / TASK / "1"
    version.mkdir(parents=True)
    (target / TASK / "model.yaml").write_text(yaml.safe_dump(config))
    (version / "model.onnx").write_bytes(no_model_onnx())
    return target


def percentiles_ms(latencies_s: list[float]) -> dict:
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "n": int(ms.size),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
    }


def bench_compute(repository: Path, texts: list[str], threads: int | None) -> dict:
    """One batch-1 compute of the real model as a worker runs it (``bench_raw`` at batch 1)."""
    raw = bench_raw(repository, texts, 1, threads)
    return {
        "n": raw.items,
        "p50_ms": raw.p50_ms,
        "p95_ms": raw.p95_ms,
        "p99_ms": raw.p99_ms,
        "items_per_s": raw.throughput,
    }


def bench_floor(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    max_batch_size: int,
    threads: int | None,
    out_dir: Path,
    seconds: float = 10.0,
    rate_per_s: float = FLOOR_RATE_PER_S,
) -> dict:
    """The Kafka round trip with no model: open loop at ``rate_per_s`` for ``seconds`` on a worker
    serving ``floor_repository``; latency from each request's scheduled send to the consumer."""
    with tempfile.TemporaryDirectory(prefix="streaminfer-floor-") as tmp:
        repo = floor_repository(repository, Path(tmp) / "repo")
        with bench_worker(kafka, redis_url, repo, max_batch_size, threads, out_dir) as workers:
            asyncio.run(drive_kafka(kafka, workers.prefix, texts[:50], 8, "floor warm-up"))
            run = asyncio.run(
                drive_open_loop(
                    kafka,
                    workers.prefix,
                    texts,
                    rate_per_s,
                    f"transport floor {rate_per_s:.0f}/s",
                    seconds,
                )
            )
    return {
        "rate_per_s": rate_per_s,
        "seconds": seconds,
        **percentiles_ms(run.latencies_s),
        "mean_batch": round(float(np.mean(run.batch_sizes)), 2),
    }


def light_bound_ms(floor_p50_ms: float, compute_p50_ms: float) -> float:
    return floor_p50_ms + compute_p50_ms + LIGHT_SLACK_MS


def check_light(light_p50_ms: float, floor_p50_ms: float, compute_p50_ms: float) -> dict:
    """The light-load target: p50 end to end <= floor p50 + one batch-1 compute p50 + 5 ms."""
    bound = light_bound_ms(floor_p50_ms, compute_p50_ms)
    return {
        "p50_ms": light_p50_ms,
        "bound_ms": round(bound, 2),
        "over_floor_plus_compute_ms": round(light_p50_ms - floor_p50_ms - compute_p50_ms, 2),
        "passed": light_p50_ms <= bound,
    }


def bench_light(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    max_batch_size: int,
    concurrency: int,
    threads: int | None,
    out_dir: Path,
    floor: dict,
    compute: dict,
    seconds: float = 20.0,
    fraction: float = LIGHT_FRACTION,
) -> dict:
    """Closed-loop saturation on one real worker, then open loop at ``fraction`` of it for ``seconds``."""
    with bench_worker(kafka, redis_url, repository, max_batch_size, threads, out_dir) as workers:
        asyncio.run(drive_kafka(kafka, workers.prefix, texts[:50], concurrency, "warm-up"))
        closed = asyncio.run(
            drive_kafka(kafka, workers.prefix, texts, concurrency, "saturation (closed loop)")
        )
        saturation = closed.figures(f"closed loop, {concurrency} in flight", max_batch_size)
        rate = fraction * saturation.throughput
        run = asyncio.run(
            drive_open_loop(kafka, workers.prefix, texts, rate, f"light {fraction:.0%}", seconds)
        )
    light = {
        "fraction": fraction,
        "rate_per_s": round(rate, 2),
        "seconds": seconds,
        **percentiles_ms(run.latencies_s),
        "mean_batch": round(float(np.mean(run.batch_sizes)), 2),
        "inference_p50_ms": round(float(np.percentile(run.inference_ms, 50)), 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }  # other processes on the box show here
    return {
        "saturation": asdict(saturation),
        "floor": floor,
        "compute": compute,
        "light": light,
        "target": check_light(light["p50_ms"], floor["p50_ms"], compute["p50_ms"]),
    }


def light_summary(report: dict) -> str:
    floor, compute, light, target = (
        report["floor"],
        report["compute"],
        report["light"],
        report["target"],
    )
    lines = [
        f"saturation (closed loop): {report['saturation']['throughput']:.1f} items/s",
        "| what | n | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| transport floor (no model, {floor['rate_per_s']:.0f} req/s open loop) | {floor['n']} | "
        f"{floor['p50_ms']:.1f} | {floor['p95_ms']:.1f} | {floor['p99_ms']:.1f} |",
        f"| one batch-1 compute (raw model) | {compute['n']} | {compute['p50_ms']:.1f} | "
        f"{compute['p95_ms']:.1f} | {compute['p99_ms']:.1f} |",
        f"| light load, {light['fraction']:.0%} of saturation ({light['rate_per_s']:.1f} req/s), real model | "
        f"{light['n']} | {light['p50_ms']:.1f} | {light['p95_ms']:.1f} | {light['p99_ms']:.1f} |",
        f"light p50 {target['p50_ms']:.1f} ms <= floor {floor['p50_ms']:.1f} + compute {compute['p50_ms']:.1f}"
        f" + {LIGHT_SLACK_MS:.0f} = {target['bound_ms']:.1f} ms (over floor + compute: "
        f"{target['over_floor_plus_compute_ms']:+.1f} ms; in-worker batch compute p50 "
        f"{light['inference_p50_ms']:.1f} ms, mean batch {light['mean_batch']}): "
        f"{'PASS' if target['passed'] else 'FAIL'}",
    ]
    return "\n".join(lines)
