"""The bench's 50 %-load latency target (bench/load.py). The open-loop scheduler's tests are in
test_kafka_load.py, the plot's in test_plot.py."""

from __future__ import annotations

import pytest
from helpers.load_points import point

from streaminfer.bench.load import check_target, latency_target_ms


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
