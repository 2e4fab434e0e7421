"""The circuit breaker core (schemas/breakers.py, on pybreaker) with a fake clock: every
transition, the Retry-After it computes, what counts as a failure, and the state callback that
feeds ``inference_circuit_state``."""

from __future__ import annotations

from datetime import datetime

import pybreaker
import pytest

from streaminfer.schemas.breakers import CLOSED, HALF_OPEN, OPEN, Breakers, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """One fake clock for our bookkeeping and pybreaker's (``datetime.now`` in its module)."""
    fake = Clock()

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(fake.now, tz)

    monkeypatch.setattr(pybreaker, "datetime", FakeDatetime)
    return fake


class Down(ConnectionError):
    pass


@pytest.fixture
def states():
    return []


@pytest.fixture
def breakers(clock, states) -> Breakers:
    return Breakers(
        3,
        5.0,
        is_failure=lambda exc: isinstance(exc, ConnectionError),
        on_state=lambda name, value: states.append((name, value)),
        clock=clock,
    )


def fail(breakers: Breakers, name: str = "redis") -> None:
    with pytest.raises(Down), breakers.guard(name):
        raise Down("refused")


def succeed(breakers: Breakers, name: str = "redis") -> bool:
    with breakers.guard(name):
        return True


def test_closed_to_open_after_n_failures_in_a_row(breakers, states):
    fail(breakers)
    fail(breakers)
    assert breakers.value("redis") == CLOSED
    fail(breakers)  # the third: the call that trips it keeps its own error
    assert breakers.value("redis") == OPEN
    assert states == [("redis", CLOSED), ("redis", OPEN)]


def test_a_success_between_failures_resets_the_count(breakers):
    fail(breakers)
    fail(breakers)
    succeed(breakers)
    fail(breakers)
    fail(breakers)
    assert breakers.value("redis") == CLOSED


def test_errors_that_are_not_outages_never_open_it(breakers):
    for _ in range(10):
        with pytest.raises(KeyError), breakers.guard("redis"):
            raise KeyError("the dependency answered: not found")
    assert breakers.value("redis") == CLOSED


def test_open_fails_fast_with_retry_after_and_never_runs_the_block(breakers, clock):
    for _ in range(3):
        fail(breakers)
    clock.now += 2.0
    ran = []
    with pytest.raises(CircuitOpen) as refused, breakers.guard("redis"):
        ran.append(True)
    assert not ran
    assert refused.value.name == "redis"
    assert refused.value.retry_after_s == pytest.approx(3.0)
    assert breakers.retry_after_header("redis") == "3"
    clock.now += 2.9
    assert breakers.retry_after_header("redis") == "1", "never 0: a client must wait"


def test_open_to_half_open_after_the_reset_time_then_closed_on_a_good_probe(
    breakers, clock, states
):
    for _ in range(3):
        fail(breakers)
    clock.now += 5.1
    seen = []
    with breakers.guard("redis"):
        seen.append(breakers.value("redis"))  # inside the probe
    assert seen == [HALF_OPEN]
    assert breakers.value("redis") == CLOSED
    assert [v for _, v in states] == [CLOSED, OPEN, HALF_OPEN, CLOSED]
    fail(breakers)
    assert breakers.value("redis") == CLOSED, "closed again: the count starts over"


def test_half_open_to_open_on_a_bad_probe_for_another_reset_time(breakers, clock, states):
    for _ in range(3):
        fail(breakers)
    clock.now += 5.1
    fail(breakers)  # the probe fails: open again at once, not after 3 more
    assert breakers.value("redis") == OPEN
    assert [v for _, v in states] == [CLOSED, OPEN, HALF_OPEN, OPEN]
    assert breakers.retry_after_s("redis") == pytest.approx(5.0)
    with pytest.raises(CircuitOpen), breakers.guard("redis"):
        pass


def test_breakers_are_independent_by_name(breakers):
    for _ in range(3):
        fail(breakers, "kafka")
    assert breakers.is_open("kafka") and not breakers.is_open("redis")
    assert succeed(breakers, "redis")


def test_record_feeds_outcomes_of_unguarded_calls(breakers, clock):
    for _ in range(3):
        breakers.record("redis", Down("refused"))
    assert breakers.is_open("redis")
    breakers.record("redis", Down("refused"))  # while open: nothing is tried, nothing raised
    clock.now += 5.1
    breakers.record("redis")  # a good probe
    assert breakers.value("redis") == CLOSED


def test_describe_for_ready_and_stats(breakers, clock):
    breakers.declare("kafka")
    for _ in range(3):
        fail(breakers)
    described = breakers.describe()
    assert described["kafka"] == {
        "state": "closed",
        "value": 0,
        "failures": 0,
        "retry_after_s": 0.0,
    }
    assert described["redis"]["state"] == "open" and described["redis"]["value"] == 2
    assert described["redis"]["retry_after_s"] == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("failures", "reset_s"), [(0, 5.0), (-1, 5.0), (3, 0.0), (3, -2.0), (3, float("nan"))]
)
def test_hostile_settings_are_refused(failures, reset_s):
    with pytest.raises(ValueError):
        Breakers(failures, reset_s)


async def test_guard_holds_across_awaits_and_concurrent_blocks(breakers):
    import asyncio

    async def call(fails: bool):
        with breakers.guard("redis"):
            await asyncio.sleep(0.01)
            if fails:
                raise Down("refused")

    outcomes = await asyncio.gather(*(call(True) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(o, Down) for o in outcomes), "each keeps its own error"
    assert breakers.is_open("redis")
    with pytest.raises(CircuitOpen):
        await call(False)


@pytest.mark.parametrize("wall_step_s", [-3600.0, 3600.0])
def test_the_reset_is_timed_on_our_clock_whatever_the_wall_clock_does(
    clock, states, monkeypatch, wall_step_s
):
    """pybreaker times its reset on the wall clock: stepped back during an outage, it would
    refuse the probe our (monotonic) clock says is due and drop its success; stepped forward,
    it would let calls through early. Only our clock counts."""
    wall = {"now": clock.now}

    class WallDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(wall["now"], tz)

    monkeypatch.setattr(pybreaker, "datetime", WallDatetime)
    breakers = Breakers(
        1,
        5.0,
        is_failure=lambda exc: True,
        on_state=lambda name, value: states.append((name, value)),
        clock=clock,
    )
    breakers.record("redis", Down("refused"))
    assert breakers.is_open("redis")
    wall["now"] += wall_step_s
    clock.now += 1.0
    with pytest.raises(CircuitOpen):
        succeed(breakers)
    breakers.record("redis")
    assert breakers.is_open("redis"), "not due by our clock: nothing recorded"
    clock.now += 4.5
    breakers.record("redis")  # the probe, due by our clock
    assert breakers.value("redis") == CLOSED
    assert states[-2:] == [("redis", HALF_OPEN), ("redis", CLOSED)]


def test_reset_closes_an_open_breaker(breakers):
    for _ in range(3):
        fail(breakers)
    assert breakers.is_open("redis")
    breakers.reset("redis")
    assert breakers.value("redis") == CLOSED and succeed(breakers)
