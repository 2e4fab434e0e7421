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
    FeatureStoreDown,
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


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (RedisConnectionError("refused"), "redis"),
        (KafkaTimeoutError(), "kafka"),
        (RegistryUnavailable("down"), "registry"),
        (FeatureStoreDown("feature-store:tab", "no db"), "feature-store:tab"),
        (ModelDown("model:a:1", "all failed"), "model:a:1"),
    ],
)
def test_each_dependency_error_names_its_breaker(error, name):
    assert dependency_of(error) == name


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        OSError("which one?"),
        KeyError("x"),
        FeatureStoreUnavailable("which task's?"),
    ],
)
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
    assert len(write.attempts) == 4 and write.attempts[-1] - opened >= 0.5, (
        "one probe, after the reset"
    )
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
    assert await asyncio.wait_for(task, 2) is False, (
        "given up: its events stay unacked, redelivered"
    )
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

    def paused_by(self, breakers, **options) -> PartitionPause:
        """A PartitionPause over this consumer."""
        return PartitionPause(breakers, lambda: self.assigned, self.pause, self.resume, **options)


def test_partitions_pause_while_open_and_resume_once_closed():
    breakers = make_breakers(1, 0.05)
    consumer = Consumer({TP(("t", 0)), TP(("t", 1))})
    pause = consumer.paused_by(
        breakers,
    )
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
    a0, a1, b0 = (
        TP(("unit.requests.a.normal", 0)),
        TP(("unit.requests.a.high", 1)),
        TP(("unit.requests.b.normal", 0)),
    )
    consumer = Consumer({a0, a1, b0})
    topics = {
        "a": {"unit.requests.a.normal", "unit.requests.a.high"},
        "b": {"unit.requests.b.normal"},
    }
    pause = consumer.paused_by(
        breakers,
        topics_of=topics.__getitem__,
    )
    breakers.record("model:a:1", ModelDown("model:a:1", "all failed"))
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
        await judge_batch(breakers, "model:a:1", failed, healthy, healthy.predict)
    assert not breakers.is_open("model:a:1") and healthy.warmups == 5
    await judge_batch(
        breakers, "model:a:1", [Done("INFERENCE_FAILED"), Done(None)], broken, broken.predict
    )
    await judge_batch(breakers, "model:a:1", [Done("INVALID_INPUT")] * 2, broken, broken.predict)
    assert broken.warmups == 0, "checked only when every request failed on the model"
    await judge_batch(
        breakers, "model:a:1", [Done("INFERENCE_FAILED")], broken, broken.predict
    )  # one counts
    with pytest.raises(ModelCircuitOpen):
        await judge_batch(breakers, "model:a:1", failed, broken, broken.predict)
    assert breakers.is_open("model:a:1")


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
        while not breakers.is_open("model:echo:1") and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert breakers.is_open("model:echo:1") and gauge("model:echo:1") == OPEN
        model.transient_failures = 0  # the model recovers while its breaker is open
        await until_acked(acked, 3, timeout_s=5)
    finally:
        await processor.stop()
    assert sorted(acked) == [0, 1, 2]
    assert publisher.letters == [], "never dead-lettered because the breaker opened"
    assert sorted(r.status.value for r in publisher.results) == ["SUCCEEDED"] * 3
    assert len(publisher.results) == 3, "each answered once"
    assert breakers.value("model:echo:1") == CLOSED


def test_an_open_model_breaker_refuses_a_batch_before_it_takes_model_time():
    from streaminfer.streams.breakers import TaskCircuitOpen, refuse_if_open

    breakers = make_breakers(1, 30.0)
    refuse_if_open(breakers, "model:a:1")
    breakers.record("model:a:1", ModelDown("model:a:1", "all failed"))
    with pytest.raises(ModelCircuitOpen):
        refuse_if_open(breakers, "model:a:1")
    refuse_if_open(breakers, "model:b:1")  # another task's model: runs
    refuse_if_open(None, "model:a:1")
    breakers.record("feature-store:a", FeatureStoreDown("feature-store:a", "no db"))
    with pytest.raises(TaskCircuitOpen) as refused:
        refuse_if_open(breakers, "feature-store:a")
    assert not isinstance(refused.value, ModelDown)


def test_a_feature_store_breaker_pauses_only_its_tasks_partitions_and_holds_only_its_writes():
    """One breaker per task's feature store: tasks may read different databases, and one whose
    database is gone for good must not hold another's partitions (no probe of B's would ever
    close a shared breaker that A's held batch keeps failing)."""
    from streaminfer.streams.breakers import wait_s

    breakers = make_breakers(1, 30.0)
    f0, g0, p0 = (
        TP(("unit.requests.tabular.normal", 0)),
        TP(("unit.requests.churn.normal", 0)),
        TP(("unit.requests.text.normal", 0)),
    )
    consumer = Consumer({f0, g0, p0})
    topics = {
        "tabular": {"unit.requests.tabular.normal"},
        "churn": {"unit.requests.churn.normal"},
        "text": {"unit.requests.text.normal"},
    }
    pause = consumer.paused_by(
        breakers,
        topics_of=topics.__getitem__,
    )
    breakers.record("feature-store:tabular", FeatureStoreDown("feature-store:tabular", "no db"))
    pause.sync()
    assert consumer.paused == {f0}, "churn reads another database: it goes on"
    assert wait_s(breakers) == 0.0, "a write that never touched the feature store goes on"
    assert wait_s(breakers, {"feature-store:churn"}) == 0.0
    assert wait_s(breakers, {"feature-store:tabular"}) > 29


def test_partitions_fetch_again_once_the_probe_is_due_so_new_events_can_probe():
    """A breaker with no held batch left (a rebalance released them) must still get a probe:
    once due, its partitions fetch again; a failed probe pauses them again."""
    breakers = make_breakers(1, 0.05)
    a0 = TP(("unit.requests.a.normal", 0))
    consumer = Consumer({a0})
    pause = consumer.paused_by(
        breakers,
        topics_of=lambda task: {"unit.requests.a.normal"},
    )
    breakers.record("model:a:1", ModelDown("model:a:1", "all failed"))
    pause.sync()
    assert consumer.paused == {a0}
    time.sleep(0.06)
    pause.sync()
    assert consumer.paused == set(), "due for a probe: fetching again"
    breakers.record("model:a:1", ModelDown("model:a:1", "the probe failed"))
    pause.sync()
    assert consumer.paused == {a0}


def test_a_pause_undone_by_the_consumer_is_made_again():
    """faust forgets its paused set in an eager rebalance, and its flow control
    (``on_buffer_drop``) makes a partition active again: the next sync pauses it again."""
    breakers = make_breakers(1, 30.0)
    t0, t1 = TP(("t", 0)), TP(("t", 1))
    consumer = Consumer({t0, t1})
    pause = consumer.paused_by(
        breakers,
        paused_now=lambda: consumer.paused,
    )
    breakers.record("redis", RedisConnectionError("refused"))
    pause.sync()
    assert consumer.paused == {t0, t1}
    consumer.paused = set()  # a rebalance gave the same partitions back, unpaused
    pause.sync()
    assert consumer.paused == {t0, t1}
    consumer.paused.discard(t1)  # flow control resumed one
    pause.sync()
    assert consumer.paused == {t0, t1}


def test_paused_partitions_reads_what_a_faust_consumer_really_skips():
    from faust.transport.consumer import Consumer as FaustConsumer
    from faust.types import TP as FaustTP

    from streaminfer.streams.breakers import pause_fetching, paused_partitions

    class Fake:
        _get_active_partitions = FaustConsumer._get_active_partitions
        on_buffer_drop = FaustConsumer.on_buffer_drop

        def __init__(self):
            self._active_partitions = {FaustTP("t", 0), FaustTP("t", 1)}
            self._paused_partitions = set()
            self._buffered_partitions = {FaustTP("t", 0)}

    consumer = Fake()
    pause_fetching(consumer, {FaustTP("t", 0)})
    assert paused_partitions(consumer) == {FaustTP("t", 0)}
    consumer.on_buffer_drop(FaustTP("t", 0))  # faust's flow control makes it active again
    assert paused_partitions(consumer) == set()


async def test_success_closes_only_the_shared_breakers_the_write_failed_on():
    """A Redis-only write that failed on Redis and then succeeded says nothing of Kafka, nor of
    a task's model (a held batch answered from the cache ran no model)."""
    breakers = make_breakers(1, 0.2)
    breakers.record("kafka", KafkaTimeoutError())
    breakers.record("model:a:1", ModelDown("model:a:1", "all failed"))
    writer = OutcomeWriter(Publisher(breakers), AvroCodec(), "w1")
    errors = [RedisConnectionError("refused"), ModelCircuitOpen("model:a:1", "held")]

    async def write():
        if errors:
            raise errors.pop(0)

    assert await asyncio.wait_for(writer.until_written("a lookup", write), 5) is True
    assert breakers.value("redis") == CLOSED
    assert breakers.is_open("kafka"), "the write never used Kafka"
    assert breakers.is_open("model:a:1"), "judged by judge_batch only, where the model ran"


async def test_while_a_rebalance_drains_held_and_failing_writes_give_up_then_wait_again_after():
    """A rebalance must not wait for a breaker, nor for a write that keeps failing: while it
    drains, a held write gives up (its events are redelivered by whoever owns the partitions
    next), and so does one that starts meanwhile (a batch that finished computing, a submit
    that waited for a slot) or fails with an error that names no breaker. After it, writes wait
    as usual."""
    breakers = make_breakers(1, 60.0)
    writer = OutcomeWriter(Publisher(breakers), AvroCodec(), "w1")
    held = Flaky(ModelDown("model:a:1", "all failed"))
    task = asyncio.create_task(writer.until_written("a held batch", held))
    while not breakers.is_open("model:a:1"):
        await asyncio.sleep(0.01)
    writer.release_held()
    assert await asyncio.wait_for(task, 2) is False
    breakers.record("kafka", KafkaTimeoutError())
    starting = Flaky(KafkaTimeoutError())
    assert (
        await asyncio.wait_for(writer.until_written("a write begun while draining", starting), 2)
        is False
    )
    assert starting.attempts == [], "Kafka's breaker is open: not even tried"
    breakers.reset("kafka")
    bare = Flaky(OSError("which dependency?"))
    assert await asyncio.wait_for(writer.until_written("a failing write", bare), 2) is False
    assert len(bare.attempts) == 1
    writer.hold_again()
    later = Flaky(ModelDown("model:a:1", "all failed"))
    task = asyncio.create_task(writer.until_written("a later batch", later))
    await asyncio.sleep(0.1)
    assert not task.done(), "after the rebalance: held as usual"
    writer.closed = True
    assert await asyncio.wait_for(task, 2) is False


async def test_a_submit_waiting_for_a_slot_while_draining_gives_up_too(codec):
    """With every write slot taken by held writes, a finished batch waits in ``submit``; the
    release frees the slots and the waiting write, started under the release, gives up too."""
    breakers = make_breakers(1, 60.0)
    publisher = FakePublisher()
    publisher.breakers = breakers
    writer = OutcomeWriter(publisher, codec, "w1", max_writes=2)
    breakers.record("redis", RedisConnectionError("refused"))
    given_up: list[int] = []

    class Entry:
        def __init__(self, n):
            self.n = n

    def give_up(entry):
        given_up.append(entry.n)

    writer.ledger.give_up = give_up
    from streaminfer.streams.outcomes import Outcome

    def outcome(n):
        source, request = event(codec, [[1, 2]], n)
        return Outcome(source=source, entry=Entry(n), request=request)

    for n in range(2):
        await writer.submit([outcome(n)])
    waiting = asyncio.create_task(writer.submit([outcome(2)]))
    await asyncio.sleep(0.1)
    assert not waiting.done(), "no free slot"
    writer.release_held()
    await asyncio.wait_for(waiting, 2)
    await asyncio.wait_for(writer.flush(), 2)
    assert sorted(given_up) == [0, 1, 2]


async def test_a_slow_attempt_is_logged_with_where_it_waits(monkeypatch, caplog):
    from streaminfer.streams import outcomes

    monkeypatch.setattr(outcomes, "SLOW_ATTEMPT_S", 0.05)
    writer = OutcomeWriter(Publisher(make_breakers()), AvroCodec(), "w1")

    async def stuck_in_redis():
        await asyncio.sleep(0.12)

    async def write():
        await stuck_in_redis()

    with caplog.at_level("WARNING"):
        assert await writer.until_written("a slow write", write) is True
    slow = [r.getMessage() for r in caplog.records if "running for over" in r.getMessage()]
    assert slow and "stuck_in_redis" in slow[0]


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
    assert breakers.value("model:echo:1") == CLOSED


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


class Versioned(FakeModel):
    def __init__(self, version: str, failing: bool) -> None:
        from helpers.worker_fakes import config

        super().__init__(transient_failures=10**6 if failing else 0)
        self.version, self.config = version, config()  # with a config: its warm-up input fails too


class TwoVersions:
    """A repository whose default version moves from ``1`` (a model whose device is gone) to
    ``2`` (healthy) and then ``3`` (healthy), as a rollout does."""

    def __init__(self) -> None:
        from helpers.worker_fakes import TASK, config

        self.models = {
            "1": Versioned("1", True),
            "2": Versioned("2", False),
            "3": Versioned("3", False),
        }
        self.configs = {TASK: config()}
        self.unloaded: list[str] = []

    def deploy(self, *versions: str) -> None:
        import dataclasses

        from helpers.worker_fakes import TASK

        self.configs[TASK] = dataclasses.replace(
            self.configs[TASK], versions=versions, default_version=versions[-1]
        )

    def get_config(self, task):
        return self.configs[task]

    def load(self, task, version=None):
        return self.models[version or "1"]

    def refresh(self) -> None:
        pass

    def unload(self, task, version):
        self.unloaded.append(version)


async def test_a_new_version_is_not_held_by_the_old_ones_breaker_and_the_old_ones_batch_is_answered(
    codec,
):
    """v1's device is gone: its batch is held by ``model:echo:1`` and the task's partitions
    pause. v2 rolls out: it serves at once (its own breaker), nothing is paused for v1 any more,
    and v1's held batch is answered as it comes out (FAILED, a dead letter, as before the
    breakers): a version no longer serving the task holds nothing. Requests pinned to v1 are
    answered the same way, never queued behind its breaker. When v1 is no longer served at all
    (v3 rolls out) it is unloaded, with its breaker and metric series."""
    from helpers.worker_fakes import PREFIX, TASK

    from streaminfer.streams.processor import RequestProcessor

    repository, publisher = TwoVersions(), FakePublisher()
    publisher.breakers = breakers = make_breakers(1, 60.0)
    processor = RequestProcessor(
        repository=repository,
        publisher=publisher,
        codec=codec,
        prefix=PREFIX,
        worker_id="w1",
        tasks=[TASK],
        retry_backoff_s=0.001,
    )
    pause = PartitionPause(
        breakers,
        lambda: {TP(("unit.requests.echo.normal", 0))},
        lambda tps: None,
        lambda tps: None,
        topics_of=lambda task: {"unit.requests.echo.normal"},
        serving=processor.serving,
    )
    acked: list[int] = []

    async def send(offset: int, **fields) -> None:
        source, _ = event(codec, [[1, 2]], offset, **fields)

        async def ack(offset=offset):
            acked.append(offset)

        await processor.handle(source, ack)

    def answered() -> list[tuple[str, str]]:
        return [(r.model_version, r.status.value) for r in publisher.results]

    await processor.start()
    try:
        await send(0)
        deadline = time.monotonic() + 5
        while not breakers.is_open("model:echo:1") and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        pause.sync()
        assert pause.paused, "v1 serves the task: its partitions pause"
        assert gauge("model:echo:1") == OPEN
        repository.deploy("1", "2")
        await processor.reload_models()
        pause.sync()
        assert not pause.paused, "v2 serves now: v1's breaker pauses nothing"
        await until_acked(acked, 1, timeout_s=5)
        assert answered() == [("1", "FAILED")], "v1's held batch is answered, not held for 60 s"
        await send(1)
        await send(2, model_version="1")  # pinned to the dead v1: answered, not queued behind it
        await until_acked(acked, 3, timeout_s=5)
        assert sorted(answered()) == [("1", "FAILED"), ("1", "FAILED"), ("2", "SUCCEEDED")]
        repository.deploy("1", "2", "3")  # v1 is no longer served
        await processor.reload_models()
        for _ in range(100):
            if repository.unloaded:
                break
            await asyncio.sleep(0.02)
    finally:
        await processor.stop()
    assert sorted(acked) == [0, 1, 2]
    assert all(
        r.error.code == "INFERENCE_FAILED" for r in publisher.results if r.model_version == "1"
    )
    assert len(publisher.letters) == 2
    assert repository.unloaded == ["1"]
    assert "model:echo:1" not in breakers.names(), "an unloaded version's breaker is gone"
    assert gauge("model:echo:1") is None, "and so is its metric series"


async def test_a_rebalance_releases_the_batches_a_breaker_holds(codec):
    """faust waits on a rebalance until every delivered event is acked or given up: a batch held
    by an open breaker must be given up (redelivered to the next owner), not waited for."""
    from helpers.worker_fakes import config

    model, publisher = FakeModel(transient_failures=10**6), FakePublisher()
    model.config = config()
    publisher.breakers = breakers = make_breakers(1, 60.0)
    processor = make(model, publisher, codec)
    released: list[int] = []
    acked: list[int] = []
    await processor.start()
    try:
        for offset in range(2):
            source, _ = event(codec, [[1, 2]], offset)

            async def ack(offset=offset):
                acked.append(offset)

            await processor.handle(source, ack, lambda offset=offset: released.append(offset))
        deadline = time.monotonic() + 5
        while not breakers.is_open("model:echo:1") and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await processor.shed_queued()  # faust's on_partitions_revoked, via WorkerApp.on_draining
        deadline = time.monotonic() + 3
        while len(released) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sorted(released) == [0, 1] and acked == []
        await processor.resume()
    finally:
        await processor.stop()
    assert publisher.results == [] and publisher.letters == [], "nothing answered: redelivered"


async def test_a_refusal_is_not_counted_as_a_failure_of_what_it_guards():
    """``refuse_if_open`` raises before any call: counting it would reopen a breaker whose probe
    has just become due (and drop the real probe's outcome)."""
    breakers = make_breakers(1, 60.0)
    writer = OutcomeWriter(Publisher(breakers), AvroCodec(), "w1")
    refusals = [ModelCircuitOpen("model:a:1", "refused")]

    async def write():
        if refusals:
            raise refusals.pop()

    assert await asyncio.wait_for(writer.until_written("a batch", write), 5) is True
    assert breakers.value("model:a:1") == CLOSED and breakers.breaker("model:a:1").fail_counter == 0


def test_a_breaker_due_for_a_probe_shows_half_open_though_nothing_calls_it():
    from streaminfer.schemas.breakers import HALF_OPEN

    breakers = make_breakers(1, 0.05)
    pause = PartitionPause(breakers, lambda: set(), lambda tps: None, lambda tps: None)
    breakers.record("model:a:1", ModelDown("model:a:1", "all failed"))
    pause.sync()
    assert gauge("model:a:1") == OPEN
    time.sleep(0.06)
    pause.sync()
    assert breakers.value("model:a:1") == HALF_OPEN and gauge("model:a:1") == HALF_OPEN
    breakers.record("model:a:1", ModelDown("model:a:1", "the probe failed"))
    assert breakers.is_open("model:a:1")
