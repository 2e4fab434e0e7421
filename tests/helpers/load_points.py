"""A made-up bench load point (``LoadPoint``) for the bench's unit tests."""

from __future__ import annotations

from streaminfer.bench.figures import Figures, LoadPoint


def point(fraction: float, p99_ms: float) -> LoadPoint:
    offered = 100.0 * fraction
    return LoadPoint(
        fraction,
        offered,
        Figures(
            f"open loop {fraction:.0%}",
            32,
            500,
            500 / offered,
            offered,
            p50_ms=p99_ms / 3,
            p95_ms=p99_ms / 1.5,
            p99_ms=p99_ms,
            max_ms=p99_ms * 1.2,
            mean_batch=4.0,
        ),
    )
