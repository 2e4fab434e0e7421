"""Subject naming strategies (record, topic, topic_record), refused credentials, and the setting
that selects the strategy, down to the client the shell builds."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic import ValidationError

from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import DecodeError, RegistryUnavailable
from streaminfer.schemas.records import (
    NAMESPACE,
    DataType,
    InferenceRequest,
    InferenceResult,
    Tensor,
)
from streaminfer.schemas.registry import (
    RegistryAuthError,
    RegistryClient,
    record_topics,
    subject_names,
)

URL = "http://registry.test:8081"
REQ = InferenceRequest.AVRO_NAME
RES = InferenceResult.AVRO_NAME


class Registry:
    """POST /subjects/<s>/versions: one id per schema text, as a real registry."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404, json={"error_code": 40403})
        subject = request.url.path.split("/")[2]
        schema = json.loads(request.content)["schema"]
        schema_id = self.ids.setdefault(schema, 100 + len(self.ids))
        self.subjects.setdefault(subject, []).append(schema_id)
        return httpx.Response(200, json={"id": schema_id})


@pytest.fixture
def http() -> Iterator[Callable[..., httpx.Client]]:
    made: list[httpx.Client] = []

    def make(handler) -> httpx.Client:
        made.append(httpx.Client(transport=httpx.MockTransport(handler)))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_subject_names_per_strategy() -> None:
    topics = ["p.requests.a.high", "p.requests.a.low"]
    assert subject_names("record", REQ, topics) == [REQ]
    assert subject_names("topic", REQ, topics) == [
        "p.requests.a.high-value",
        "p.requests.a.low-value",
    ]
    assert subject_names("topic_record", REQ, topics) == [
        f"p.requests.a.high-{REQ}",
        f"p.requests.a.low-{REQ}",
    ]
    assert subject_names("topic", REQ, topics + topics[:1]) == subject_names("topic", REQ, topics)
    # A type written to no topic of its own (nested in others) keeps its name.
    assert subject_names("topic", Tensor.AVRO_NAME, []) == [Tensor.AVRO_NAME]
    for bad in ("Topic", "topic-record", "TopicNameStrategy", ""):
        with pytest.raises(ValueError, match="unknown subject strategy"):
            subject_names(bad, REQ, topics)


def test_record_topics_follow_the_topic_names() -> None:
    topics = record_topics("acme", ["a", "b", "a"])
    assert topics[REQ] == [
        f"acme.requests.{t}.{p}" for t in "ab" for p in ("high", "normal", "low")
    ]
    assert topics[RES] == ["acme.results.a", "acme.results.b"]
    assert topics[f"{NAMESPACE}.AuditEvent"] == ["acme.audit"]
    assert topics[f"{NAMESPACE}.DeadLetter"] == ["acme.dlq"]
    assert Tensor.AVRO_NAME not in topics


def test_client_checks_its_strategy() -> None:
    with pytest.raises(ValueError, match="unknown subject strategy"):
        RegistryClient(URL, subject_strategy="topics", topics=lambda name: [])
    with pytest.raises(ValueError, match="needs the records' topics"):
        RegistryClient(URL, subject_strategy="topic")
    assert RegistryClient(URL).subject_strategy == "record"

    def unused(name: str) -> list[str]:
        raise AssertionError("the record strategy needs no topics")

    assert RegistryClient(URL, topics=unused).subjects(REQ) == [REQ]


@pytest.mark.parametrize("strategy", ["record", "topic", "topic_record"])
def test_the_codec_registers_under_the_strategys_subjects(http, strategy: str) -> None:
    registry = Registry()
    mapping = record_topics("p", ["text-embedding"])
    client = RegistryClient(
        URL,
        client=http(registry),
        subject_strategy=strategy,
        topics=lambda name: mapping.get(name, []),
    )
    codec = AvroCodec(registry=client)
    data = codec.encode(
        InferenceRequest(
            "r1", "text-embedding", [Tensor("text", DataType.BYTES, [1], [b"x"])], created_at=1
        )
    )
    wanted = {
        "record": [REQ],
        "topic": [f"{t}-value" for t in mapping[REQ]],
        "topic_record": [f"{t}-{REQ}" for t in mapping[REQ]],
    }[strategy]
    assert sorted(registry.subjects) == sorted(wanted)
    # One global id whatever the subjects: the framing is the same under every strategy.
    (schema_id,) = {i for ids in registry.subjects.values() for i in ids}
    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")


def test_different_ids_for_one_schema_are_not_trusted(http) -> None:
    answers = iter([7, 8])
    client = RegistryClient(
        URL,
        client=http(lambda request: httpx.Response(200, json={"id": next(answers)})),
        subject_strategy="topic",
        topics=lambda name: ["a", "b"],
    )
    with pytest.raises(RegistryUnavailable, match="got ids"):
        client.register(REQ, {"type": "string"})


@pytest.mark.parametrize("code", [401, 403])
def test_refused_credentials_are_a_clear_retriable_error(http, code: int) -> None:
    client = RegistryClient(
        URL,
        client=http(
            lambda request: httpx.Response(
                code, json={"error_code": code, "message": "Unauthorized"}
            )
        ),
    )
    for call in (lambda: client.register(REQ, {"type": "string"}), lambda: client.schema_by_id(3)):
        with pytest.raises(
            RegistryAuthError, match=f"HTTP {code}: the registry refused the credentials"
        ):
            call()
    error = RegistryAuthError("x")
    # Retried like an outage, so a worker never dead-letters an event for our configuration.
    assert isinstance(error, RegistryUnavailable) and not isinstance(error, DecodeError)
    assert error.retriable and error.code == "SCHEMA_REGISTRY_UNAVAILABLE"


# -- the setting --------------------------------------------------------------------------------


def test_the_setting_is_validated_and_read_from_the_environment(monkeypatch) -> None:
    from streaminfer.settings import Settings

    assert Settings().schema_registry_subject_strategy == "record"  # what was always registered
    monkeypatch.setenv("STREAMINFER_SCHEMA_REGISTRY_SUBJECT_STRATEGY", "topic_record")
    assert Settings().schema_registry_subject_strategy == "topic_record"
    for bad in ("topic-record", "TopicNameStrategy", "value"):
        monkeypatch.setenv("STREAMINFER_SCHEMA_REGISTRY_SUBJECT_STRATEGY", bad)
        with pytest.raises(ValidationError):
            Settings()


def test_the_shell_builds_the_client_with_the_strategy_and_the_tasks_topics(tmp_path) -> None:
    from streaminfer import connectivity
    from streaminfer.settings import Settings

    settings = Settings(
        schema_registry_url="http://reg:pw@127.0.0.1:1/",
        topic_prefix="acme",
        schema_registry_subject_strategy="topic",
        model_repository=tmp_path,
    )
    assert connectivity.schema_registry(Settings()) is None
    tasks = ["a"]
    client = connectivity.schema_registry(settings, tasks=lambda: tasks)
    try:
        assert client.subject_strategy == "topic" and client._url == "http://127.0.0.1:1"
        assert client.subjects(RES) == ["acme.results.a-value"]
        tasks.append("b")  # asked at registration time: a task added since is included
        assert client.subjects(RES) == ["acme.results.a-value", "acme.results.b-value"]
        assert client.subjects(Tensor.AVRO_NAME) == [Tensor.AVRO_NAME]
        assert client._client._auth is None  # credentials in the URL are never sent
    finally:
        client._client.close()
    # Default tasks: the model repository's built ones (an empty one here: record names).
    empty = connectivity.schema_registry(settings)
    assert empty.subjects(REQ) == [REQ]
    empty._client.close()


def test_the_worker_builds_the_client_with_the_strategy(tmp_path) -> None:
    from streaminfer.streams.app import WorkerOptions, create_worker

    http = httpx.Client(transport=httpx.MockTransport(Registry()))
    options = WorkerOptions(
        bootstrap_servers="127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
        topic_prefix="acme",
        group_id="g",
        model_repository=str(tmp_path),
        tasks=["a"],
        worker_id="w",
        metrics_port=None,
        schema_registry_url=URL,
        registry_http=http,
        schema_registry_subject_strategy="topic_record",
    )
    _app, runtime = create_worker(options)
    try:
        registry = runtime.codec._registry
        assert registry.subject_strategy == "topic_record"
        assert registry.subjects(RES) == [f"acme.results.a-{RES}"]
    finally:
        http.close()
