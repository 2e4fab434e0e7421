"""Drain time from lag and the live workers' service figures; stale and hostile entries ignored."""

from __future__ import annotations

import json
import math
import time

import pytest

from streaminfer.gateway.capacity import drain_seconds, read_service
from streaminfer.schemas import keys


class FakeRedis:
    """Just the pipeline of HGETALLs that read_service sends."""

    def __init__(self, hashes: dict[str, dict[bytes, bytes]]) -> None:
        self.hashes = hashes

    def pipeline(self, transaction: bool = False):
        return FakePipeline(self.hashes)


class FakePipeline:
    def __init__(self, hashes) -> None:
        self.hashes, self.asked = hashes, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def hgetall(self, key):
        self.asked.append(key)

    async def execute(self):
        return [self.hashes.get(key, {}) for key in self.asked]


def entry(instances=2, service_ms=10.0, age_ms=0, **extra) -> bytes:
    return json.dumps(
        {
            "instances": instances,
            "service_ms_per_item": service_ms,
            "at": time.time() * 1000 - age_ms,
            **extra,
        }
    ).encode()


async def test_live_workers_are_summed_and_stale_or_foreign_entries_ignored():
    redis = FakeRedis(
        {
            keys.service_key("p", "embed"): {
                b"w1": entry(2, 10.0),
                b"w2": entry(1, 40.0),
                b"gone": entry(4, 1.0, age_ms=keys.SERVICE_STALE_MS + 1_000),
                b"garbage": b"not json",
                b"no-instances": entry(0),
                b"odd": json.dumps([1, 2]).encode(),
            }
        }
    )
    found = await read_service(redis, "p", ["embed", "idle"])
    assert set(found["embed"]["workers"]) == {"w1", "w2"}
    assert found["embed"]["live_instances"] == 3
    assert found["embed"]["service_ms_per_item"] == pytest.approx(20.0)  # weighted by instances
    assert found["idle"] == {"live_instances": 0, "service_ms_per_item": None, "workers": {}}


@pytest.mark.parametrize(
    "lag, service, expected",
    [
        (0, None, 0.0),
        (100, {"live_instances": 2, "service_ms_per_item": 10.0}, 0.5),
        (100, {"live_instances": 0, "service_ms_per_item": None}, math.nan),
        (100, {"live_instances": 2, "service_ms_per_item": None}, math.nan),
        (100, None, math.nan),
    ],
)
def test_drain_seconds(lag, service, expected):
    found = drain_seconds(lag, service)
    assert (math.isnan(found) and math.isnan(expected)) or found == pytest.approx(expected)
