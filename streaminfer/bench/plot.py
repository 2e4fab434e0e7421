"""The ``load`` scenario's picture: p50/p95/p99 latency against offered load, saturation marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .figures import LoadPoint


def plot_latency_vs_load(
    points: Sequence[LoadPoint], saturation_rps: float, path: Path, target_ms: float | None = None
) -> Path:
    """Write a PNG to ``path``: one line per percentile over the points' offered rates, a vertical
    line at the saturation throughput and, when given, a horizontal one at the latency target."""
    # NOTE: imported here: matplotlib is a dev extra, and the Agg backend needs no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p.offered_rps)
    offered = [p.offered_rps for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for name, marker in (("p50", "o"), ("p95", "s"), ("p99", "^")):
            ax.plot(
                offered,
                [getattr(p.figures, f"{name}_ms") for p in points],
                marker=marker,
                label=name,
            )
        ax.axvline(
            saturation_rps,
            color="grey",
            linestyle="--",
            label=f"saturation {saturation_rps:.0f} req/s",
        )
        if target_ms is not None:
            ax.axhline(
                target_ms,
                color="red",
                linestyle=":",
                label=f"p99 target at 50% ({target_ms:.0f} ms)",
            )
        ax.set_yscale("log")
        ax.set_xlim(0, max([saturation_rps, *offered]) * 1.05)
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_title("text-embedding through Kafka: latency vs offered load")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
