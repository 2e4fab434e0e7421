"""The worker's breakers in its real retry loop (OutcomeWriter.until_written) and partition
pause: failures open the breaker of the dependency that failed, no attempt is made while it is
open (no retries burnt), the first attempt after the reset time is the probe, a good probe closes
it; the consumer's partitions pause while any is open and resume once all are closed; a worker
stopping meanwhile gives the write up (redelivered), never acks or dead-letters it."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import KafkaTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

from streaminfer.schemas.breakers import CLOSED, OPEN
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import RegistryUnavailable
from streaminfer.streams import metrics
from streaminfer.streams.breakers import PartitionPause, dependency_of, make_breakers
from streaminfer.streams.features import FeatureStoreUnavailable
from streaminfer.streams.outcomes import OutcomeWriter


class Publisher:
    def __init__(self, breakers) -> None:
        self.breakers = breakers


class Flaky:
    """A write that fails with ``error`` while ``down``; records when each attempt came."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.down = True
        self.attempts: list[float] = []

    async def __call__(self) -> None:
        self.attempts.append(time.monotonic())
        if self.down:
            raise self.error


def gauge(name: str) -> float:
    return metrics.REGISTRY.get_sample_value("inference_circuit_state", {"name": name})


@pytest.mark.parametrize(("error", "name"), [
    (RedisConnectionError("refused"), "redis"), (KafkaTimeoutError(), "kafka"),
    (RegistryUnavailable("down"), "registry"), (FeatureStoreUnavailable("no db"), "feature-store")])
def test_each_dependency_error_names_its_breaker(error, name):
    assert dependency_of(error) == name


@pytest.mark.parametrize("error", [ValueError("bug"), OSError("which one?"), KeyError("x")])
def test_other_errors_name_no_breaker(error):
    assert dependency_of(error) is None


async def test_the_retry_loop_opens_the_breaker_stops_trying_then_probes_and_closes():
    breakers = make_breakers(3, 0.6)
    writer = OutcomeWriter(Publisher(breakers), AvroCodec(), "w1")
    write = Flaky(RedisConnectionError("refused"))
    task = asyncio.create_task(writer.until_written("a test write", write))
    while not breakers.is_open("redis"):
        await asyncio.sleep(0.01)
    assert len(write.attempts) == 3 and gauge("redis") == OPEN
    opened = time.monotonic()
    await asyncio.sleep(0.4)
    assert len(write.attempts) == 3, "open: no retry burnt before the reset time"
    write.down = False
    assert await asyncio.wait_for(task, 5) is True
    assert len(write.attempts) == 4 and write.attempts[-1] - opened >= 0.5, "one probe, after the reset"
    assert breakers.value("redis") == CLOSED and gauge("redis") == CLOSED


async def test_a_bad_probe_opens_it_again_for_another_reset_time():
    breakers = make_breakers(2, 0.3)
    writer = OutcomeWriter(Publisher(breakers), AvroCodec(), "w1")
    write = Flaky(KafkaTimeoutError())
    task = asyncio.create_task(writer.until_written("a test write", write))
    while len(write.attempts) < 3:  # two to open it, then the probe after 0.3 s, which fails
        await asyncio.sleep(0.01)
    assert breakers.is_open("kafka")
    assert write.attempts[2] - write.attempts[1] >= 0.25
    write.down = False
    assert await asyncio.wait_for(task, 5) is True
    assert write.attempts[3] - write.attempts[2] >= 0.25, "reopened: waited a reset time again"
    assert breakers.value("kafka") == CLOSED


async def test_a_write_waiting_on_an_open_breaker_gives_up_on_shutdown():
    breakers = make_breakers(1, 60.0)
    writer = OutcomeWriter(Publisher(breakers), AvroCodec(), "w1")
    write = Flaky(RedisConnectionError("refused"))
    task = asyncio.create_task(writer.until_written("a test write", write))
    while not breakers.is_open("redis"):
        await asyncio.sleep(0.01)
    writer.closed = True
    assert await asyncio.wait_for(task, 2) is False, "given up: its events stay unacked, redelivered"
    assert len(write.attempts) == 1


class Consumer:
    def __init__(self, assigned) -> None:
        self.assigned = set(assigned)
        self.paused: set = set()

    def pause(self, tps):
        self.paused |= set(tps)

    def resume(self, tps):
        self.paused -= set(tps)


def test_partitions_pause_while_open_and_resume_once_closed():
    breakers = make_breakers(1, 0.05)
    consumer = Consumer({("t", 0), ("t", 1)})
    pause = PartitionPause(breakers, lambda: consumer.assigned, consumer.pause, consumer.resume)
    pause.sync()
    assert consumer.paused == set()
    breakers.record("feature-store", FeatureStoreUnavailable("no db"))
    pause.sync()
    assert consumer.paused == {("t", 0), ("t", 1)}
    assert metrics.REGISTRY.get_sample_value("inference_partitions_paused") == 2
    consumer.assigned = {("t", 1), ("t", 2)}  # a rebalance meanwhile
    pause.sync()
    assert ("t", 2) in consumer.paused and pause.paused == {("t", 1), ("t", 2)}
    time.sleep(0.06)
    breakers.record("feature-store")  # a good probe
    pause.sync()
    assert consumer.paused == {("t", 0)}, "only what it paused and still holds is resumed"
    assert metrics.REGISTRY.get_sample_value("inference_partitions_paused") == 0
