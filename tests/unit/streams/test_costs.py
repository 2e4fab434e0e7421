"""The online batch-cost fit: nothing predicted before enough batches, the terms recovered from
batches of varied size, a change of speed followed, hostile observations ignored."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.streams.costs import MIN_BATCHES, BatchCost


def test_nothing_is_predicted_before_enough_batches():
    cost = BatchCost()
    for _ in range(MIN_BATCHES - 1):
        cost.observe(4, 100, 10.0)
    assert cost.predict_ms(4, 100) is None and cost.to_dict()["fixed_ms"] is None
    cost.observe(4, 100, 10.0)
    assert cost.predict_ms(4, 100) == pytest.approx(10.0, rel=0.01)


@given(st.floats(0.0, 20.0), st.floats(0.1, 10.0), st.floats(0.0, 0.05))
def test_the_terms_are_recovered_from_batches_of_varied_size(fixed, per_item, per_unit):
    cost = BatchCost(refit_s=0)
    for k in range(60):
        items = 1 + k % 32
        units = items * (20 + (k * 7) % 300)  # texts of varied length
        cost.observe(items, units, fixed + per_item * items + per_unit * units)
    for items, units in ((1, 30), (32, 32 * 200), (8, 8 * 300)):
        assert cost.predict_ms(items, units) == pytest.approx(
            fixed + per_item * items + per_unit * units, rel=0.05, abs=0.2
        )


def test_equal_batches_stay_solvable_and_predict_themselves():
    cost = BatchCost()
    for _ in range(100):
        cost.observe(32, 3200, 200.0)
    assert cost.predict_ms(32, 3200) == pytest.approx(200.0, rel=0.02)
    assert 0 < cost.predict_ms(1, 100) < 200.0


def test_a_change_of_speed_is_followed():
    cost = BatchCost(refit_s=0)
    for k in range(200):
        cost.observe(1 + k % 8, 10, 5.0 * (1 + k % 8))
    for k in range(200):  # the model got twice as slow (another process took a core)
        cost.observe(1 + k % 8, 10, 10.0 * (1 + k % 8))
    assert cost.predict_ms(4, 10) == pytest.approx(40.0, rel=0.1)
    assert cost.per_item_s == pytest.approx(0.010, rel=0.1)


@pytest.mark.parametrize(
    "items, compute_ms", [(0, 5.0), (-3, 5.0), (4, math.nan), (4, math.inf), (4, -1.0)]
)
def test_impossible_observations_are_ignored(items, compute_ms):
    cost = BatchCost()
    cost.observe(items, 10, compute_ms)
    assert cost.batches == 0 and cost.per_item_s is None


def test_a_settled_fit_is_solved_again_at_most_every_refit_s():
    cost = BatchCost(refit_s=3600)
    for _ in range(30):
        cost.observe(4, 10, 10.0)
    cost.observe(4, 10, 1000.0)  # past the settling batches: this one waits for the next refit
    assert cost.predict_ms(4, 10) == pytest.approx(10.0, rel=0.01)


def test_the_delivery_time_counts_in_the_prediction_and_an_outage_counts_capped():
    cost = BatchCost(refit_s=0)
    for items in (1, 2, 4):
        cost.observe(items, items, 10.0 * items)
    for _ in range(100):
        cost.observe_delivery(5.0)
    assert cost.predict_ms(2, 2) == pytest.approx(25.0, rel=0.02)
    cost.observe_delivery(60_000.0)  # one write that waited a minute for Redis
    assert cost.delivery_ms < 5.0 + 0.1 * 1000.0 + 0.01
    cost.observe_delivery(math.nan)
    assert math.isfinite(cost.delivery_ms)
