"""The bench's latency-vs-load plot (bench/plot.py). Moved whole from test_load.py; the
``point`` helper it shares with test_load.py is in tests/helpers/load_points.py."""

from __future__ import annotations

from helpers.load_points import point

from streaminfer.bench.plot import plot_latency_vs_load


def test_plot_writes_a_png(tmp_path):
    points = [point(f, p99) for f, p99 in ((0.25, 30.0), (0.5, 45.0), (0.75, 90.0), (0.9, 400.0))]
    path = plot_latency_vs_load(
        points, 100.0, tmp_path / "out" / "latency-vs-load.png", target_ms=125.0
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
