"""ResultStore.wait when Redis fails after the first look (a resubscription woke it while Redis
was still coming back): it backs off instead of polling, and stops with the store."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from streaminfer.gateway.errors import ServiceUnavailable
from streaminfer.gateway.results import ResultStore
from streaminfer.schemas.codec import AvroCodec


def store_failing_after_first_look() -> tuple[ResultStore, list[float]]:
    store = ResultStore("redis://127.0.0.1:1", AvroCodec(), "unit", ttl_s=60)
    store._waiters, store._closed = defaultdict(set), False
    calls: list[float] = []

    async def result(request_id):
        calls.append(time.monotonic())
        if len(calls) > 1:
            raise ServiceUnavailable("the result store is not reachable; retry later")
        return None

    store.result = result
    return store, calls


async def test_looking_again_backs_off_and_the_deadline_still_holds():
    store, calls = store_failing_after_first_look()
    waiting = asyncio.create_task(store.wait("rid", 1.5))
    await asyncio.sleep(0.05)
    store._wake_all()  # as a resubscription does
    with pytest.raises(ServiceUnavailable):  # the last look at the deadline says why: a 503
        await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - calls[0] >= 1.4, "waited out its ?wait="
    assert len(calls) <= 8, f"backed off, not a 0.1 s poll: {len(calls)} looks"


async def test_a_waiter_stops_looking_when_the_store_stops():
    store, calls = store_failing_after_first_look()
    waiting = asyncio.create_task(store.wait("rid", 30.0))
    await asyncio.sleep(0.05)
    store._wake_all()
    await asyncio.sleep(0.3)
    store._closed = True
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(waiting, 3)
