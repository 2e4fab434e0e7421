"""Delivery on real servers when valid and hostile events share partitions: a worker killed with
SIGKILL mid-stream, thousands of valid-Avro-but-impossible events from hypothesis, writes that
fail inside a worker's real publisher, and a dead letter past the producer's size limit."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter, defaultdict

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from helpers.kafka import read_records, read_results
from helpers.waiting import count_results
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import (
    DeadLetter,
    InferenceRequest,
    InferenceResult,
    Priority,
    Status,
    Tensor,
)
from streaminfer.schemas.tensors import DataType
from streaminfer.schemas.topics import dlq_topic, request_topic, results_topic

pytestmark = pytest.mark.integration

TASK = "text-embedding"
CODEC = AvroCodec()


def valid_request(text: str | None = None, **fields) -> InferenceRequest:
    return InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        inputs=[
            Tensor.from_numpy(
                "text", np.array([text or f"valid {uuid.uuid4().hex[:8]}"], dtype=object)
            )
        ],
        **fields,
    )


def varint_beyond_int64() -> bytes:
    """A request whose created_at is a 10-byte varint worth more than int64 holds."""
    data = CODEC.encode(valid_request(created_at=2**63 - 1))
    return data.replace(b"\xfe" + b"\xff" * 8 + b"\x01", b"\xfe" + b"\xff" * 8 + b"\x7f")


def garbage(i: int) -> bytes:
    """A rotation of events no worker can serve: random bytes, impossible shapes, bad timestamps."""
    kind = i % 6
    if kind == 0:
        return os.urandom(16 + i % 50)
    if kind == 1:
        return CODEC.encode(
            InferenceRequest(
                request_id=str(uuid.uuid4()),
                task=TASK,
                inputs=[Tensor("text", DataType.BYTES, [2**62, 0], [])],
            )
        )
    if kind == 2:
        return CODEC.encode(valid_request(created_at=-1))
    if kind == 3:
        return varint_beyond_int64()
    if kind == 4:
        return CODEC.encode(
            InferenceRequest(
                request_id=str(uuid.uuid4()),
                task="not-served",
                inputs=[Tensor("x", DataType.FP32, [1], b"\0" * 4)],
            )
        )
    return b""


async def produce(
    bootstrap: str, events: list[tuple[str, int, bytes | None, bytes]]
) -> list[tuple[str, int, int]]:
    """``(topic, partition, key, value)`` in order; returns where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 << 20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition)
            for topic, partition, key, value in events
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in metadata]


async def committed(bootstrap: str, group: str, partitions) -> dict[tuple[str, int], int]:
    from aiokafka import TopicPartition

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # NOTE: partitions named: Tansu does not answer the "all partitions" form of the request
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(t, p) for t, p in partitions]
        )
    finally:
        await admin.close()
    return {
        (tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0
    }


async def dead_letters(
    bootstrap: str, prefix: str, until, timeout_s: float
) -> dict[tuple[str, int, int], list]:
    letters = await read_records(
        bootstrap,
        dlq_topic(prefix),
        DeadLetter,
        None,
        lambda g: until(
            {(lt.source_topic, lt.partition, lt.offset) for group in g.values() for lt in group}
        ),
        timeout_s,
    )
    by_source: dict[tuple[str, int, int], list] = defaultdict(list)
    for group in letters.values():
        for letter in group:
            by_source[(letter.source_topic, letter.partition, letter.offset)].append(letter)
    return by_source


@pytest.mark.slow
async def test_sigkill_with_garbage_on_the_same_partitions_loses_nothing(make_stack, own_redis):
    from streaminfer.embedded import redis_address

    stack = make_stack(redis_url=redis_address(own_redis), STREAMINFER_TASKS=TASK)
    stack.add_worker()
    stack.add_worker()
    topic = request_topic(stack.prefix, TASK, Priority.NORMAL)
    events, valid_ids, kinds = [], [], []
    for i in range(1200):
        request = valid_request()
        partition = i % 6
        valid_ids.append(request.request_id)
        events.append((topic, partition, request.request_id.encode(), CODEC.encode(request)))
        kinds.append("valid")
        for j in range(2 if i % 4 == 3 else 1):  # one after each valid request, two after every 4th
            events.append((topic, partition, b"junk", garbage(i + j)))
            kinds.append("garbage")
    placed = await produce(stack.bootstrap, events)
    junk = {where for where, kind in zip(placed, kinds, strict=True) if kind == "garbage"}
    valid_at = {where for where, kind in zip(placed, kinds, strict=True) if kind == "valid"}

    deadline = time.monotonic() + 120
    while await count_results(stack.redis_url, stack.prefix) < 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    victim = stack.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    done_at_kill = await count_results(stack.redis_url, stack.prefix)

    results = await read_results(stack.bootstrap, stack.prefix, valid_ids, timeout_s=240)
    letters = await dead_letters(
        stack.bootstrap, stack.prefix, lambda seen: junk <= seen, timeout_s=120
    )
    assert set(results) == set(valid_ids), (
        f"lost {len(set(valid_ids) - set(results))} valid requests"
    )
    for rid, copies in results.items():
        assert all(c.status is Status.SUCCEEDED for c in copies), rid
        # a copy can only be the one stored result published again after the kill
        assert len({(c.worker_id, c.completed_at) for c in copies}) == 1, rid
    assert junk <= set(letters), f"{len(junk - set(letters))} garbage events without a dead letter"
    assert not valid_at & set(letters), "no valid request was dead-lettered"
    for where, copies in letters.items():
        assert len({(lt.error_code, lt.at) for lt in copies}) == 1, (
            f"{where}: {len(copies)} distinct letters"
        )
    assert stack.workers[1].poll() is None, "the surviving worker is alive"
    republished = sum(len(c) - 1 for c in results.values())
    relettered = sum(len(c) - 1 for c in letters.values())
    print(
        f"\nkill -9 after {done_at_kill} of 1200 results, {len(junk)} garbage events interleaved: "
        f"lost 0, results re-published {republished}, dead letters re-published {relettered}"
    )


# --- hypothesis: valid Avro that says impossible things ------------------------------------

BIG = [2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63), -1]
TIMESTAMPS = st.one_of(
    st.integers(0, 4_102_444_800_000),
    st.sampled_from([-(2**63), -1, 2**63 - 1, 253_402_300_800_000, 2**53]),
)

tensors = st.builds(
    Tensor,
    name=st.sampled_from(["text", "features", "x", ""]),
    datatype=st.sampled_from(list(DataType)),
    shape=st.lists(st.one_of(st.integers(-2, 40), st.sampled_from(BIG)), max_size=4),
    data=st.one_of(
        st.binary(max_size=48),
        st.lists(st.binary(max_size=8), max_size=6),
        st.sampled_from([b"\0" * 120, [b"x" * 300_000], ["e\u0301".encode()] * 3]),
    ),
)


@st.composite
def hostile_event(draw) -> tuple[str, bytes, str | None]:
    """(task whose topic it goes to, value, request_id when a result may answer it)."""
    if draw(st.integers(0, 9)) == 0:  # not even Avro, or Avro of something else
        value = draw(
            st.one_of(st.binary(max_size=60), st.binary(max_size=60).map(lambda b: b"\xc3\x01" + b))
        )
        return TASK, value, None
    id_kind = draw(st.sampled_from(["uuid"] * 6 + ["empty", "long", "control"]))
    rid = {"uuid": str(uuid.uuid4()), "empty": "", "long": "r" * 5000, "control": "a\x00b"}[id_kind]
    task = draw(st.sampled_from([TASK, TASK, "tabular-classify", "not-served", "", "T" * 300]))
    request = InferenceRequest(
        request_id=rid,
        task=task,
        model_version=draw(st.sampled_from([None, None, "1", "999", "", "../../etc"])),
        priority=draw(st.sampled_from(list(Priority))),
        inputs=draw(st.lists(tensors, max_size=3)),
        parameters=draw(
            st.dictionaries(
                st.sampled_from(["cache", "collection", ""]), st.text(max_size=12), max_size=2
            )
        ),
        created_at=draw(TIMESTAMPS),
        deadline_at=draw(st.one_of(st.none(), TIMESTAMPS)),
        client_id=draw(st.sampled_from([None, "", "c" * 1000])),
        trace=draw(st.sampled_from([{}, {"traceparent": "garbage"}, {"": ""}])),
    )
    topic_task = task if task in (TASK, "tabular-classify") else TASK
    return topic_task, CODEC.encode(request), rid if id_kind == "uuid" else None


@pytest.fixture(scope="module")
def hostile_stack(kafka_server, redis_server, model_repository):
    from conftest import Stack

    stack = Stack(
        kafka_server, redis_server, model_repository, STREAMINFER_TASKS=f"{TASK},tabular-classify"
    )
    try:
        stack.add_worker()
        yield stack
    finally:
        stack.close()


class Answers:
    """Results and dead letters of a stack, read in the background for the whole module."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.results: dict[str, list[InferenceResult]] = defaultdict(list)
        self.letters: dict[tuple[str, int, int], list[DeadLetter]] = defaultdict(list)

    async def __aenter__(self) -> Answers:
        topics = [results_topic(self.stack.prefix, t) for t in (TASK, "tabular-classify")]
        self._consumer = AIOKafkaConsumer(
            *topics,
            dlq_topic(self.stack.prefix),
            bootstrap_servers=self.stack.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        dlq = dlq_topic(self.stack.prefix)
        while True:
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                for m in records:
                    if m.topic == dlq:
                        letter = CODEC.decode(m.value, DeadLetter)
                        self.letters[(letter.source_topic, letter.partition, letter.offset)].append(
                            letter
                        )
                    else:
                        self.results[m.key.decode()].append(CODEC.decode(m.value, InferenceResult))

    async def caught_up(self, timeout_s: float) -> bool:
        """Until everything on the answer topics now has been read (their end offsets reached)."""
        deadline = time.monotonic() + timeout_s
        partitions = self._consumer.assignment()
        assert len(partitions) == 3 * 6, partitions  # results of both tasks and the DLQ
        ends = await self._consumer.end_offsets(list(partitions))
        while time.monotonic() < deadline:
            positions = {tp: await self._consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                return True
            await asyncio.sleep(0.05)
        return False

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


HOSTILE_PER_EXAMPLE = 100
EXAMPLES = int(os.environ.get("STREAMINFER_TEST_HOSTILE_EXAMPLES", "20"))
TOTALS = Counter()


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(st.lists(hostile_event(), min_size=HOSTILE_PER_EXAMPLE, max_size=HOSTILE_PER_EXAMPLE))
async def test_hostile_valid_avro_is_answered_once_and_the_worker_lives(hostile_stack, drawn):
    stack = hostile_stack
    events, expect_result, valid_ids = [], [], []
    for i, (task, value, rid) in enumerate(drawn):
        events.append((request_topic(stack.prefix, task, Priority.NORMAL), i % 6, b"k", value))
        expect_result.append(rid)
        if i % 5 == 0:  # valid requests in between, on the same partitions
            request = valid_request()
            valid_ids.append(request.request_id)
            events.append(
                (
                    request_topic(stack.prefix, TASK, Priority.NORMAL),
                    i % 6,
                    request.request_id.encode(),
                    CODEC.encode(request),
                )
            )
            expect_result.append(request.request_id)
    placed = await produce(stack.bootstrap, events)
    ends: dict[tuple[str, int], int] = {}
    for topic, partition, offset in placed:
        ends[(topic, partition)] = max(ends.get((topic, partition), 0), offset + 1)

    async with Answers(stack) as answers:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = await committed(stack.bootstrap, f"{stack.prefix}-workers", list(ends))
            if all(done.get(tp, 0) >= end for tp, end in ends.items()):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"not every event was committed: {done} vs {ends}")
        # committed means answered: the answers are on their topics, so reading up to their end
        # offsets (taken now) reads them all
        assert await answers.caught_up(timeout_s=30), "the answer topics were not read to their end"
    assert stack.workers[0].poll() is None, "the worker is alive"
    for where, rid in zip(placed, expect_result, strict=True):
        letters = answers.letters.get(where, [])
        results = answers.results.get(rid, []) if rid else []
        assert letters or results, f"event at {where} (request {rid}) has no answer"
        assert len(letters) <= 1, f"{where}: {len(letters)} dead letters"
        assert len({(r.worker_id, r.completed_at) for r in results}) <= 1, f"{rid}: several results"
    for rid in valid_ids:
        assert [r.status for r in answers.results[rid]] == [Status.SUCCEEDED], rid
    TOTALS["hostile"] += len(drawn)
    TOTALS["valid"] += len(valid_ids)
    TOTALS["dead letters"] += sum(1 for w in placed if w in answers.letters)
    print(f"\nhostile events so far: {dict(TOTALS)}")
