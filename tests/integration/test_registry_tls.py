"""The schema registry over real TLS with basic auth (the fake registry on HTTPS, certificates made
here): the client the shell builds verifies the registry with the CA and sends the credentials; a
wrong password or an untrusted certificate is a clear, retriable error, never a dead letter; and a
full request through the gateway and a worker registers under the configured subject strategy."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import stop
from helpers.registry import fake_registry
from helpers.tls import make_pki

from streaminfer import connectivity
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import DecodeError, RegistryUnavailable
from streaminfer.schemas.records import DataType, InferenceRequest, Tensor
from streaminfer.schemas.registry import RegistryAuthError
from streaminfer.schemas.topics import (
    all_topics,
    audit_topic,
    dlq_topic,
    request_topics,
    results_topic,
)
from streaminfer.settings import Settings

pytestmark = pytest.mark.integration

TASK = "text-embedding"
USER, PASSWORD = "registry-user", "p@ss:w0rd"  # a colon and an @ must survive basic auth


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def registry(pki):
    with fake_registry(
        credentials=(USER, PASSWORD), certfile=pki.server_cert, keyfile=pki.server_key
    ) as served:
        yield served


def _settings(url: str, pki, **fields) -> Settings:
    values = {
        "schema_registry_url": url,
        "schema_registry_username": USER,
        "schema_registry_password": PASSWORD,
        "schema_registry_cafile": pki.ca,
        "topic_prefix": "reg",
        **fields,
    }
    return Settings(**values)


def _codec(settings: Settings) -> AvroCodec:
    return AvroCodec(registry=connectivity.schema_registry(settings, tasks=[TASK]))


def _request() -> InferenceRequest:
    return InferenceRequest(
        "r1",
        TASK,
        [Tensor("text", DataType.BYTES, [1], [b"over TLS"])],
        created_at=1_764_000_000_000,
    )


def _expected_auth() -> str:
    return httpx.BasicAuth(USER, PASSWORD)._auth_header


async def test_https_registry_with_basic_auth_and_the_ca(registry, pki) -> None:
    url, state = registry
    assert url.startswith("https://")
    settings = _settings(url, pki, schema_registry_subject_strategy="topic_record")
    with _codec(settings) as producer, _codec(settings) as consumer:
        await producer.prepare_async()
        data = producer.encode(_request())
        assert await consumer.decode_async(data, InferenceRequest) == _request()
    assert state.calls[-1] == f"GET /schemas/ids/{int.from_bytes(data[1:5], 'big')}"
    assert state.authorizations and set(state.authorizations) == {_expected_auth()}
    name = InferenceRequest.AVRO_NAME
    assert {f"{t}-{name}" for t in request_topics("reg", TASK)} <= set(state.subjects)
    assert f"{results_topic('reg', TASK)}-io.streaminfer.v1.InferenceResult" in state.subjects
    # The same settings, in confluent-kafka's configuration names, reach the same registry.
    schema_registry = pytest.importorskip("confluent_kafka.schema_registry")
    avro = pytest.importorskip("confluent_kafka.schema_registry.avro")
    client = schema_registry.SchemaRegistryClient(
        {"url": url, "basic.auth.user.info": f"{USER}:{PASSWORD}", "ssl.ca.location": str(pki.ca)}
    )
    decoded = avro.AvroDeserializer(client)(data, None)
    assert decoded["request_id"] == "r1" and decoded["inputs"][0]["data"] == [b"over TLS"]


async def test_a_wrong_password_is_a_clear_error_and_never_a_decode_error(registry, pki) -> None:
    url, state = registry
    with _codec(_settings(url, pki)) as good:
        data = good.encode(_request())
    with _codec(_settings(url, pki, schema_registry_password="wrong")) as codec:
        for attempt in (codec.prepare_async(), codec.decode_async(data, InferenceRequest)):
            with pytest.raises(
                RegistryAuthError, match="HTTP 401: the registry refused the credentials"
            ) as info:
                await attempt
            # Retriable: the worker waits (SPEC section 9) and the event is not dead-lettered.
            assert info.value.retriable and not isinstance(info.value, DecodeError)
    with _codec(
        _settings(url, pki, schema_registry_username=None, schema_registry_password=None)
    ) as anonymous:
        with pytest.raises(RegistryAuthError):
            anonymous.encode(_request())
    assert state.authorizations[-1] is None  # nothing sent without credentials


@pytest.mark.parametrize("cafile", ["other", "system"])
def test_an_untrusted_certificate_says_so(registry, pki, cafile: str) -> None:
    url, state = registry
    settings = _settings(
        url, pki, schema_registry_cafile=pki.other_ca if cafile == "other" else None
    )
    with _codec(settings) as codec:
        with pytest.raises(
            RegistryUnavailable, match="TLS: the registry's certificate is not trusted"
        ):
            codec.encode(_request())
    assert state.calls == []  # the handshake failed: no credentials went out


# -- a full request -------------------------------------------------------------------------------


def _consume_all(
    bootstrap: str, topics: list[str], timeout_s: float = 10.0
) -> dict[str, list[bytes]]:
    """Everything on ``topics`` now: read from the start up to their end offsets."""
    from aiokafka import AIOKafkaConsumer

    async def read() -> dict[str, list[bytes]]:
        # no consumer group (joining one costs 5 s on Tansu): every partition, from the start
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        seen: dict[str, list[bytes]] = {topic: [] for topic in topics}
        try:
            partitions = consumer.assignment()
            assert {tp.topic for tp in partitions} == set(topics), partitions
            ends = await consumer.end_offsets(list(partitions))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                positions = {tp: await consumer.position(tp) for tp in ends}
                if all(positions[tp] >= end for tp, end in ends.items()):
                    break
                batch = await consumer.getmany(timeout_ms=200)
                for partition, messages in batch.items():
                    seen[partition.topic].extend(m.value for m in messages)
            else:
                raise AssertionError(
                    f"{topics} not read to their end offsets {ends} in {timeout_s} s"
                )
        finally:
            await consumer.stop()
        return seen

    return asyncio.run(read())


def test_full_request_with_an_https_registry_and_the_topic_strategy(
    registry, pki, make_stack, redis_server, kafka_server
) -> None:
    url, state = registry
    env = {
        "STREAMINFER_SCHEMA_REGISTRY_URL": url,
        "STREAMINFER_SCHEMA_REGISTRY_USERNAME": USER,
        "STREAMINFER_SCHEMA_REGISTRY_PASSWORD": PASSWORD,
        "STREAMINFER_SCHEMA_REGISTRY_CAFILE": str(pki.ca),
        "STREAMINFER_SCHEMA_REGISTRY_SUBJECT_STRATEGY": "topic",
        "STREAMINFER_TASKS": TASK,
    }
    stack = make_stack(redis_url=redis_server, **env)
    # A worker with the wrong password first: it says why it waits, and consumes nothing.
    refused = stack.add_worker(wait=False, STREAMINFER_SCHEMA_REGISTRY_PASSWORD="wrong")
    log = stack.worker_logs[-1]
    deadline = time.monotonic() + 60
    while "refused the credentials" not in log.read_text(errors="replace"):
        assert refused.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        time.sleep(0.5)
    assert PASSWORD not in log.read_text(errors="replace")
    stop(refused)
    stack.workers.remove(refused)

    stack.add_worker()
    gateway = stack.add_gateway()
    response = httpx.post(
        f"{gateway}/v1/infer/{TASK}",
        params={"wait": 30},
        timeout=40,
        json={"inputs": {"text": "registry over TLS"}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"

    prefix = stack.prefix
    wanted = {
        f"{topic}-value"
        for topic in [
            *request_topics(prefix, TASK),
            results_topic(prefix, TASK),
            audit_topic(prefix),
            dlq_topic(prefix),
        ]
    }
    assert wanted <= set(state.subjects), sorted(state.subjects)
    assert not any(s.startswith("io.streaminfer.v1.Inference") for s in state.subjects)
    assert set(state.authorizations) == {
        _expected_auth(),
        httpx.BasicAuth(USER, "wrong")._auth_header,
    }
    # On Kafka: Confluent framing with ids the registry holds; nothing dead-lettered.
    seen = _consume_all(kafka_server, all_topics(prefix, [TASK]))
    framed = [
        value for topic, values in seen.items() if topic != dlq_topic(prefix) for value in values
    ]
    assert framed and all(
        v[:1] == b"\x00" and int.from_bytes(v[1:5], "big") in state.schemas for v in framed
    )
    assert seen[dlq_topic(prefix)] == []
