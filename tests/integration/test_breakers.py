"""Circuit breakers with the real dependency stopped and started (SPEC §9).

Gateway: Redis frozen (SIGSTOP: it holds connections and answers nothing, so each call waits out
the client's socket timeout) under a gateway with a threshold of 3 and a reset of 2 s: after 3
failures the gateway answers 503 SERVICE_UNAVAILABLE with Retry-After at once, the breaker shows
open (2) on /metrics and in /ready; Redis resumed: half-open, closed, requests succeed again.

The broker frozen under a gateway (publish timeout 1.5 s): the same with the ``kafka`` breaker.

Worker: its Redis stopped (terminated) while requests keep arriving on Kafka: the redis breaker
opens, the worker pauses its partitions (requests produced meanwhile are not fetched: its
batchers' queues stop growing), resumes once Redis is back, and answers every request once.

The measured figures are printed (run with -s) and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from helpers.http import assert_error
from helpers.kafka import produce_requests, read_results
from helpers.waiting import until

pytestmark = pytest.mark.integration

TASK = "tabular-classify"
GATEWAY_BREAKER = {"STREAMINFER_CIRCUIT_FAILURES": "3", "STREAMINFER_CIRCUIT_RESET_S": "2"}


def features_body() -> dict:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return {
        "inputs": {"features": dict(zip(data.feature_names, map(float, data.data[0]), strict=True))}
    }


def sample(metrics_text: str, name: str, labels: str = "") -> float | None:
    """The value of ``name{labels}`` in a Prometheus text page; the sum over label sets when
    ``labels`` is empty."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith(name)
        and not line.startswith("#")
        and (line.startswith(f"{name}{{{labels}}}") if labels else line[len(name)] in " {")
    ]
    return sum(values) if values else None


async def test_gateway_fails_fast_while_redis_is_frozen_and_closes_once_it_is_back(
    make_stack, own_redis
):
    from streaminfer.embedded import redis_address

    stack = make_stack(redis_url=redis_address(own_redis), STREAMINFER_TASKS=TASK)
    stack.add_worker()
    url = stack.add_gateway(**GATEWAY_BREAKER)
    body = features_body()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        before = await client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json=body)
        assert before.status_code == 200, before.text
        ready = (await client.get("/ready")).json()
        assert ready["circuits"]["redis"]["state"] == "closed", ready

        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:

            async def timed_post():
                started = time.monotonic()
                response = await client.post(f"/v1/infer/{TASK}", json=body)
                return response, time.monotonic() - started

            # closed: each request waits out the client's timeout (what every request did before)
            closed = await asyncio.gather(*(timed_post() for _ in range(3)))
            for response, _ in closed:
                assert_error(response, 503, "SERVICE_UNAVAILABLE")
            slow_s = min(elapsed for _, elapsed in closed)
            assert slow_s > 1.0, f"a frozen Redis is waited for ({slow_s:.2f} s)"

            metrics = (await client.get("/metrics")).text
            assert sample(metrics, "inference_circuit_state", 'name="redis"') == 2.0
            assert sample(metrics, "inference_circuit_state", 'name="kafka"') == 0.0

            fast = []
            for _ in range(20):  # open: at once, with Retry-After, Redis not called
                response, elapsed = await timed_post()
                assert_error(response, 503, "SERVICE_UNAVAILABLE")
                assert response.json()["details"]["circuit"] == "redis"
                assert 1 <= int(response.headers["retry-after"]) <= 2
                fast.append(elapsed)
            fast.sort()
            assert fast[-1] < 0.5 and fast[len(fast) // 2] < 0.1, fast
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["circuits"]["redis"]["value"] == 2
            assert ready.json()["checks"]["redis"] is False
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()

        async def accepted():
            response = await client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json=body)
            return response if response.status_code == 200 else None

        after = await until(accepted, timeout_s=30, interval_s=0.1)
        assert after is not None, "Redis is back: requests succeed again"
        close_s = time.monotonic() - resumed
        assert after.json()["status"] == "succeeded"
        assert close_s < 2 + 5 + 2, f"closed {close_s:.2f} s after Redis came back"
        states = (await client.get("/ready")).json()["circuits"]
        assert states["redis"]["state"] == "closed"
        assert (
            sample((await client.get("/metrics")).text, "inference_circuit_state", 'name="redis"')
            == 0.0
        )
        # nothing lost: every request accepted now has its result
        results = await asyncio.gather(
            *(client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json=body) for _ in range(10))
        )
        assert [r.json()["status"] for r in results] == ["succeeded"] * 10
    print(
        f"\ngateway, Redis frozen: closed {slow_s:.2f} s per request; open: median "
        f"{fast[len(fast) // 2] * 1000:.1f} ms, max {fast[-1] * 1000:.1f} ms; "
        f"Redis back -> breaker closed, first request succeeded: {close_s:.2f} s"
    )


async def worker_metrics(port: int) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"http://127.0.0.1:{port}/metrics")).text


async def test_worker_pauses_its_partitions_while_redis_is_away_and_answers_everything_once(
    make_stack, own_redis, kafka_server
):
    from streaminfer.embedded import redis_address

    stack = make_stack(redis_url=redis_address(own_redis), STREAMINFER_TASKS="text-embedding")
    stack.add_worker()
    port = stack.metrics_ports[0]
    first = await produce_requests(stack.bootstrap, stack.prefix, 10)
    await read_results(stack.bootstrap, stack.prefix, first, timeout_s=60)
    await asyncio.sleep(1.5)  # committed

    own_redis._terminate(5.0)
    stopped = time.monotonic()
    during = await produce_requests(stack.bootstrap, stack.prefix, 20)

    async def paused():
        text = await worker_metrics(port)
        opened = sample(text, "inference_circuit_state", 'name="redis"') == 2.0
        return text if opened and (sample(text, "inference_partitions_paused") or 0) > 0 else None

    text = await until(paused, timeout_s=30, interval_s=0.1)
    assert text, "the redis breaker opened and the partitions paused"
    open_s = time.monotonic() - stopped
    queued = sample(text, "inference_batcher_queued") or 0.0
    await asyncio.sleep(1.0)
    queued = sample(await worker_metrics(port), "inference_batcher_queued") or 0.0
    later = await produce_requests(stack.bootstrap, stack.prefix, 30)
    await asyncio.sleep(3.0)
    text = await worker_metrics(port)
    assert (sample(text, "inference_batcher_queued") or 0.0) == queued, (
        "paused: nothing more fetched"
    )
    assert sample(text, "inference_circuit_state", 'name="redis"') == 2.0

    own_redis.restart()
    back = time.monotonic()

    async def resumed():
        text = await worker_metrics(port)
        closed = sample(text, "inference_circuit_state", 'name="redis"') == 0.0
        return text if closed and sample(text, "inference_partitions_paused") == 0 else None

    assert await until(resumed, timeout_s=30, interval_s=0.1), (
        "closed and resumed once Redis is back"
    )
    resume_s = time.monotonic() - back
    ids = during + later
    results = await read_results(stack.bootstrap, stack.prefix, ids, timeout_s=90)
    assert set(results) == set(ids), f"{len(set(ids) - set(results))} requests unanswered"
    statuses = {r.status.value for answers in results.values() for r in answers}
    assert statuses == {"SUCCEEDED"}, statuses
    assert all(len(answers) == 1 for answers in results.values()), "each answered once"
    print(
        f"\nworker, Redis stopped: breaker open and partitions paused {open_s:.2f} s after; "
        f"Redis back -> closed and resumed in {resume_s:.2f} s; {len(ids)} requests answered once"
    )


async def test_gateway_fails_fast_while_the_broker_is_frozen_and_closes_once_it_is_back(
    make_stack, own_kafka, redis_server
):
    from streaminfer.embedded import bootstrap_address

    stack = make_stack(
        bootstrap=bootstrap_address(own_kafka), redis_url=redis_server, STREAMINFER_TASKS=TASK
    )
    stack.add_worker()
    url = stack.add_gateway(STREAMINFER_KAFKA_REQUEST_TIMEOUT_MS="1500", **GATEWAY_BREAKER)
    body = features_body()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        assert (
            await client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json=body)
        ).status_code == 200
        os.kill(own_kafka.proc.pid, signal.SIGSTOP)
        try:

            async def timed_post():
                started = time.monotonic()
                response = await client.post(f"/v1/infer/{TASK}", json=body)
                return response, time.monotonic() - started

            closed = await asyncio.gather(*(timed_post() for _ in range(3)))
            for response, elapsed in closed:
                assert_error(response, 503, "SERVICE_UNAVAILABLE")
                assert elapsed > 1.0, "closed: the publish timeout is waited out"
            response, elapsed = await timed_post()
            assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert response.json()["details"]["circuit"] == "kafka" and elapsed < 0.5, elapsed
            assert int(response.headers["retry-after"]) >= 1
            metrics = (await client.get("/metrics")).text
            assert sample(metrics, "inference_circuit_state", 'name="kafka"') == 2.0
            assert sample(metrics, "inference_circuit_state", 'name="redis"') == 0.0
        finally:
            os.kill(own_kafka.proc.pid, signal.SIGCONT)

        async def succeeded():
            response = await client.post(f"/v1/infer/{TASK}", params={"wait": 30}, json=body)
            return response if response.status_code == 200 else None

        assert await until(succeeded, timeout_s=60, interval_s=0.2), (
            "the broker is back: requests succeed"
        )
        states = (await client.get("/ready")).json()["circuits"]
        assert states["kafka"]["state"] == "closed"


FRAGILE_MODEL = '''
from pathlib import Path


class Fragile:
    """Doubles its input; fails every call while the flag file exists (a device gone)."""

    def __init__(self, flag=""):
        self.flag = Path(flag)

    def load(self):
        pass

    def warmup(self):
        pass

    def predict_batch(self, inputs):
        if self.flag.exists():
            raise RuntimeError("the device is gone")
        return {"y": inputs["x"] * 2}
'''


def fragile_repository(root, flag) -> str:
    import yaml

    (root / "fragile" / "1").mkdir(parents=True)
    (root / "fragile" / "1" / "model.py").write_text(FRAGILE_MODEL)
    (root / "fragile" / "model.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "fragile",
                "name": "fragile-doubler",
                "backend": "python",
                "max_batch_size": 16,
                "max_batch_delay_ms": 50,
                "instances": 1,
                "device": "cpu",
                "warmup": True,
                "python": {"class": "Fragile", "parameters": {"flag": str(flag)}},
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
            }
        )
    )
    return str(root)


async def produce_x(bootstrap: str, prefix: str, count: int) -> list[str]:
    import uuid

    import numpy as np
    from aiokafka import AIOKafkaProducer

    from streaminfer.schemas.codec import AvroCodec
    from streaminfer.schemas.records import InferenceRequest, Priority, Tensor
    from streaminfer.schemas.topics import request_topic

    codec, ids = AvroCodec(), []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            request = InferenceRequest(
                request_id=str(uuid.uuid4()),
                task="fragile",
                priority=Priority.NORMAL,
                inputs=[Tensor.from_numpy("x", np.array([[i, 1.0]], dtype=np.float32))],
            )
            ids.append(request.request_id)
            await (
                await producer.send(
                    request_topic(prefix, "fragile", Priority.NORMAL),
                    codec.encode(request),
                    key=request.request_id.encode(),
                )
            )
    finally:
        await producer.stop()
    return ids


async def test_a_model_that_fails_everything_opens_its_breaker_and_its_requests_wait(
    make_stack, redis_server, tmp_path
):
    """A real worker on a python-backend model whose device is 'gone' (every call fails, its
    warm-up input too): after 5 failing batches (the worker's default threshold) the model's
    breaker opens and the task's partitions pause; requests sent meanwhile are neither failed nor
    dead-lettered; once the device is back they succeed, each answered once."""
    from streaminfer.schemas.records import InferenceResult
    from streaminfer.schemas.topics import results_topic

    flag = tmp_path / "broken"
    repo = fragile_repository(tmp_path / "repo", flag)
    stack = make_stack(
        redis_url=redis_server, STREAMINFER_MODEL_REPOSITORY=repo, STREAMINFER_TASKS="fragile"
    )
    stack.add_worker()
    port = stack.metrics_ports[0]
    flag.write_text("x")
    early: list[str] = []

    async def opened():
        early.extend(await produce_x(stack.bootstrap, stack.prefix, 1))
        text = await worker_metrics(port)
        return sample(text, "inference_circuit_state", 'name="model:fragile:1"') == 2.0

    assert await until(opened, timeout_s=90, interval_s=0.5), "the model's breaker opened"
    text = await until(lambda: _paused(port), timeout_s=5, interval_s=0.1)
    assert text, "the task's partitions paused"
    held = await produce_x(stack.bootstrap, stack.prefix, 10)
    await asyncio.sleep(3.0)
    flag.unlink()  # the device is back
    back = time.monotonic()
    ids = early + held
    from helpers.kafka import read_records

    results = await read_records(
        stack.bootstrap,
        results_topic(stack.prefix, "fragile"),
        InferenceResult,
        {i.encode() for i in ids},
        lambda g: len(g) >= len(ids),
        timeout_s=90,
    )
    recovered_s = time.monotonic() - back
    assert set(results) == set(ids), f"{len(set(ids) - set(results))} unanswered"
    assert all(len(r) == 1 for r in results.values()), "each answered once"
    assert {results[i][0].status.value for i in held} == {"SUCCEEDED"}, "held, not failed"
    failed = [i for i in early if results[i][0].status.value == "FAILED"]
    assert failed, "the batches before it opened failed as before"
    assert (
        sample(await worker_metrics(port), "inference_circuit_state", 'name="model:fragile:1"')
        == 0.0
    )
    print(
        f"\nmodel breaker: opened after {len(failed)} failed requests; held requests succeeded "
        f"{recovered_s:.1f} s after the model recovered"
    )


async def _paused(port: int):
    text = await worker_metrics(port)
    return text if (sample(text, "inference_partitions_paused") or 0) > 0 else None
