"""The ``load`` scenario: latency against offered load through Kafka. A closed-loop run finds the
saturation throughput; open-loop runs then offer fractions of it to the same worker."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .figures import Figures
from .kafka_load import LoadRun, drive_kafka, drive_open_loop, full_batch_ms
from .stack import bench_worker

logger = logging.getLogger(__name__)

TARGET_FRACTION = 0.5
TARGET_SLACK_MS = 25.0


@dataclass
class LoadPoint:
    """One open-loop run: the share of saturation offered, that rate, and what it achieved."""

    fraction: float
    offered_rps: float
    figures: Figures


def latency_target_ms(full_batch_ms: float) -> float:
    """The p99 a request may take at half of saturation: the batch computing when it arrives, then
    its own, plus ``TARGET_SLACK_MS`` for Kafka and the batcher."""
    return 2 * full_batch_ms + TARGET_SLACK_MS


def check_target(points: list[LoadPoint], full_batch_ms: float | None) -> dict | None:
    """The p99 of the point at ``TARGET_FRACTION`` of saturation against ``latency_target_ms``;
    None when there is no such point or no full batch was timed."""
    point = next((p for p in points if math.isclose(p.fraction, TARGET_FRACTION)), None)
    if point is None or full_batch_ms is None:
        return None
    bound = latency_target_ms(full_batch_ms)
    return {"fraction": TARGET_FRACTION, "p99_ms": point.figures.p99_ms, "bound_ms": round(bound, 1),
            "passed": point.figures.p99_ms <= bound}


def bench_load(kafka: str, redis_url: str, repository: Path, texts: list[str], max_batch_size: int,
               concurrency: int, threads: int | None, out_dir: Path, fractions: tuple[float, ...],
               duration_s: float | None = None) -> dict:
    """Saturation, then one open-loop point per fraction of it, on one worker; the full-batch compute
    time comes from every run's full batches. Writes ``latency-vs-load.png`` to ``out_dir``."""
    with bench_worker(kafka, redis_url, repository, max_batch_size, threads, out_dir) as workers:
        asyncio.run(drive_kafka(kafka, workers.prefix, texts[:50], concurrency, "warm-up"))
        closed = asyncio.run(drive_kafka(kafka, workers.prefix, texts, concurrency, "saturation (closed loop)"))
        saturation = closed.figures(f"closed loop, {concurrency} in flight", max_batch_size)
        runs: list[LoadRun] = [closed]
        points = []
        for fraction in fractions:
            rate = fraction * saturation.throughput
            runs.append(asyncio.run(drive_open_loop(kafka, workers.prefix, texts, rate, f"open loop {fraction:.0%}",
                                                    duration_s)))
            points.append(LoadPoint(fraction, round(rate, 1), runs[-1].figures(
                f"open loop {fraction:.0%} ({rate:.1f} req/s offered)", max_batch_size)))
    batch_ms = full_batch_ms(runs, max_batch_size)
    plot_path = None
    if points:
        from .plot import plot_latency_vs_load

        try:
            plot_path = plot_latency_vs_load(points, saturation.throughput, out_dir / "latency-vs-load.png",
                                             None if batch_ms is None else latency_target_ms(batch_ms))
        except ImportError:  # matplotlib is a dev extra; the figures are in the JSON all the same
            logger.warning("no plot: matplotlib is not installed (pip install -e '.[dev]')")
    return {"saturation": asdict(saturation), "full_batch_ms": None if batch_ms is None else round(batch_ms, 2),
            "points": [{"fraction": p.fraction, "offered_rps": p.offered_rps, **asdict(p.figures)} for p in points],
            "target": check_target(points, batch_ms), "plot": None if plot_path is None else str(plot_path)}


def load_summary(report: dict) -> str:
    """The ``load`` section of the printed report."""
    sat = report["saturation"]
    lines = [f"saturation (closed loop): {sat['throughput']:.1f} items/s, p99 {sat['p99_ms']:.1f} ms, "
             f"mean batch {sat['mean_batch']}",
             "| offered | offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | max ms | mean batch |",
             "|" + "---|" * 8]
    for p in report["points"]:
        lines.append(f"| {p['fraction']:.0%} | {p['offered_rps']:.1f} | {p['throughput']:.1f} | {p['p50_ms']:.1f} | "
                     f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['max_ms']:.1f} | {p['mean_batch']} |")
    batch_ms = report["full_batch_ms"]
    lines.append("one full batch's compute: " + ("no full batch seen" if batch_ms is None else f"{batch_ms:.1f} ms"))
    target = report["target"]
    if target is None:
        lines.append(f"target at {TARGET_FRACTION:.0%} load: not evaluated (needs that point and a full batch)")
    else:
        lines.append(f"target at {target['fraction']:.0%} load: p99 {target['p99_ms']:.1f} ms <= "
                     f"2 x {batch_ms:.1f} + {TARGET_SLACK_MS:.0f} = {target['bound_ms']:.1f} ms: "
                     f"{'PASS' if target['passed'] else 'FAIL'}")
    if report["plot"]:
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)
