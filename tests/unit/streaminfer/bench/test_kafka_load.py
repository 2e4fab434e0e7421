"""The bench's open-loop scheduler (bench/kafka_load.py): send offsets at the offered rate, and
pacing that never lowers it. Moved whole from test_load.py."""

from __future__ import annotations

import asyncio

import pytest

from streaminfer.bench.kafka_load import paced, send_offsets


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
