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
from helpers.worker_fakes import FakeModel, FakePublisher, event, make, until_acked
from redis.exceptions import ConnectionError as RedisConnectionError

from streaminfer.models.errors import InferenceFailed
from streaminfer.schemas.breakers import CLOSED, OPEN
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import RegistryUnavailable
from streaminfer.streams import metrics
from streaminfer.streams.breakers import (
    ModelCircuitOpen,
    ModelDown,
    PartitionPause,
    dependency_of,
    judge_batch,
    make_breakers,
)
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


class TP(tuple):
    """faust's TP: (topic, partition) with ``.topic``."""

    topic = property(lambda self: self[0])


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec()


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
    consumer = Consumer({TP(("t", 0)), TP(("t", 1))})
    pause = PartitionPause(breakers, lambda: consumer.assigned, consumer.pause, consumer.resume)
    pause.sync()
    assert consumer.paused == set()
    breakers.record("redis", RedisConnectionError("refused"))
    pause.sync()
    assert consumer.paused == {TP(("t", 0)), TP(("t", 1))}
    assert metrics.REGISTRY.get_sample_value("inference_partitions_paused") == 2
    consumer.assigned = {TP(("t", 1)), TP(("t", 2))}  # a rebalance meanwhile
    pause.sync()
    assert TP(("t", 2)) in consumer.paused and pause.paused == {TP(("t", 1)), TP(("t", 2))}
    time.sleep(0.06)
    breakers.record("redis")  # a good probe
    pause.sync()
    assert consumer.paused == {TP(("t", 0))}, "only what it paused and still holds is resumed"
    assert metrics.REGISTRY.get_sample_value("inference_partitions_paused") == 0


def test_a_model_breaker_pauses_only_its_tasks_partitions():
    breakers = make_breakers(1, 30.0)
    a0, a1, b0 = TP(("unit.requests.a.normal", 0)), TP(("unit.requests.a.high", 1)), TP(("unit.requests.b.normal", 0))
    consumer = Consumer({a0, a1, b0})
    topics = {"a": {"unit.requests.a.normal", "unit.requests.a.high"}, "b": {"unit.requests.b.normal"}}
    pause = PartitionPause(breakers, lambda: consumer.assigned, consumer.pause, consumer.resume,
                           topics_of=topics.__getitem__)
    breakers.record("model:a", ModelDown("model:a", "all failed"))
    pause.sync()
    assert consumer.paused == {a0, a1}
    breakers.record("redis", RedisConnectionError("refused"))  # a dependency: everything
    pause.sync()
    assert consumer.paused == {a0, a1, b0}


class Result:
    def __init__(self, code: str | None) -> None:
        self.error = None if code is None else type("E", (), {"code": code})()


class Done:
    def __init__(self, code: str | None) -> None:
        self.result = Result(code)


class Model:
    """A model with a config; ``healthy``: whether it runs its warm-up input."""

    def __init__(self, healthy: bool) -> None:
        from helpers.worker_fakes import config

        self.config, self.name, self.healthy, self.warmups = config(), "echo-model", healthy, 0

    async def predict(self, model, inputs):
        assert model is self and set(inputs) == {"x"}
        self.warmups += 1
        if not self.healthy:
            raise InferenceFailed("the GPU is gone")
        return {"y": inputs["x"]}


async def test_a_failed_batch_counts_against_the_model_only_if_its_warmup_input_fails_too():
    breakers = make_breakers(2, 30.0)
    healthy, broken = Model(True), Model(False)
    failed = [Done("INFERENCE_FAILED")] * 3
    for _ in range(5):  # poisonous requests: the model runs its warm-up input
        await judge_batch(breakers, "a", failed, healthy, healthy.predict)
    assert not breakers.is_open("model:a") and healthy.warmups == 5
    await judge_batch(breakers, "a", [Done("INFERENCE_FAILED"), Done(None)], broken, broken.predict)
    await judge_batch(breakers, "a", [Done("INVALID_INPUT")] * 2, broken, broken.predict)
    assert broken.warmups == 0, "checked only when every request failed on the model"
    await judge_batch(breakers, "a", [Done("INFERENCE_FAILED")], broken, broken.predict)  # one counts
    with pytest.raises(ModelCircuitOpen):
        await judge_batch(breakers, "a", failed, broken, broken.predict)
    assert breakers.is_open("model:a")


async def test_a_model_that_keeps_failing_opens_its_breaker_and_its_requests_wait_not_fail(codec):
    """Through the real processor: a batch all of whose requests fail on the model opens the
    breaker (threshold 1); the batch is not answered, no dead letter is written; after the reset
    the batch runs again (the probe) on the recovered model and every request succeeds once."""
    from helpers.worker_fakes import config

    model, publisher = FakeModel(transient_failures=10**6), FakePublisher()
    model.config = config()  # its warm-up input fails too: the model, not the requests
    publisher.breakers = breakers = make_breakers(1, 0.3)
    processor = make(model, publisher, codec)
    events = [event(codec, [[1, 2]], i) for i in range(3)]
    acked: list[int] = []
    await processor.start()
    try:
        for source, _ in events:
            async def ack(offset=source.offset):
                acked.append(offset)
            await processor.handle(source, ack)
        deadline = time.monotonic() + 5
        while not breakers.is_open("model:echo") and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert breakers.is_open("model:echo") and gauge("model:echo") == OPEN
        model.transient_failures = 0  # the model recovers while its breaker is open
        await until_acked(acked, 3, timeout_s=5)
    finally:
        await processor.stop()
    assert sorted(acked) == [0, 1, 2]
    assert publisher.letters == [], "never dead-lettered because the breaker opened"
    assert sorted(r.status.value for r in publisher.results) == ["SUCCEEDED"] * 3
    assert len(publisher.results) == 3, "each answered once"
    assert breakers.value("model:echo") == CLOSED


def test_an_open_model_breaker_refuses_a_batch_before_it_takes_model_time():
    from streaminfer.streams.breakers import refuse_if_open

    breakers = make_breakers(1, 30.0)
    refuse_if_open(breakers, "a")
    breakers.record("model:a", ModelDown("model:a", "all failed"))
    with pytest.raises(ModelCircuitOpen):
        refuse_if_open(breakers, "a")
    refuse_if_open(breakers, "b")  # another task's model: runs
    refuse_if_open(None, "a")


def test_a_feature_store_breaker_pauses_only_the_tasks_that_use_it_and_holds_only_their_writes():
    from streaminfer.streams.breakers import wait_s

    breakers = make_breakers(1, 30.0)
    f0, p0 = TP(("unit.requests.tabular.normal", 0)), TP(("unit.requests.text.normal", 0))
    consumer = Consumer({f0, p0})
    topics = {"tabular": {"unit.requests.tabular.normal"}, "text": {"unit.requests.text.normal"}}
    pause = PartitionPause(breakers, lambda: consumer.assigned, consumer.pause, consumer.resume,
                           topics_of=topics.__getitem__, feature_tasks=lambda: ["tabular"])
    breakers.record("feature-store", FeatureStoreUnavailable("no db"))
    pause.sync()
    assert consumer.paused == {f0}
    assert wait_s(breakers) == 0.0, "a write that never touched the feature store goes on"
    assert wait_s(breakers, {"feature-store"}) > 29


async def test_a_batch_of_poisonous_requests_fails_alone_and_never_opens_the_model_breaker(codec):
    """Every request of the batch breaks the model, but the model runs its warm-up input: the
    requests fail with their dead letters as before, and the breaker stays closed (a client
    sending poison cannot hold a task's partitions)."""
    from helpers.worker_fakes import config

    model, publisher = FakeModel(), FakePublisher()
    model.config = config()
    publisher.breakers = breakers = make_breakers(1, 30.0)
    processor = make(model, publisher, codec)
    events = [event(codec, [[-1, 0]], i) for i in range(4)]
    acked: list[int] = []
    await processor.start()
    try:
        for source, _ in events:
            async def ack(offset=source.offset):
                acked.append(offset)
            await processor.handle(source, ack)
        await until_acked(acked, 4, timeout_s=5)
    finally:
        await processor.stop()
    assert sorted(acked) == [0, 1, 2, 3]
    assert sorted(r.status.value for r in publisher.results) == ["FAILED"] * 4
    assert len(publisher.letters) == 4
    assert breakers.value("model:echo") == CLOSED


def test_pausing_leaves_the_running_fetch_its_own_set_so_fetched_records_are_delivered():
    """faust's getmany() checks every record it fetched against the active set it read at the
    start; pausing must not empty that set under it (those records would be skipped, lost)."""
    from faust.transport.consumer import Consumer as FaustConsumer
    from faust.types import TP as FaustTP

    from streaminfer.streams.breakers import pause_fetching

    class Fake:
        _get_active_partitions = FaustConsumer._get_active_partitions
        resume_partitions = FaustConsumer.resume_partitions

        def __init__(self):
            self._active_partitions = {FaustTP("t", 0), FaustTP("t", 1)}
            self._paused_partitions = set()

        def assignment(self):
            return {FaustTP("t", 0), FaustTP("t", 1)}

    consumer = Fake()
    in_flight = consumer._get_active_partitions()  # what a running getmany() holds
    pause_fetching(consumer, {FaustTP("t", 0)})
    assert FaustTP("t", 0) in in_flight, "the running fetch still delivers what it fetched"
    assert consumer._get_active_partitions() == {FaustTP("t", 1)}, "the next fetch skips it"
    consumer.resume_partitions({FaustTP("t", 0)})
    assert consumer._get_active_partitions() == {FaustTP("t", 0), FaustTP("t", 1)}
    assert consumer._paused_partitions == set()
