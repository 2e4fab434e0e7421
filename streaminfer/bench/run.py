"""The scenarios of ``streaminfer bench`` and its report (table, JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from .. import embedded
from ..kafka_admin import ensure_contract_topics
from ..settings import Settings
from .deadlines import bench_deadlines, deadlines_summary
from .figures import TASK, Figures, corpus, figures, table
from .floor import bench_compute, bench_floor, bench_light, light_summary
from .http_load import (
    bench_gateway,
    cpu_meter,
    measure_floor,
    measure_http,
    measure_submit,
    submit_summary,
)
from .kafka_load import drive_kafka, drive_priority_burst
from .load import bench_load, load_summary
from .raw import bench_raw
from .scaleout import bench_scaleout, scaleout_summary
from .stack import bench_worker
from .targets import bench_codec, check_targets, targets_table


def bench_kafka(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    max_batch_size: int,
    concurrency: int,
    threads: int | None,
    log_dir: Path,
    servers: dict[str, int],
) -> Figures:
    """Closed loop through Kafka on one worker; also the CPU per item of the worker, the
    ``servers`` (name: pid) and the load generator."""
    with bench_worker(kafka, redis_url, repository, max_batch_size, threads, log_dir) as workers:
        asyncio.run(drive_kafka(kafka, workers.prefix, texts[:50], concurrency, "warm-up"))
        with cpu_meter({"worker": workers.pids[0], **servers}) as cpu:
            run = asyncio.run(
                drive_kafka(
                    kafka,
                    workers.prefix,
                    texts,
                    concurrency,
                    f"kafka max_batch_size={max_batch_size}",
                )
            )
    found = run.figures(
        f"kafka, batching {'on' if max_batch_size > 1 else 'off'} (max {max_batch_size})",
        max_batch_size,
    )
    found.cpu_ms_per_item = {
        name: round(1000 * seconds / found.items, 2) for name, seconds in cpu.items()
    }
    return found


def bench_priority(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    max_batch_size: int,
    threads: int | None,
    log_dir: Path,
) -> dict:
    with bench_worker(kafka, redis_url, repository, max_batch_size, threads, log_dir) as workers:
        asyncio.run(drive_kafka(kafka, workers.prefix, texts[:50], 64, "warm-up"))
        queued = asyncio.run(drive_priority_burst(kafka, workers.prefix, texts, (0.1, 0.8, 0.1)))
    summary = {
        level: {
            "n": len(ms),
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
        }
        for level, ms in queued.items()
        if ms
    }
    summary["high_p95_over_low_p95"] = round(
        summary["high"]["p95_ms"] / max(summary["low"]["p95_ms"], 1e-9), 3
    )
    return summary


def bench_http(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    max_batch_size: int,
    concurrency: int,
    threads: int | None,
    log_dir: Path,
) -> Figures:
    """HTTP clients through one gateway process, each waiting for its result (``?wait=``)."""
    with (
        bench_worker(kafka, redis_url, repository, max_batch_size, threads, log_dir) as workers,
        bench_gateway(kafka, redis_url, workers.prefix, repository, log_dir) as gateway,
    ):
        measure_http(gateway, texts[:50], concurrency, "warm-up")
        latencies, failures, seconds = measure_http(
            gateway, texts, concurrency, f"http ?wait max_batch_size={max_batch_size}"
        )
    return figures(
        f"http gateway ?wait, one gateway (max {max_batch_size})",
        max_batch_size,
        latencies,
        seconds,
        len(texts),
        success_rate=1 - failures / len(texts),
    )


def bench_gateway_submit(
    kafka: str,
    redis_url: str,
    repository: Path,
    texts: list[str],
    connections: int,
    seconds: float,
    log_dir: Path,
    servers: dict[str, int],
) -> dict:
    """The async submit path (202, no wait): requests/s, latency and the CPU the gateway, the
    ``servers`` (name: pid) and the load generator use, from one gateway process and then from
    two (``--workers 2``); ``GET /health`` on the one process as the HTTP stack's own rate, and
    the CPU per request of both. No worker runs."""
    from .http_load import mark_served

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    asyncio.run(
        ensure_contract_topics(Settings(kafka_bootstrap_servers=kafka, topic_prefix=prefix), [TASK])
    )
    mark_served(redis_url, prefix, TASK)  # no worker runs: else every submit is 503 (never served)

    def gateway_cpu_ms(cpu: dict[str, float], names: list[str], requests: int) -> float:
        return round(1000 * sum(cpu[name] for name in names) / max(requests, 1), 3)

    found: dict = {}
    for workers in (1, 2):
        with bench_gateway(kafka, redis_url, prefix, repository, log_dir, workers) as gateway:
            pids = (
                {"gateway": gateway.pid}
                if workers == 1
                else {f"gateway {i}": pid for i, pid in enumerate(gateway.serving, 1)}
            )
            measure_submit(gateway, texts, connections, min(2.0, seconds), "warm-up")
            with cpu_meter({**pids, **servers}) as cpu:
                latencies, failures, elapsed = measure_submit(
                    gateway, texts, connections, seconds, f"gateway submit, {workers} process(es)"
                )
            summary = {
                **submit_summary(latencies, failures, elapsed, connections, cpu),
                "gateway_cpu_ms_per_request": gateway_cpu_ms(cpu, list(pids), len(latencies)),
            }
            if workers == 1:
                with cpu_meter(pids) as floor_cpu:
                    floor, _, floor_s = measure_floor(gateway, connections, seconds)
                found = {
                    **summary,
                    "health_requests_per_s": round(len(floor) / floor_s, 1),
                    "health_cpu_ms_per_request": gateway_cpu_ms(floor_cpu, list(pids), len(floor)),
                }
                found["submit_over_health"] = round(
                    found["requests_per_s"] / max(found["health_requests_per_s"], 1e-9), 3
                )
            else:
                found["two_processes"] = summary
                found["two_over_one"] = round(
                    summary["requests_per_s"] / max(found["requests_per_s"], 1e-9), 3
                )
    return found


def run_bench(args: argparse.Namespace) -> int:
    if args.scenario == "collections":  # in-process, on the index alone: no models, no broker
        from .collections import bench_collections

        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = bench_collections(args.collection_sizes, args.collection_kinds)
        (out_dir / "collections.json").write_text(json.dumps(rows, indent=2))
        return 0
    settings = Settings()
    repository = Path(settings.model_repository)
    from streaminfer.models.builtin import build_all

    build_all(repository, tasks=[TASK])
    max_batch = (
        args.batch_size
        or yaml.safe_load((repository / TASK / "model.yaml").read_text())["max_batch_size"]
    )
    texts = corpus(args.requests)
    threads = settings.worker_threads
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "requests": args.requests,
        "concurrency": args.concurrency,
    }
    rows: list[Figures] = []

    def wanted(scenario: str) -> bool:
        return args.scenario in (scenario, "all")

    if wanted("codec"):
        report["codec"] = bench_codec()
    if wanted("batching"):
        rows = [
            bench_raw(repository, texts, max_batch, threads),
            bench_raw(repository, texts, 1, threads),
        ]
    compute = None
    if wanted("deadlines") or wanted(
        "light"
    ):  # one batch-1 compute of the raw model, shared by both
        compute = bench_compute(repository, texts[:300], threads)
    with embedded.tansu(log_dir=out_dir) as kafka, embedded.redis(log_dir=out_dir) as redis:
        bootstrap, redis_url = embedded.bootstrap_address(kafka), embedded.redis_address(redis)
        if wanted("batching"):
            for batch in (max_batch, 1):
                rows.append(
                    bench_kafka(
                        bootstrap,
                        redis_url,
                        repository,
                        texts,
                        batch,
                        args.concurrency,
                        threads,
                        out_dir,
                        {"broker": kafka.pid, "redis": redis.pid},
                    )
                )
        if wanted("priority"):
            report["priority"] = bench_priority(
                bootstrap, redis_url, repository, texts, max_batch, threads, out_dir
            )
        if wanted("http"):
            rows.append(
                bench_http(
                    bootstrap,
                    redis_url,
                    repository,
                    texts,
                    max_batch,
                    args.concurrency,
                    threads,
                    out_dir,
                )
            )
        if wanted("gateway"):
            report["gateway_submit"] = bench_gateway_submit(
                bootstrap,
                redis_url,
                repository,
                texts,
                args.submit_connections,
                args.submit_seconds,
                out_dir,
                {"broker": kafka.pid, "redis": redis.pid},
            )
        if wanted("load"):
            report["load"] = bench_load(
                bootstrap,
                redis_url,
                repository,
                texts,
                max_batch,
                args.concurrency,
                threads,
                out_dir,
                tuple(args.rates),
                args.duration,
            )
        if wanted("scaleout"):
            report["scaleout"] = bench_scaleout(
                bootstrap,
                redis_url,
                repository,
                texts,
                max_batch,
                args.concurrency,
                threads,
                out_dir,
            )
        if compute is not None:  # the transport floor (no model), shared by deadlines and light
            floor = bench_floor(
                bootstrap,
                redis_url,
                repository,
                texts,
                max_batch,
                threads,
                out_dir,
                args.floor_seconds,
            )
        if wanted("light"):
            report["light"] = bench_light(
                bootstrap,
                redis_url,
                repository,
                texts,
                max_batch,
                args.concurrency,
                threads,
                out_dir,
                floor,
                compute,
                args.light_seconds,
            )
        if wanted("deadlines"):
            report["deadlines"] = bench_deadlines(
                bootstrap,
                redis_url,
                repository,
                texts,
                max_batch,
                args.concurrency,
                threads,
                out_dir,
                floor,
                compute,
                args.deadlines_seconds,
                tight_share=args.tight_share,
            )
    report["rows"] = [asdict(r) for r in rows]
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    if rows:
        print(table(rows))
    if wanted("batching"):
        raw, kafka_on = rows[0], rows[2]
        print(
            f"\nkafka batching on / raw onnxruntime at batch {max_batch}: "
            f"{kafka_on.throughput / raw.throughput:.0%} of raw throughput; "
            f"batching on vs off: {kafka_on.throughput / rows[3].throughput:.1f}x"
        )
        for row in rows:
            if row.cpu_ms_per_item:
                print(
                    f"  CPU ms per item, {row.scenario}: "
                    + ", ".join(f"{name} {ms}" for name, ms in row.cpu_ms_per_item.items())
                )
    if "priority" in report:
        print("\nqueueing at saturation, 10/80/10 high/normal/low (ms):")
        for level in ("high", "normal", "low"):
            figures_ = report["priority"][level]
            print(
                f"  {level:<7} n={figures_['n']:<5} p50 {figures_['p50_ms']:>8.1f}  p95 {figures_['p95_ms']:>8.1f}"
                f"  p99 {figures_['p99_ms']:>8.1f}"
            )
        print(f"  high p95 / low p95 = {report['priority']['high_p95_over_low_p95']}")
    if "gateway_submit" in report:
        submit = report["gateway_submit"]
        print(
            f"\ngateway submit (202, one gateway process, {submit['connections']} connections): "
            f"{submit['requests_per_s']:.0f} req/s, p50 {submit['p50_ms']:.1f} p95 {submit['p95_ms']:.1f} "
            f"p99 {submit['p99_ms']:.1f} ms, non-202 {submit['non_202']}; "
            f"GET /health on the same process (the HTTP stack alone): {submit['health_requests_per_s']:.0f} req/s; "
            f"submit / health {submit['submit_over_health']:.0%}"
        )
        print(
            f"  gateway CPU per request: submit {submit['gateway_cpu_ms_per_request']} ms, "
            f"/health {submit['health_cpu_ms_per_request']} ms"
        )
        print(
            "  CPU, % of a core: "
            + ", ".join(f"{name} {pct}" for name, pct in submit["cpu_percent_of_a_core"].items())
        )
        two = submit["two_processes"]
        print(
            f"  two gateway processes (--workers 2): {two['requests_per_s']:.0f} req/s, "
            f"{submit['two_over_one']:.2f}x one; p50 {two['p50_ms']:.1f} p99 {two['p99_ms']:.1f} ms, "
            f"non-202 {two['non_202']}, gateway CPU per request {two['gateway_cpu_ms_per_request']} ms"
        )
        print(
            "  CPU, % of a core: "
            + ", ".join(f"{name} {pct}" for name, pct in two["cpu_percent_of_a_core"].items())
        )
    if "load" in report:
        print(
            "\nlatency against offered load, open loop through Kafka:\n"
            + load_summary(report["load"])
        )
    if "scaleout" in report:
        print("\nscale-out, closed loop through Kafka:\n" + scaleout_summary(report["scaleout"]))
    if "light" in report:
        print(
            "\nlight load against the transport floor (open loop through Kafka):\n"
            + light_summary(report["light"])
        )
    if "deadlines" in report:
        print(
            "\ngoodput under overload, deadline-aware scheduling against FIFO:\n"
            + deadlines_summary(report["deadlines"])
        )
    if "codec" in report:
        codec = report["codec"]
        print(
            f"\navro encode + decode of a typical request: best {codec['roundtrips_per_s']:,.0f}/s, median "
            f"{codec['median_roundtrips_per_s']:,.0f}/s of 5 (fastavro's best: {codec['fastavro_roundtrips_per_s']:,.0f}/s)"
        )
    report["targets"] = check_targets(report, rows)
    print("\ntargets (issues 6 and 12):\n" + targets_table(report["targets"]))
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"JSON: {out_dir / 'bench.json'}")
    shutil.rmtree(out_dir / "tmp", ignore_errors=True)
    return 0
