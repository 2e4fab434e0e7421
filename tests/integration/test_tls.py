"""Kafka and Redis over real TLS (proxies in front of the embedded servers, certificates made
here), the gateway over HTTPS, mutual TLS, and the errors that name the setting to fix."""

from __future__ import annotations

import ssl
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Stack, _log_dir, spawn, stop
from helpers.tls import make_pki
from helpers.tls_servers import REDIS_PASSWORD, run_cli, tls_kafka, tls_redis

pytestmark = pytest.mark.integration

TASK = "text-embedding"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def kafka_tls(pki):
    with tls_kafka(pki, _log_dir()) as (bootstrap, _proxy):
        yield bootstrap


@pytest.fixture(scope="module")
def kafka_mtls(pki):
    with tls_kafka(pki, _log_dir(), mutual=True) as (bootstrap, _proxy):
        yield bootstrap


@pytest.fixture(scope="module")
def redis_tls(pki):
    with tls_redis(pki, _log_dir()) as url:
        yield url


def kafka_env(pki, **extra: str) -> dict[str, str]:
    return {
        "STREAMINFER_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAMINFER_KAFKA_SSL_CAFILE": str(pki.ca),
        "STREAMINFER_TASKS": TASK,
        **extra,
    }


def tls_settings(bootstrap: str, pki, **fields):
    from streaminfer.settings import Settings

    return Settings(
        kafka_bootstrap_servers=bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki.ca,
        **fields,
    )


def test_full_request_over_tls_kafka_redis_and_https_gateway(
    kafka_tls, redis_tls, pki, model_repository
):
    """HTTPS → gateway → Kafka (TLS) → worker → Redis (TLS, ACL user) → gateway → HTTPS; and a
    Kafka-direct request over TLS with the clients built by streaminfer.connectivity."""
    stack = Stack(
        kafka_tls,
        redis_tls,
        model_repository,
        **kafka_env(pki, STREAMINFER_REDIS_SSL_CAFILE=str(pki.ca)),
    )
    try:
        stack.add_worker()
        env = dict(
            stack.env,
            STREAMINFER_GATEWAY_SSL_CERTFILE=str(pki.server_cert),
            STREAMINFER_GATEWAY_SSL_KEYFILE=str(pki.server_key),
        )
        gateway = spawn(["gateway"], env, f"gateway-{stack.prefix}-tls.log")
        stack.gateways.append(gateway)
        url = f"https://127.0.0.1:{env['STREAMINFER_GATEWAY_PORT']}"
        verify = ssl.create_default_context(cafile=str(pki.ca))
        from streaminfer.embedded import wait_for_http

        wait_for_http(f"{url}/ready", [gateway], timeout_s=60, verify=verify)
        response = httpx.post(
            f"{url}/v1/infer/{TASK}",
            params={"wait": 20},
            verify=verify,
            timeout=30,
            json={"inputs": {"text": "over TLS end to end"}},
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"
        with pytest.raises(httpx.ConnectError):  # the gateway's certificate is checked
            httpx.get(f"{url}/health", verify=ssl.create_default_context(cafile=str(pki.other_ca)))
        info = httpx.get(f"{url}/info", verify=verify).text
        assert REDIS_PASSWORD not in info and "rediss://streaminfer:***@" in info
    finally:
        stack.close()


async def test_kafka_direct_request_over_tls(kafka_tls, redis_tls, pki, model_repository):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streaminfer.connectivity import kafka_options
    from streaminfer.schemas.codec import AvroCodec
    from streaminfer.schemas.records import InferenceRequest, InferenceResult, Priority, Tensor
    from streaminfer.schemas.topics import request_topic, results_topic

    stack = Stack(
        kafka_tls,
        redis_tls,
        model_repository,
        **kafka_env(pki, STREAMINFER_REDIS_SSL_CAFILE=str(pki.ca)),
    )
    try:
        stack.add_worker()
        options = kafka_options(tls_settings(kafka_tls, pki))
        codec = AvroCodec()
        request = InferenceRequest(
            request_id=str(uuid.uuid4()),
            task=TASK,
            priority=Priority.NORMAL,
            inputs=[Tensor.from_numpy("text", np.array(["direct"], dtype=object))],
        )
        consumer = AIOKafkaConsumer(
            results_topic(stack.prefix, TASK),
            bootstrap_servers=kafka_tls,
            group_id=None,
            auto_offset_reset="earliest",  # no group: no 5 s join
            **options,
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka_tls, **options)
        await consumer.start()
        await producer.start()
        try:
            await producer.send_and_wait(
                request_topic(stack.prefix, TASK, Priority.NORMAL),
                codec.encode(request),
                key=request.request_id.encode(),
            )
            found = None
            deadline = time.monotonic() + 30
            while found is None and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for message in records:
                        result = codec.decode(message.value, InferenceResult)
                        if result.request_id == request.request_id:
                            found = result
            assert found is not None and found.status.value == "SUCCEEDED"
        finally:
            await producer.stop()
            await consumer.stop()
        # the CLI's Kafka consumer (tail) and Redis client (keys) over the same TLS hops
        tailed = run_cli(
            [
                "tail",
                "results",
                "--task",
                TASK,
                "--from-beginning",
                "--max",
                "1",
                "--idle-timeout",
                "15",
            ],
            stack.env,
        )
        assert tailed.returncode == 0, tailed.stderr
        assert request.request_id in tailed.stdout
        created = run_cli(["keys", "create", "--client", "tls-client"], stack.env)
        assert created.returncode == 0, created.stderr
        listed = run_cli(["keys", "list"], stack.env)
        assert "tls-client" in listed.stdout, listed.stderr
    finally:
        stack.close()


def test_wrong_ca_fails_at_start_naming_the_setting(kafka_tls, pki, model_repository):
    from conftest import stack_env

    env = stack_env(
        kafka_tls,
        "redis://127.0.0.1:1/0",
        "tca",
        model_repository,
        **kafka_env(pki, STREAMINFER_KAFKA_SSL_CAFILE=str(pki.other_ca)),
    )
    started = time.monotonic()
    done = run_cli(["topics", "create"], env)
    assert done.returncode == 2, done.stderr
    assert "STREAMINFER_KAFKA_SSL_CAFILE" in done.stderr and "not trusted" in done.stderr
    assert time.monotonic() - started < 20  # not retried until the 30 s deadline
    worker = spawn(["worker"], env, "worker-wrong-ca.log")
    try:
        assert worker.wait(60) == 2
    finally:
        stop(worker)
    assert "STREAMINFER_KAFKA_SSL_CAFILE" in (_log_dir() / "worker-wrong-ca.log").read_text()


def test_mutual_tls_needs_the_client_certificate(kafka_mtls, pki, model_repository):
    from conftest import stack_env

    env = stack_env(
        kafka_mtls,
        "redis://127.0.0.1:1/0",
        f"m{uuid.uuid4().hex[:6]}",
        model_repository,
        **kafka_env(pki),
    )
    refused = run_cli(["topics", "create"], env)
    assert refused.returncode == 2
    assert (
        "STREAMINFER_KAFKA_SSL_CERTFILE" in refused.stderr
        and "client certificate" in refused.stderr
    )
    env.update(
        STREAMINFER_KAFKA_SSL_CERTFILE=str(pki.client_cert),
        STREAMINFER_KAFKA_SSL_KEYFILE=str(pki.client_key),
    )
    created = run_cli(["topics", "create"], env)
    assert created.returncode == 0, created.stderr
    assert TASK in created.stdout


def test_missing_ca_file_is_one_clear_line(pki, model_repository, tmp_path: Path):
    from conftest import stack_env

    env = stack_env(
        "127.0.0.1:1",
        "redis://127.0.0.1:1/0",
        "x",
        model_repository,
        **kafka_env(pki, STREAMINFER_KAFKA_SSL_CAFILE=str(tmp_path / "nope.pem")),
    )
    done = run_cli(["config", "show"], env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "STREAMINFER_KAFKA_SSL_CAFILE: no such file" in done.stderr
