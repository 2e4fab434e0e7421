"""Delivery off the happy path, with fakes: answers out of order never ack past an unanswered
event; hostile events are answered, never crash; every write failing once, and for a while,
loses nothing and yields one result per request."""

from __future__ import annotations

import random
import time
import uuid

import numpy as np
import pytest
from helpers.worker_fakes import (
    PREFIX,
    TASK,
    FakeModel,
    FakePublisher,
    Faulty,
    event,
    feed,
    make,
    run,
    until_acked,
)

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import RegistryUnavailable
from streaminfer.schemas.records import AuditType, InferenceRequest, Status, Tensor
from streaminfer.schemas.tensors import DataType
from streaminfer.streams.publisher import StoredResult
from streaminfer.streams.requests import SourceEvent


@pytest.fixture
def codec():
    return AvroCodec()


class SlowModel(FakeModel):
    def predict_batch(self, inputs):
        time.sleep(0.2)
        return super().predict_batch(inputs)


def raw(payload: bytes, offset: int, partition: int = 0) -> SourceEvent:
    return SourceEvent(f"{PREFIX}.requests.{TASK}.normal", partition, offset, b"k", payload)


def hostile(codec, offset: int, **overrides) -> tuple[SourceEvent, InferenceRequest]:
    fields = dict(
        request_id=str(uuid.uuid4()),
        task=TASK,
        inputs=[Tensor("x", DataType.FP32, [2**62, 0], b"")],
    )
    fields.update(overrides)
    request = InferenceRequest(**fields)
    return SourceEvent(
        f"{PREFIX}.requests.{TASK}.normal",
        0,
        offset,
        request.request_id.encode(),
        codec.encode(request),
    ), request


async def test_a_rejection_answered_first_is_acked_only_after_the_queued_request_before_it(codec):
    model, publisher = SlowModel(), FakePublisher()
    processor = make(model, publisher, codec)
    valid, valid_req = event(codec, [[1, 2]], 0)
    acked: list[int] = []
    await processor.start()
    try:
        await feed(processor, [valid, raw(b"garbage", 1)], acked, timeout_s=0.1)
        assert publisher.letters, "the garbage is answered at once"
        assert acked == [], "but its offset waits for the queued request before it"
        await until_acked(acked, 2)
    finally:
        await processor.stop()
    assert acked == [0, 1]
    assert [r.request_id for r in publisher.results] == [valid_req.request_id]


async def test_a_shape_of_2_62_elements_is_rejected_and_the_worker_goes_on(codec):
    model, publisher = FakeModel(), FakePublisher()
    bad, bad_req = hostile(codec, 0)
    good, good_req = event(codec, [[1, 2]], 1)
    acked = await run(make(model, publisher, codec), [bad, good])
    assert acked == [0, 1]
    statuses = {r.request_id: r.status for r in publisher.results}
    assert statuses == {bad_req.request_id: Status.REJECTED, good_req.request_id: Status.SUCCEEDED}
    letter = publisher.letters[0][0]
    assert letter.error_code == "INVALID_TENSOR" and letter.payload == bad.value


@pytest.mark.parametrize(
    "overrides, code, status",
    [
        ({"created_at": -5}, "INVALID_TIMESTAMP", Status.REJECTED),
        ({"created_at": 2**62}, "INVALID_TIMESTAMP", Status.REJECTED),
        ({"deadline_at": 2**63 - 1}, "INVALID_TIMESTAMP", Status.REJECTED),
        ({"model_version": "../../etc"}, "MODEL_VERSION_NOT_FOUND", Status.FAILED),
        ({"inputs": []}, "INVALID_INPUT", Status.FAILED),
        (
            {"inputs": [Tensor("x", DataType.FP32, [1, 2], b"\0" * 8)] * 2},
            "INVALID_TENSOR",
            Status.REJECTED,
        ),
        (
            {"inputs": [Tensor("x", DataType.BYTES, [1, 2], [b"a", b"b"])]},
            "INVALID_INPUT",
            Status.FAILED,
        ),
        (
            {"inputs": [Tensor("x", DataType.FP32, [3, 2], b"\0" * 8)]},
            "INVALID_TENSOR",
            Status.REJECTED,
        ),
        ({"inputs": [Tensor("x", DataType.FP32, [-1, 2], b"")]}, "INVALID_TENSOR", Status.REJECTED),
    ],
)
async def test_impossible_requests_get_a_result_and_a_dead_letter(codec, overrides, code, status):
    model, publisher = FakeModel(), FakePublisher()
    source, request = hostile(
        codec, 0, **{"inputs": [Tensor("x", DataType.FP32, [1, 2], b"\0" * 8)], **overrides}
    )
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [0] and model.calls == []
    result = publisher.results[0]
    assert (result.status, result.error.code) == (status, code), result.error
    assert [letter.error_code for letter, _ in publisher.letters] == [code]


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"request_id": ""}, "INVALID_REQUEST_ID"),
        ({"request_id": "x" * 10_000}, "INVALID_REQUEST_ID"),
        ({"request_id": "bad\nid"}, "INVALID_REQUEST_ID"),
        ({"task": "not-served"}, "TASK_NOT_FOUND"),
        ({"task": "t" * 100_000}, "TASK_NOT_FOUND"),
    ],
)
async def test_events_that_name_no_answerable_request_are_dead_lettered_only(
    codec, overrides, code
):
    model, publisher = FakeModel(), FakePublisher()
    source, _ = hostile(codec, 3, **overrides)
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [3] and publisher.results == []
    assert [letter.error_code for letter, _ in publisher.letters] == [code]
    assert len(publisher.letters[0][0].error_message) <= 2001


def _varint_beyond_int64(codec) -> bytes:
    """A request whose created_at is a 10-byte varint worth more than 2**64."""
    request = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        created_at=2**63 - 1,
        inputs=[Tensor("x", DataType.FP32, [1, 2], b"\0" * 8)],
    )
    data = codec.encode(request)
    top = b"\xfe" + b"\xff" * 8 + b"\x01"  # zig-zag of 2**63-1
    assert data.count(top) == 1
    return data.replace(top, b"\xfe" + b"\xff" * 8 + b"\x7f")


async def test_a_varint_beyond_int64_is_dead_lettered_not_a_lost_batch(codec):
    model, publisher = FakeModel(), FakePublisher()
    good, good_req = event(codec, [[1, 2]], 1)
    acked = await run(make(model, publisher, codec), [raw(_varint_beyond_int64(codec), 0), good])
    assert acked == [0, 1]
    assert [r.request_id for r in publisher.results] == [good_req.request_id]
    assert publisher.letters[0][0].error_code == "UNDECODABLE"


async def test_a_result_whose_publish_fails_once_is_published_on_the_retry(codec):
    model, publisher = (
        FakeModel(),
        Faulty("publish_results", times=1, error=TimeoutError("kafka send timed out")),
    )
    source, request = event(codec, [[1, 1]])
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [0] and publisher.published == [request.request_id]
    assert publisher.stored[request.request_id].published
    types = [a.type for a in publisher.audits if a.request_id == request.request_id]
    assert AuditType.DUPLICATE not in types and types.count(AuditType.SUCCEEDED) == 1


async def test_a_redelivered_request_stored_but_never_published_is_published_not_run(codec):
    source, request = event(codec, [[1, 1]])
    model = FakeModel()
    publisher = FakePublisher({request.request_id: StoredResult(b"stored-avro", False)})
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [0] and model.calls == []
    assert publisher.published == [request.request_id]
    assert publisher.stored[request.request_id].avro == b"stored-avro", (
        "the stored result, not a new one"
    )


async def test_a_dead_letter_that_fails_after_the_result_is_stored_is_written_once(codec):
    model, publisher = FakeModel(), Faulty("dead_letter", times=2)
    source, request = hostile(codec, 0)
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [0] and len(publisher.letters) == 1 and len(publisher.results) == 1
    assert publisher.published == [request.request_id]


async def test_a_registry_outage_waits_and_never_dead_letters_valid_data(codec):
    class Outage(AvroCodec):
        failures = 3

        async def decode_async(self, data, record_type):
            if self.failures:
                self.failures -= 1
                raise RegistryUnavailable("registry down")
            return await super().decode_async(data, record_type)

    flaky = Outage()
    model, publisher = FakeModel(), FakePublisher()
    source, request = event(codec, [[1, 1]])
    acked = await run(make(model, publisher, flaky), [source])
    assert flaky.failures == 0 and acked == [0] and publisher.letters == []
    assert publisher.results[0].status is Status.SUCCEEDED


WRITES = [
    "store_results",
    "publish_results",
    "audit",
    "dead_letter",
    "claim_dead_letters",
    "mark_running",
    "lookup",
]


@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("once", [True, False], ids=["once", "for-a-while"])
async def test_every_write_failing_once_or_for_a_while_loses_nothing(codec, method, once):
    rnd = random.Random(7)
    model, publisher = FakeModel(), Faulty(method, times=1 if once else None, for_s=1.5)
    events, valid_ids, garbage = [], [], []
    for offset in range(0, 60, 2):
        partition = offset % 3
        source, request = event(codec, [[rnd.random(), 1.0]], offset)
        events.append(SourceEvent(source.topic, partition, offset, source.key, source.value))
        valid_ids.append(request.request_id)
        events.append(raw(b"not avro %d" % offset, offset + 1, partition))
        garbage.append(offset + 1)
    acked = await run(make(model, publisher, codec), events, timeout_s=30)
    assert publisher.failed >= 1, "the fault fired"
    assert sorted(acked) == list(range(60)), "every event answered, nothing stalled"
    partition_of = {e.offset: e.partition for e in events}
    for partition in range(3):
        mine = [o for o in acked if partition_of[o] == partition]
        assert mine == sorted(mine), "acks in offset order within a partition"
    ids = [r.request_id for r in publisher.results]
    assert sorted(ids) == sorted(valid_ids), "one result per request"
    assert set(publisher.published) == set(valid_ids)
    assert sorted(letter.offset for letter, _ in publisher.letters) == garbage, (
        "one dead letter each"
    )


async def test_a_model_input_that_breaks_merging_fails_alone(codec):
    class Picky(FakeModel):
        def predict_batch(self, inputs):
            if inputs["x"].shape[0] > 1:
                raise ValueError("not an InferenceFailed: a bare library error")
            return super().predict_batch(inputs)

    model, publisher = Picky(), FakePublisher()
    events = [event(codec, [[1, 2]], 0), event(codec, [[3, 4]], 1)]
    acked = await run(make(model, publisher, codec), [e for e, _ in events])
    assert acked == [0, 1]
    assert {r.status for r in publisher.results} == {Status.SUCCEEDED}
    assert np.array_equal(publisher.results[0].outputs[0].to_numpy(), [[2, 4]])
