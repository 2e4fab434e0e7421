"""ResultStore.mark_queued: the statuses of requests submitted together go to Redis in one
pipeline, and a failure reaches every one of them as 503 (none is left waiting)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streaminfer.gateway.errors import ServiceUnavailable
from streaminfer.gateway.results import MAX_QUEUED_PER_WRITE, ResultStore
from streaminfer.schemas import keys


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self.commands: list[tuple] = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def eval(self, script, numkeys, *args):
        self.commands.append(args)

    async def execute(self):
        await asyncio.sleep(0)  # a round trip: others submit meanwhile
        if self._redis.fail:
            raise RedisConnectionError("redis went away")
        self._redis.pipelines.append(self.commands)
        return [1] * len(self.commands)


class FakeRedis:
    def __init__(self) -> None:
        self.pipelines: list[list[tuple]] = []
        self.fail = False

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)


def store() -> ResultStore:
    made = ResultStore("redis://unused", codec=None, prefix="unit", ttl_s=60)
    made.redis = FakeRedis()
    made._queued, made._writer, made._closed = [], None, False
    return made


async def test_concurrent_submissions_share_one_pipeline():
    results = store()
    await asyncio.gather(
        *(results.mark_queued(f"r{i}", "tiny", "alice" if i % 2 else None) for i in range(50))
    )
    assert len(results.redis.pipelines) == 1
    written = results.redis.pipelines[0]
    assert [args[0] for args in written] == [keys.status_key("unit", f"r{i}") for i in range(50)]
    assert written[1][1:] == ("tiny", "alice", 60) and written[0][1:] == ("tiny", "", 60)


async def test_submissions_during_a_write_go_in_the_next_one():
    results = store()
    first = asyncio.create_task(results.mark_queued("a", "tiny", None))
    await asyncio.sleep(0)  # the writer has taken "a" and waits on Redis
    await asyncio.sleep(0)
    await asyncio.gather(
        first, results.mark_queued("b", "tiny", None), results.mark_queued("c", "tiny", None)
    )
    assert [[args[0].rsplit(":", 1)[1] for args in p] for p in results.redis.pipelines] == [
        ["a"],
        ["b", "c"],
    ]


async def test_a_pipeline_holds_at_most_the_bound():
    results = store()
    await asyncio.gather(
        *(results.mark_queued(f"r{i}", "tiny", None) for i in range(MAX_QUEUED_PER_WRITE + 3))
    )
    assert [len(p) for p in results.redis.pipelines] == [MAX_QUEUED_PER_WRITE, 3]


async def test_redis_failing_is_503_for_every_submission_of_the_batch_and_the_next_one_recovers():
    results = store()
    results.redis.fail = True
    outcomes = await asyncio.gather(
        *(results.mark_queued(f"r{i}", "tiny", None) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, ServiceUnavailable) for o in outcomes), outcomes
    results.redis.fail = False
    await results.mark_queued("again", "tiny", None)
    assert results.redis.pipelines[-1][0][0] == keys.status_key("unit", "again")


async def test_a_submission_that_goes_away_does_not_fail_the_others():
    results = store()
    gone = asyncio.create_task(results.mark_queued("gone", "tiny", None))
    others = [asyncio.create_task(results.mark_queued(f"r{i}", "tiny", None)) for i in range(3)]
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(*others)
    with pytest.raises(asyncio.CancelledError):
        await gone


@pytest.mark.parametrize(
    "turns", [1, 2, 3], ids=["before-the-write", "mid-write", "after-taking-more"]
)
async def test_stopping_fails_what_still_waits(turns):
    results = store()
    waiting = [asyncio.create_task(results.mark_queued(f"r{i}", "tiny", None)) for i in range(3)]
    for _ in range(turns):
        await asyncio.sleep(0)
    waiting.append(asyncio.create_task(results.mark_queued("late", "tiny", None)))
    await asyncio.sleep(0)
    results._closed = True
    if results._writer is not None:
        results._writer.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 2)
    assert all(o is None or isinstance(o, ServiceUnavailable) for o in outcomes), outcomes
    await asyncio.sleep(0)
    assert results._writer is None and results._queued == []
