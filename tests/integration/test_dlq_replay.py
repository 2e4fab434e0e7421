"""`streaminfer dlq list|show|replay` end to end, against the real broker, Redis and a worker:
requests of a task without a model are dead-lettered (TASK_NOT_FOUND); the model is added (the
running worker takes the task up); the replay re-produces them and each gets exactly one
result; a second replay skips them all. Letters the worker itself wrote (a request on another
task's topic: never replayed; junk: replayed, dead-lettered again, then bounded) and hostile
records on the DLQ topic ride along. An empty or missing DLQ topic ends at once."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from helpers.kafka import collect
from helpers.waiting import until

pytestmark = pytest.mark.integration

OLD, NEW = "tabular-classify", "tabular-late"
N_NEW = 5


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streaminfer", "dlq", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines(done: subprocess.CompletedProcess) -> tuple[list[dict], str]:
    """The JSON lines of a `dlq replay`'s stdout, and its last line."""
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip().splitlines()
    return [json.loads(line) for line in out[:-1]], out[-1]


def request(task: str):
    from sklearn.datasets import load_breast_cancer

    from streaminfer.schemas.records import InferenceRequest, Tensor

    row = load_breast_cancer().data[0].astype("float32").reshape(1, 30)
    return InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=task,
        client_id="upstream",
        inputs=[Tensor.from_numpy("features", row)],
    )


async def produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _more(total, than: int) -> bool:
    return await total > than


async def read_all(bootstrap: str, topic: str) -> list:
    """Every record of ``topic`` up to its end offsets now (no consumer group to join)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out: list = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def end_offset_total(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return 0
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def test_dead_letters_of_a_task_without_a_model_are_replayed_once_it_has_one(
    make_stack, redis_server, model_repository, tmp_path
):
    from redis.asyncio import Redis

    from streaminfer.schemas import keys
    from streaminfer.schemas.codec import AvroCodec
    from streaminfer.schemas.records import DeadLetter, InferenceResult
    from streaminfer.schemas.topics import dlq_topic, request_topic, results_topic
    from streaminfer.streams.publisher import ResultPublisher

    started = time.monotonic()
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / OLD, repo / OLD)
    stack = make_stack(
        redis_url=redis_server,
        STREAMINFER_MODEL_REPOSITORY=str(repo),
        STREAMINFER_WORKER_MODEL_POLL_S="1",
    )
    stack.add_worker()  # no task list: it takes up tasks dropped into the repository
    prefix, bootstrap, codec = stack.prefix, stack.bootstrap, AvroCodec()
    dlq, old_topic = dlq_topic(prefix), request_topic(prefix, OLD, "normal")

    # Letters the worker writes itself: a request for NEW on OLD's topic (TASK_NOT_FOUND; on that
    # topic it can never succeed) and junk (UNDECODABLE; replayable, and dead-lettered again).
    misplaced = [request(NEW) for _ in range(2)]
    await produce(
        bootstrap,
        [(old_topic, r.request_id.encode(), codec.encode(r)) for r in misplaced]
        + [(old_topic, b"junk-key", b"junk")],
    )
    assert len(await collect(bootstrap, dlq, lambda m: len(m) >= 3, timeout_s=30)) == 3

    # Requests for NEW on its own topic, answered TASK_NOT_FOUND. NOTE: no worker writes these
    # today (none subscribes to a task it does not serve; an explicit --tasks naming a task
    # without a model fails at start), so they are written with the worker's own dead-letter
    # path, as a worker answering them would.
    pending = [request(NEW) for _ in range(N_NEW)]
    publisher = ResultPublisher(bootstrap, redis_server, codec, prefix, 3600)
    await publisher.start()
    try:
        for offset, r in enumerate(pending):
            letter = DeadLetter(
                source_topic=request_topic(prefix, NEW, "normal"),
                partition=0,
                offset=offset,
                key=r.request_id.encode(),
                payload=codec.encode(r),
                error_code="TASK_NOT_FOUND",
                error_message=f"{NEW!r} not served",
            )
            await publisher.claim_dead_letters([letter])
            await publisher.dead_letter(letter, "ModelNotFound")
    finally:
        await publisher.stop()
    # Hostile records: junk that is no letter, letters naming topics that are not request
    # topics of this prefix (never to be produced to), a letter whose bytes are not what it says.
    foreign = [
        f"evil-{uuid.uuid4().hex[:6]}",
        f"{prefix}x.requests.{NEW}.normal",
        results_topic(prefix, OLD),
    ]
    hostile = [
        DeadLetter(
            source_topic=t,
            partition=0,
            offset=0,
            payload=codec.encode(request(NEW)),
            error_code="TASK_NOT_FOUND",
            error_message="x",
        )
        for t in foreign
    ]
    hostile.append(
        DeadLetter(
            source_topic=old_topic,
            partition=0,
            offset=9,
            payload=b"tampered",
            payload_sha256="0" * 64,
            error_code="UNDECODABLE",
            error_message="x",
        )
    )
    await produce(
        bootstrap,
        [(dlq, None, b"\x00\x01 not a dead letter")]
        + [(dlq, None, codec.encode(letter)) for letter in hostile],
    )

    listing = cli(stack, "list", "--error-code", "TASK_NOT_FOUND")
    assert listing.returncode == 0, listing.stderr
    listed = [json.loads(line) for line in listing.stdout.splitlines()]
    assert len(listed) == 2 + N_NEW + 3, listing.stdout
    assert {r.request_id for r in pending} <= {item["request_id"] for item in listed}
    assert all("payload" not in item for item in listed)
    mine = next(item for item in listed if item["request_id"] == pending[0].request_id)
    where = mine["dlq"]
    shown = json.loads(cli(stack, "show", f"{dlq}:{where['partition']}:{where['offset']}").stdout)
    assert base64.b64decode(shown["payload_base64"]) == codec.encode(pending[0])
    assert shown["request"]["task"] == NEW and shown["request"]["inputs"][0]["shape"] == [1, 30]

    # the model is added: the worker takes NEW up (its topics, its model)
    staging = tmp_path / "staging"
    shutil.copytree(model_repository / OLD, staging)
    config = yaml.safe_load((staging / "model.yaml").read_text())
    config["task"] = NEW
    (staging / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    staging.rename(repo / NEW)
    added = time.monotonic()
    redis = Redis.from_url(redis_server)
    try:
        served = keys.served_tasks_key(prefix)
        assert await until(lambda: redis.sismember(served, NEW), timeout_s=40)
        phases = {"model added -> served": time.monotonic() - added}
        new_topic = request_topic(prefix, NEW, "normal")

        dry, last = lines(cli(stack, "replay", "--dry-run", "--max-replays", "1"))
        assert last == f"replayed 0, skipped {len(dry) - N_NEW - 1}"
        assert sum(d["action"] == "would-replay" for d in dry) == N_NEW + 1
        assert await end_offset_total(bootstrap, new_topic) == 0, "a dry run produces nothing"

        replay_started = time.monotonic()
        done = cli(stack, "replay", "--max-replays", "1")
        phases["replay command"] = time.monotonic() - replay_started
        replayed, last = lines(done)
        reasons = {}
        for item in replayed:
            reasons.setdefault(item.get("reason", item["action"]), []).append(item)
        assert last == f"replayed {N_NEW + 1}, skipped {len(replayed) - N_NEW - 1}", done.stdout
        assert {item["request_id"] for item in reasons["replayed"]} == {
            r.request_id for r in pending
        } | {None}, "the junk has no request id"
        assert len(reasons["task-mismatch"]) == 2 and len(reasons["not-a-dead-letter"]) == 1
        assert len(reasons["not-a-request-topic"]) == 3 and len(reasons["payload-mismatch"]) == 1
        assert "replaying" in done.stderr and "skipped: " in done.stderr
        for topic in foreign[:2]:
            assert await end_offset_total(bootstrap, topic) == 0, f"{topic} was written to"

        # the worker answers the replayed requests, and dead-letters the replayed junk again
        stored = [keys.result_key(prefix, r.request_id) for r in pending]
        assert await until(lambda: _more(redis.exists(*stored), N_NEW - 1), timeout_s=40)
        phases["replay start -> all results"] = time.monotonic() - replay_started
        before = 3 + N_NEW + 5
        assert await until(lambda: _more(end_offset_total(bootstrap, dlq), before), timeout_s=30)

        # a second replay: the requests have their results; the junk has used its one replay
        again, last = lines(cli(stack, "replay", "--max-replays", "1"))
        skipped = {}
        for item in again:
            skipped[item["reason"]] = skipped.get(item["reason"], 0) + 1
        assert last == f"replayed 0, skipped {len(again)}"
        assert skipped["has-result"] == N_NEW and skipped["replay-limit"] == 2, skipped

        # exactly one result per request (a second would have landed by now); the replayed
        # events carry the letters they came from
        ids = {r.request_id.encode() for r in pending}
        results = [
            codec.decode(m.value, InferenceResult)
            for m in await read_all(bootstrap, results_topic(prefix, NEW))
            if m.key in ids
        ]
        assert sorted(r.request_id for r in results) == sorted(r.request_id for r in pending)
        assert {r.status.name for r in results} == {"SUCCEEDED"}
        refs = {
            dict(m.headers)["streaminfer-replay-of"].decode()
            for m in await read_all(bootstrap, new_topic)
        }
        assert refs == {
            f"{dlq}:{i['dlq']['partition']}:{i['dlq']['offset']}"
            for i in reasons["replayed"]
            if i["request_id"]
        }
    finally:
        await redis.aclose()
        codec.close()
    assert stack.workers[0].poll() is None
    print(
        f"\ndlq replay end to end in {time.monotonic() - started:.1f}s; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items())
    )


async def test_an_empty_or_missing_dead_letter_topic_ends_at_once(kafka_server, redis_server):
    import os

    from streaminfer.kafka_admin import ensure_topics
    from streaminfer.schemas.topics import dlq_topic

    for create in (False, True):
        prefix = f"t{uuid.uuid4().hex[:8]}"
        if create:
            await ensure_topics(kafka_server, [dlq_topic(prefix)], 3)
        env = dict(
            os.environ,
            STREAMINFER_KAFKA_BOOTSTRAP_SERVERS=kafka_server,
            STREAMINFER_REDIS_URL=redis_server,
            STREAMINFER_TOPIC_PREFIX=prefix,
        )
        stack = type("Env", (), {"env": env})
        started = time.monotonic()
        listing = cli(stack, "list")
        assert listing.returncode == 0 and listing.stdout == "", listing.stderr
        assert lines(cli(stack, "replay")) == ([], "replayed 0, skipped 0")
        missing = cli(stack, "show", "0:0")
        assert missing.returncode == 2 and f"no record at {dlq_topic(prefix)}:0:0" in missing.stderr
        assert time.monotonic() - started < 20, "three commands on an empty topic"
