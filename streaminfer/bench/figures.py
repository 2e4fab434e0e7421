"""Figures of one scenario (throughput, latency percentiles), of one point of the load scenario,
and the texts a run sends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TASK = "text-embedding"
NO_CACHE = {"cache": "false"}  # measure the model path, not the content cache
WORDS = (
    "stream",
    "kafka",
    "model",
    "batch",
    "latency",
    "gateway",
    "worker",
    "vector",
    "search",
    "result",
    "cluster",
    "partition",
    "offset",
    "schema",
    "tensor",
    "inference",
)


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
    success_rate: float | None = None
    """Share of requests answered with a succeeded result (HTTP scenarios)."""
    cpu_ms_per_item: dict[str, float] | None = None
    """CPU milliseconds each process spent per item (where the cores went)."""


@dataclass
class LoadPoint:
    """One open-loop run: the share of saturation offered, that rate, and what it achieved."""

    fraction: float
    offered_rps: float
    figures: Figures
    achieved_rps: float | None = None
    """Results per second from the first result to the last: the offered rate when the worker keeps
    up (figures.throughput also counts the first result's latency, so it reads low on short runs)."""

    @property
    def offered_s(self) -> float:
        return self.figures.items / self.offered_rps if self.offered_rps > 0 else 0.0


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 24)))) + f" #{i}" for i in range(n)]


def figures(
    scenario: str,
    batch: int,
    latencies_s: list[float],
    seconds: float,
    items: int,
    mean_batch: float | None = None,
    success_rate: float | None = None,
) -> Figures:
    ms = np.asarray(latencies_s) * 1000.0
    return Figures(
        scenario,
        batch,
        items,
        round(seconds, 3),
        round(items / seconds, 1),
        *(round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)),
        round(float(ms.max()), 2),
        None if mean_batch is None else round(mean_batch, 2),
        None if success_rate is None else round(success_rate, 4),
    )


def table(rows: list[Figures]) -> str:
    head = (
        "| scenario | items | items/s | p50 ms | p95 ms | p99 ms | max ms | mean batch | success |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.items} | {r.throughput:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.max_ms:.1f} | {'' if r.mean_batch is None else r.mean_batch} | "
            f"{'' if r.success_rate is None else f'{r.success_rate:.1%}'} |"
        )
    return "\n".join(lines)
