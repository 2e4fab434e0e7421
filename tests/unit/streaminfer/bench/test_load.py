"""The bench's open-loop scheduler, its latency-vs-load plot and the 50 %-load latency target."""

from __future__ import annotations

import asyncio

import pytest

from streaminfer.bench.figures import Figures, LoadPoint
from streaminfer.bench.kafka_load import paced, send_offsets
from streaminfer.bench.load import check_target, latency_target_ms
from streaminfer.bench.plot import plot_latency_vs_load


def test_send_offsets_are_evenly_spaced_at_the_offered_rate():
    offsets = send_offsets(rate_per_s=40.0, count=100)
    assert len(offsets) == 100
    assert offsets[0] == 0.0
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert all(gap == pytest.approx(1 / 40.0) for gap in gaps)
    assert len(offsets) / (offsets[-1] + 1 / 40.0) == pytest.approx(40.0)


class SlowClock:
    """A clock that each send advances by ``send_s``, and that sleeping advances too."""

    def __init__(self, send_s: float) -> None:
        self.now = 100.0
        self.send_s = send_s
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def drain(clock: SlowClock, offsets: list[float]) -> list[float]:
    dues = []
    async for due in paced(offsets, clock.now, clock=clock, sleep=clock.sleep):
        dues.append(due)
        clock.now += clock.send_s  # the send itself
    return dues


def test_paced_waits_for_each_due_time_when_sends_are_fast():
    clock = SlowClock(send_s=0.001)
    dues = asyncio.run(drain(clock, send_offsets(100.0, 5)))
    assert dues == pytest.approx([100.0, 100.01, 100.02, 100.03, 100.04])
    assert clock.sleeps == pytest.approx([0.009] * 4)


def test_slow_sends_do_not_lower_the_offered_rate():
    clock = SlowClock(send_s=0.025)  # every send takes 2.5 intervals
    offsets = send_offsets(100.0, 8)
    dues = asyncio.run(drain(clock, offsets))
    assert dues == pytest.approx([100.0 + o for o in offsets])  # latency counts from these
    assert clock.sleeps == []  # always behind: no send waits


def point(fraction: float, p99_ms: float) -> LoadPoint:
    offered = 100.0 * fraction
    return LoadPoint(fraction, offered, Figures(f"open loop {fraction:.0%}", 32, 500, 500 / offered, offered,
                                                p50_ms=p99_ms / 3, p95_ms=p99_ms / 1.5, p99_ms=p99_ms,
                                                max_ms=p99_ms * 1.2, mean_batch=4.0))


def test_plot_writes_a_png(tmp_path):
    points = [point(f, p99) for f, p99 in ((0.25, 30.0), (0.5, 45.0), (0.75, 90.0), (0.9, 400.0))]
    path = plot_latency_vs_load(points, 100.0, tmp_path / "out" / "latency-vs-load.png", target_ms=125.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_latency_target_is_two_full_batches_plus_25_ms():
    assert latency_target_ms(100.0) == 225.0


@pytest.mark.parametrize(("p99_ms", "passed"), [(150.0, True), (225.0, True), (225.5, False)])
def test_target_check_at_half_load(p99_ms, passed):
    points = [point(0.25, 20.0), point(0.5, p99_ms), point(0.9, 900.0)]
    target = check_target(points, full_batch_ms=100.0)
    assert target["passed"] is passed
    assert target["bound_ms"] == 225.0
    assert target["p99_ms"] == p99_ms


def test_target_is_not_evaluated_without_a_half_load_point_or_a_full_batch():
    assert check_target([point(0.25, 20.0), point(0.75, 50.0)], full_batch_ms=100.0) is None
    assert check_target([point(0.5, 20.0)], full_batch_ms=None) is None
