"""The worker's logic with a fake model, repository and publisher (no broker, no Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
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
from streaminfer.schemas.records import AuditType, InferenceRequest, Status, Tensor, now_ms
from streaminfer.streams.publisher import StoredResult
from streaminfer.streams.requests import SourceEvent


@pytest.fixture
def codec():
    return AvroCodec()


async def test_batch_with_a_breaking_request_fails_only_that_one(codec):
    model, publisher = FakeModel(), FakePublisher()
    events = [
        event(codec, [[1, 2]], 0),
        event(codec, [[-1, 0]], 1),
        event(codec, [[3, 4], [5, 6]], 2),
    ]
    acked = await run(make(model, publisher, codec), [e for e, _ in events])
    assert sorted(acked) == [0, 1, 2]
    by_id = {r.request_id: r for r in publisher.results}
    good, bad, pair = (by_id[r.request_id] for _, r in events)
    assert good.status is Status.SUCCEEDED and pair.status is Status.SUCCEEDED
    assert np.array_equal(pair.outputs[0].to_numpy(), [[6, 8], [10, 12]])
    assert bad.status is Status.FAILED and "negative" in bad.error.message
    assert model.calls[0] == 4, "the three requests (4 items) ran as one batch first"
    assert publisher.letters, "a request out of retries is dead-lettered"


async def test_requests_of_different_sizes_in_one_batch_run_as_one_batch_per_size(codec, caplog):
    """Images at their own size (face-detect) do not concatenate: each size runs as its own batch,
    with no failed batch and no one-by-one fallback."""
    model, publisher = FakeModel(), FakePublisher()
    processor = make(model, publisher, codec)
    spec = processor._repository.configs[TASK].inputs[0]
    processor._repository.configs[TASK] = dataclasses.replace(
        processor._repository.configs[TASK],
        inputs=(dataclasses.replace(spec, shape=(-1,)),),
        outputs=(dataclasses.replace(spec, name="y", shape=(-1,)),),
    )
    events = [event(codec, [[1, 2]], 0), event(codec, [[1, 2, 3]], 1), event(codec, [[3, 4]], 2)]
    with caplog.at_level("WARNING"):
        acked = await run(processor, [e for e, _ in events])
    assert sorted(acked) == [0, 1, 2]
    by_id = {r.request_id: r for r in publisher.results}
    assert [by_id[r.request_id].outputs[0].to_numpy().tolist() for _, r in events] == [
        [[2, 4]],
        [[2, 4, 6]],
        [[6, 8]],
    ]
    assert sorted(model.calls) == [1, 2], "one batch of the two pairs, one of the triple"
    assert "failed" not in caplog.text


async def test_transient_failure_is_retried(codec):
    model, publisher = FakeModel(transient_failures=1), FakePublisher()
    source, request = event(codec, [[1, 1]])
    await run(make(model, publisher, codec), [source])
    result = publisher.results[0]
    assert result.status is Status.SUCCEEDED and result.attempts == 2
    assert any(a.type is AuditType.RETRIED for a in publisher.audits)


async def test_redelivered_request_with_a_result_is_not_run_again(codec):
    source, request = event(codec, [[1, 1]])
    model, publisher = FakeModel(), FakePublisher({request.request_id: StoredResult(b"x", True)})
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [0] and model.calls == [] and publisher.results == []
    assert [a.type for a in publisher.audits] == [AuditType.DUPLICATE]


async def test_expired_and_cancelled_requests_do_not_run(codec):
    expired, expired_req = event(codec, [[1, 1]], 0, deadline_at=now_ms() - 1000)
    cancelled, cancelled_req = event(codec, [[1, 1]], 1)
    model, publisher = FakeModel(), FakePublisher()
    publisher.cancelled_ids.add(cancelled_req.request_id)
    acked = await run(make(model, publisher, codec), [expired, cancelled])
    assert sorted(acked) == [0, 1] and model.calls == []
    statuses = {r.request_id: r.status for r in publisher.results}
    assert statuses == {
        expired_req.request_id: Status.EXPIRED,
        cancelled_req.request_id: Status.CANCELLED,
    }
    types = {a.type for a in publisher.audits}
    assert {AuditType.EXPIRED, AuditType.CANCELLED} <= types


class SlowModel(FakeModel):
    def predict_batch(self, inputs):
        time.sleep(0.3)  # runs in the inference thread, as a real model would
        return super().predict_batch(inputs)


async def test_a_deadline_passing_while_the_batch_waits_for_an_instance_expires_it(codec):
    model, publisher = SlowModel(), FakePublisher()
    processor = make(model, publisher, codec)
    first, first_req = event(codec, [[1, 1]], 0)
    late, late_req = event(codec, [[2, 2]], 1, deadline_at=now_ms() + 150)
    acked: list[int] = []

    def ack_of(offset):
        async def ack():
            acked.append(offset)

        return ack

    await processor.start()
    try:
        await processor.handle(first, ack_of(0))
        await asyncio.sleep(0.08)  # the first batch computes; the one instance is busy for 0.3 s
        await processor.handle(late, ack_of(1))
        await until_acked(acked, 2)
    finally:
        await processor.stop()
    statuses = {r.request_id: r.status for r in publisher.results}
    assert statuses == {first_req.request_id: Status.SUCCEEDED, late_req.request_id: Status.EXPIRED}
    assert model.calls == [1], "the late request never reached the model"
    assert sorted(acked) == [0, 1]


@pytest.mark.parametrize(
    "payload", [b"", b"\xc3\x01garbage", b"\x00\x00\x00\x00\x01", bytes(range(256))]
)
async def test_undecodable_event_is_dead_lettered_and_acked(codec, payload):
    model, publisher = FakeModel(), FakePublisher()
    source = SourceEvent(f"{PREFIX}.requests.{TASK}.normal", 3, 42, b"k", payload)
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [42]
    letter, error_type = publisher.letters[0]
    assert letter.payload == payload and letter.offset == 42 and letter.partition == 3
    assert [a.type for a in publisher.audits] == [AuditType.DEAD_LETTERED]


async def test_wrong_shape_fails_with_a_clear_error_and_is_dead_lettered(codec):
    model, publisher = FakeModel(), FakePublisher()
    source, request = event(codec, [[1, 2, 3]])
    await run(make(model, publisher, codec), [source])
    assert model.calls == []
    result = publisher.results[0]
    assert result.status is Status.FAILED and "shape" in result.error.message.lower()
    assert publisher.letters and publisher.letters[0][0].payload == source.value


async def test_unknown_task_is_dead_lettered(codec):
    model, publisher = FakeModel(), FakePublisher()
    request = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task="nope",
        inputs=[Tensor.from_numpy("x", np.zeros((1, 2), np.float32))],
    )
    source = SourceEvent(f"{PREFIX}.requests.{TASK}.normal", 0, 7, None, codec.encode(request))
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [7] and publisher.letters[0][0].error_code == "TASK_NOT_FOUND"


async def test_identical_inputs_are_served_from_the_content_cache(codec):
    model, publisher = FakeModel(), FakePublisher()
    first, _ = event(codec, [[1, 2]], 0)
    await run(make(model, publisher, codec), [first])
    again, again_req = event(codec, [[1, 2]], 1)
    opted_out, opted_req = event(codec, [[1, 2]], 2, parameters={"cache": "false"})
    acked = await run(make(model, publisher, codec), [again, opted_out])
    assert sorted(acked) == [1, 2]
    assert model.calls == [1, 1], "the cached request did not run; the opted-out one did"
    by_id = {r.request_id: r for r in publisher.results}
    assert np.array_equal(by_id[again_req.request_id].outputs[0].to_numpy(), [[2, 4]])
    assert by_id[again_req.request_id].status is Status.SUCCEEDED
    hits = [a for a in publisher.audits if a.type is AuditType.CACHE_HIT]
    assert [a.request_id for a in hits] == [again_req.request_id]


async def test_a_redis_outage_delays_the_batch_and_nothing_is_acked_before_it_is_written(codec):
    model, publisher = FakeModel(), Faulty("store_results", times=2)
    source, request = event(codec, [[1, 1]])
    acked = await run(make(model, publisher, codec), [source])
    assert acked == [0] and publisher.failed == 2
    assert [r.request_id for r in publisher.results] == [request.request_id]


class PacedModel(FakeModel):
    def predict_batch(self, inputs):
        time.sleep(0.04 * len(inputs["x"]))  # 40 ms per item, in the inference thread
        return super().predict_batch(inputs)


@pytest.mark.parametrize("scheduling", ["deadline", "fifo"])
async def test_a_request_that_cannot_make_its_deadline_is_shed_before_it_takes_model_time(
    codec, scheduling
):
    model, publisher = PacedModel(), FakePublisher()
    processor = make(model, publisher, codec)
    processor._deadline_aware = scheduling == "deadline"
    acked: list[int] = []
    await processor.start()
    try:
        for k in range(3):  # three batches of one: the cost is learnt
            await feed(processor, [event(codec, [[k + 1, 1]], k)[0]], acked)
        hopeless, hopeless_req = event(codec, [[9, 9]], 3, deadline_at=now_ms() + 15)
        await feed(processor, [hopeless], acked)
    finally:
        await processor.stop()
    result = next(r for r in publisher.results if r.request_id == hopeless_req.request_id)
    assert sorted(acked) == [0, 1, 2, 3]
    if scheduling == "deadline":
        assert result.status == Status.EXPIRED and result.error.code == "DEADLINE_UNREACHABLE"
        assert model.calls == [1, 1, 1], "no model time for it"
        assert "EXPIRED" in {
            a.type.value for a in publisher.audits if a.request_id == hopeless_req.request_id
        }
    else:  # FIFO runs it (the instance is idle) and it finishes after its deadline
        assert result.status == Status.SUCCEEDED and model.calls == [1, 1, 1, 1]
        assert result.completed_at > hopeless_req.deadline_at


async def test_the_tasks_default_deadline_applies_to_a_request_without_one(codec):
    model, publisher = FakeModel(), FakePublisher()
    processor = make(model, publisher, codec)
    processor._repository.configs[TASK] = dataclasses.replace(
        processor._repository.configs[TASK], default_deadline_ms=1
    )
    old = now_ms() - 1_000
    stale, stale_req = event(codec, [[1, 1]], 0, created_at=old)
    own, own_req = event(codec, [[1, 1]], 1, created_at=old, deadline_at=now_ms() + 60_000)
    acked = await run(processor, [stale, own])
    statuses = {r.request_id: r.status for r in publisher.results}
    assert statuses == {stale_req.request_id: Status.EXPIRED, own_req.request_id: Status.SUCCEEDED}
    assert sorted(acked) == [0, 1]
