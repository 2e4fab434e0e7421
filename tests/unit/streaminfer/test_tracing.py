"""OpenTelemetry tracing: the SDK set up from the standard OTEL_* variables (streaminfer.tracing),
the Kafka header carrier, and the spans of gateway and worker, read back from the SDK's
InMemorySpanExporter (and, for the export itself, from a real OTLP/HTTP receiver)."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from helpers.otlp import OtlpReceiver
from helpers.worker_fakes import PREFIX, TASK, FakeModel, FakePublisher, event, make, run
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import streaminfer.gateway.producer as producer_module
from streaminfer import tracing
from streaminfer.gateway import spans as gateway_spans
from streaminfer.gateway.app import create_app
from streaminfer.gateway.producer import RequestProducer
from streaminfer.gateway.service import InferenceService
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.keys import KAFKA_HEADERS
from streaminfer.schemas.records import AuditEvent, AuditType, InferenceRequest, Priority, Tensor
from streaminfer.settings import Settings
from streaminfer.streams import spans as worker_spans
from streaminfer.streams.requests import SourceEvent

ROOT = Path(__file__).resolve().parents[3]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def new_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No OTEL_* setting of the machine's, and the API's globals as in a fresh process (the SDK
    provider may be set once per process; the test puts back what was there)."""
    import os

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)


@pytest.fixture
def exporter():
    """An SDK provider exporting to memory, installed for the test."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    yield memory
    provider.shutdown()


def hexes(context) -> tuple[str, str]:
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def traceparent_of(span) -> str:
    trace_id, span_id = hexes(span.context)
    return f"00-{trace_id}-{span_id}-{span.context.trace_flags:02x}"


def header(headers, name: str = "traceparent") -> str | None:
    values = KAFKA_HEADERS.get(headers or [], name)
    return values[0] if values else None


# --- SDK setup from the environment ---


def test_nothing_is_installed_without_an_exporter_configured():
    assert tracing.install(tracing.WORKER) is None
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert worker_spans.tracer()[1] is False, "the worker makes no spans at all"


@pytest.mark.parametrize(
    "off",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_disabled_by_the_standard_variables_even_with_an_endpoint(monkeypatch, off):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    for name, value in off.items():
        monkeypatch.setenv(name, value)
    assert tracing.install(tracing.GATEWAY) is None
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _export_one(provider: TracerProvider, name: str = "probe") -> None:
    with trace.get_tracer("test").start_as_current_span(name):
        pass
    assert provider.force_flush(10_000)


def test_an_otlp_endpoint_exports_over_otlp_http_with_our_service_name(monkeypatch):
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        provider = tracing.install(tracing.WORKER)
        try:
            assert trace.get_tracer_provider() is provider
            assert tracing.install(tracing.WORKER) is provider, "a second call keeps the first"
            _export_one(provider)
            [span] = receiver.wait_for(lambda s: s, 10)
        finally:
            provider.shutdown()
    assert span.name == "probe" and span.service == "streaminfer-worker"
    assert (
        span.resource["service.version"] and span.resource["telemetry.sdk.name"] == "opentelemetry"
    )


def test_the_signal_specific_endpoint_is_used_as_given(monkeypatch):
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/v1/traces")
        provider = tracing.install(tracing.GATEWAY)
        try:
            _export_one(provider)
            spans = receiver.wait_for(lambda s: s, 10)
        finally:
            provider.shutdown()
    assert [s.service for s in spans] == ["streaminfer-gateway"]


def test_service_name_and_resource_attributes_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,service.version=9.9"
    )
    assert tracing.resource(tracing.GATEWAY).attributes["service.name"] == "streaminfer-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gateway")
    attributes = tracing.resource(tracing.GATEWAY).attributes
    assert attributes["service.name"] == "edge-gateway"
    assert (
        attributes["deployment.environment"] == "staging" and attributes["service.version"] == "9.9"
    )
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert tracing.resource(tracing.WORKER).attributes["service.name"] == "from-attributes"


def test_the_sampler_is_the_sdks_from_its_variables(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    provider = tracing.install(tracing.WORKER)
    try:
        assert "TraceIdRatioBased{0.25}" in provider.sampler.get_description()
    finally:
        provider.shutdown()


def test_other_exporters_are_found_by_their_entry_point(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert [type(e).__name__ for e in tracing.exporters()] == ["ConsoleSpanExporter"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")  # the default, and no endpoint: nothing
    assert tracing.exporters() == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no-such-exporter")
    with caplog.at_level(logging.ERROR, "streaminfer.tracing"):
        assert tracing.exporters() == []
    assert "no-such-exporter" in caplog.text


def test_otlp_over_grpc_names_the_package_it_needs(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with caplog.at_level(logging.ERROR, "streaminfer.tracing"):
        assert tracing.exporters() == []
    assert "opentelemetry-exporter-otlp-proto-grpc" in caplog.text
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert tracing.exporters() == []


def test_spans_still_batched_are_flushed_when_the_process_exits():
    """The batch processor waits a minute here; only the shutdown at exit can deliver the span."""
    import os

    code = (
        "from opentelemetry import trace; from streaminfer import tracing; "
        "assert tracing.install(tracing.WORKER); "
        "trace.get_tracer('t').start_span('at-exit').end()"
    )
    with OtlpReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="60000")
        subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=60)
        spans = receiver.wait_for(lambda s: s, 5)
    assert [s.name for s in spans] == ["at-exit"]


# --- the Kafka header carrier ---


def test_kafka_headers_carry_the_w3c_context_both_ways(exporter):
    with trace.get_tracer("t").start_as_current_span("produce") as span:
        headers: list[tuple[str, bytes]] = [("other", b"x"), ("traceparent", b"stale")]
        propagate.inject(headers, setter=KAFKA_HEADERS)
    assert [k for k, _ in headers] == ["other", "traceparent"], "set replaces the stale value"
    assert header(headers) == traceparent_of(span)
    extracted = trace.get_current_span(
        propagate.extract(headers, getter=KAFKA_HEADERS)
    ).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (span.context.trace_id, span.context.span_id)


@pytest.mark.parametrize(
    "carrier",
    [
        [("Traceparent", TRACEPARENT.encode())],  # another client's capitalisation
        {"traceparent": TRACEPARENT.encode()},  # a mapping, as faust may hold them
        [("traceparent", None), ("traceparent", TRACEPARENT.encode())],  # Kafka allows null values
        ((b"x", b"y"), ("traceparent", bytearray(TRACEPARENT.encode()))),
    ],
)
def test_the_carrier_reads_headers_as_producers_write_them(carrier):
    context = trace.get_current_span(
        propagate.extract(carrier, getter=KAFKA_HEADERS)
    ).get_span_context()
    assert hexes(context) == (TRACE_ID, PARENT_ID)


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", b"\xff\xfe not utf-8")],
        [("traceparent", b"00-" + b"f" * 5000)],
        [("traceparent", b"")],
        [("baggage", b"=" * 10_000)],
        [("traceparent", TRACEPARENT.encode()), ("tracestate", b"\x00" * 600)],
        None,
        (),
        [("traceparent", None)],
    ],
)
def test_hostile_headers_never_raise_and_give_no_context_or_a_valid_one(headers):
    context = worker_spans.request_context(headers, None)
    assert context is None or trace.get_current_span(context).get_span_context().is_valid


# --- gateway ---

TINY = {
    "task": "tiny",
    "name": "tiny-model",
    "backend": "onnxruntime",
    "max_batch_size": 4,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [3]}],
}


class Producer:
    def __init__(self) -> None:
        self.sent: list[InferenceRequest] = []

    async def is_reachable(self):
        return True

    async def submit(self, request, accepted):
        self.sent.append(request)


class Store:
    async def mark_queued(self, *args):
        pass

    async def wait(self, request_id, timeout_s):
        return None

    async def live_workers(self):
        return {"w1": ["tiny"]}

    async def served_tasks(self, seen=()):
        return {"tiny"}


@pytest.fixture
def gateway(tmp_path):
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"unused by the gateway")
    (tmp_path / "tiny" / "model.yaml").write_text(yaml.safe_dump(TINY))
    app = create_app(Settings(model_repository=tmp_path, auth="disabled"))
    producer = Producer()
    app.state.service = InferenceService(producer, Store(), tmp_path, "unit", max_wait_s=0.05)
    client = TestClient(app, raise_server_exceptions=False)
    client.producer = producer
    return client


def ancestors(span, spans) -> list:
    """``span``'s parents up to its trace's root, among ``spans``."""
    by_id = {s.context.span_id: s for s in spans}
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


def test_fastapis_server_span_continues_the_callers_trace_and_holds_ours(gateway, exporter):
    response = gateway.post(
        "/v1/infer/tiny",
        params={"wait": 0.05},
        headers={"traceparent": TRACEPARENT},
        json={"inputs": {"x": [1, 2, 3]}},
    )
    assert response.status_code == 202
    finished = exporter.get_finished_spans()
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    [waited] = [s for s in finished if s.name == "wait result"]
    assert (
        server.name == "POST /v1/infer/{task}"
        and server.attributes["http.response.status_code"] == 202
    )
    assert hexes(server.parent) == (TRACE_ID, PARENT_ID), "the caller's span is its parent"
    assert server in ancestors(waited, finished)
    assert waited.attributes["streaminfer.request_id"] == response.json()["request_id"]
    assert waited.attributes["streaminfer.result.found"] is False
    # the client learns its trace, and the request carries it on to Kafka
    assert response.headers["traceparent"].split("-")[1] == TRACE_ID
    assert gateway.producer.sent[-1].trace["traceparent"].split("-")[1] == TRACE_ID


def test_without_a_traceparent_the_gateway_starts_the_trace(gateway, exporter):
    response = gateway.post("/v1/infer/tiny", json={"inputs": {"x": [1, 2, 3]}})
    [server] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert (
        server.parent is None
        and response.headers["traceparent"].split("-")[1] == hexes(server.context)[0]
    )


def test_the_oip_route_is_traced_too_and_its_timeout_is_a_server_error(gateway, exporter):
    assert (
        gateway.post(
            "/v2/models/tiny/infer",
            headers={"traceparent": TRACEPARENT},
            json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
            },
        ).status_code
        == 504
    )
    finished = exporter.get_finished_spans()
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    [waited] = [s for s in finished if s.name == "wait result"]
    assert server.name == "POST /v2/models/{task}/infer" and hexes(server.parent) == (
        TRACE_ID,
        PARENT_ID,
    )
    assert server.status.status_code is StatusCode.ERROR and server in ancestors(waited, finished)
    assert gateway.producer.sent[-1].trace["traceparent"].split("-")[1] == TRACE_ID


def test_without_the_sdk_the_route_still_passes_the_callers_context_on(gateway):
    response = gateway.post(
        "/v2/models/tiny/infer",
        headers={"traceparent": TRACEPARENT},
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
    )
    assert response.status_code == 504
    assert gateway.producer.sent[-1].trace == {"traceparent": TRACEPARENT}
    gateway.post(
        "/v1/infer/tiny",
        headers={"traceparent": "not-a-traceparent"},
        json={"inputs": {"x": [1, 2, 3]}},
    )
    assert gateway.producer.sent[-1].trace == {}, "an invalid traceparent is no context (W3C)"
    assert gateway_spans.tracer()[1] is False, "without an SDK the gateway makes no span at all"


class KafkaProducer:
    """aiokafka's producer as the gateway calls it; records what it was asked to send."""

    def __init__(self, **config) -> None:
        self.sent: list[dict] = []
        from types import SimpleNamespace

        self.client = SimpleNamespace(
            cluster=SimpleNamespace(partitions_for_topic=lambda topic: {0, 1})
        )

    async def start(self):
        pass

    async def stop(self):
        pass

    async def send(self, topic, value, key=None, headers=None, partition=None):
        import asyncio

        self.sent.append(
            {"topic": topic, "value": value, "headers": headers, "partition": partition}
        )
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
async def producer(monkeypatch):
    monkeypatch.setattr(producer_module, "AIOKafkaProducer", KafkaProducer)
    made = RequestProducer("127.0.0.1:9092", codec=AvroCodec(), prefix="unit")
    await made.start()
    yield made
    await made.stop()


def tiny_request(**fields) -> tuple[InferenceRequest, AuditEvent]:
    request = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task="tiny",
        inputs=[Tensor.from_numpy("x", np.zeros((1, 3), np.float32))],
        **fields,
    )
    return request, AuditEvent(
        request_id=request.request_id, task="tiny", type=AuditType.ACCEPTED, actor="gateway"
    )


async def test_the_produce_span_is_a_producer_span_whose_context_the_event_carries(
    producer, exporter
):
    request, accepted = tiny_request()
    with trace.get_tracer("t").start_as_current_span("server") as server:
        await producer.submit(request, accepted)
    [produced] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert (
        produced.name == "send unit.requests.tiny.normal"
        and produced.parent.span_id == server.context.span_id
    )
    assert produced.attributes["messaging.system"] == "kafka"
    assert produced.attributes["messaging.destination.name"] == "unit.requests.tiny.normal"
    assert produced.attributes["messaging.destination.partition.id"] in ("0", "1")
    sent = producer._producer.sent[0]
    assert header(sent["headers"]) == traceparent_of(produced)
    assert AvroCodec().decode(sent["value"], InferenceRequest).trace[
        "traceparent"
    ] == traceparent_of(produced)
    assert producer._producer.sent[1]["headers"] is None, "the audit event carries no context"


async def test_without_the_sdk_the_callers_traceparent_passes_through_unchanged(producer):
    request, accepted = tiny_request(trace={"traceparent": TRACEPARENT})
    with trace.use_span(
        trace.NonRecordingSpan(
            trace.get_current_span(
                propagate.extract({"traceparent": TRACEPARENT})
            ).get_span_context()
        )
    ):
        await producer.submit(request, accepted)
    sent = producer._producer.sent[0]
    assert header(sent["headers"]) == TRACEPARENT
    assert AvroCodec().decode(sent["value"], InferenceRequest).trace == {"traceparent": TRACEPARENT}
    request, accepted = tiny_request()
    await producer.submit(request, accepted)
    assert producer._producer.sent[2]["headers"] is None, "no context, no header"


# --- worker ---


class Publisher(FakePublisher):
    """Also keeps the Kafka headers each result went out with."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, list | None] = {}

    async def publish_results(self, items):
        for item in items:
            self.headers[item.request_id] = item.headers
        await super().publish_results(items)


def with_headers(source: SourceEvent, headers) -> SourceEvent:
    return dataclasses.replace(source, headers=headers)


@pytest.fixture
def codec():
    return AvroCodec()


async def test_one_batch_span_links_every_request_and_each_trace_goes_on(codec, exporter):
    model, publisher = FakeModel(), Publisher()
    parents = [new_traceparent() for _ in range(3)]
    events = [event(codec, [[i, i]], i) for i in range(5)]
    sources = [
        with_headers(s, [("traceparent", p.encode())])
        for (s, _), p in zip(events, parents, strict=False)
    ]
    map_only = new_traceparent()  # a Kafka-direct producer that fills only the Avro trace map
    sources.append(event(codec, [[3, 3]], 3, trace={"traceparent": map_only})[0])
    sources.append(events[4][0])  # and one with no context at all
    request_ids = [codec.decode(s.value, InferenceRequest).request_id for s in sources]
    assert sorted(await run(make(model, publisher, codec), sources, timeout_s=15)) == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert model.calls == [5], "the five requests ran as one batch"
    finished = exporter.get_finished_spans()
    [batch] = [s for s in finished if s.name.startswith("batch ")]
    waits = {
        s.attributes["streaminfer.request_id"]: s
        for s in finished
        if s.name.startswith("queue wait")
    }
    writes = {
        s.attributes["streaminfer.request_id"]: s for s in finished if s.name == "write result"
    }
    assert (
        batch.name == "batch echo-model"
        and batch.kind is SpanKind.INTERNAL
        and batch.parent is None
    )
    assert dict(batch.attributes) == {
        "streaminfer.model.name": "echo-model",
        "streaminfer.model.version": "1",
        "streaminfer.batch.size": 5,
        "streaminfer.batch.requests": 5,
        "messaging.batch.message_count": 5,
    }
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == {
        (w.context.trace_id, w.context.span_id) for w in waits.values()
    }, "a link to each request's wait"
    for rid, incoming in zip(request_ids, [*parents, map_only, None], strict=True):
        wait, write = waits[rid], writes[rid]
        assert (
            wait.kind is SpanKind.CONSUMER
            and wait.name == f"queue wait {PREFIX}.requests.{TASK}.normal"
        )
        assert wait.start_time <= wait.end_time <= batch.start_time
        if (
            incoming is None
        ):  # the worker starts its trace: the wait is the root, the write its child
            assert wait.parent is None and write.parent.span_id == wait.context.span_id
        else:
            trace_id, span_id = incoming.split("-")[1:3]
            assert hexes(wait.parent) == (trace_id, span_id) and hexes(write.parent) == (
                trace_id,
                span_id,
            )
        assert write.context.trace_id == wait.context.trace_id
        assert [link.context.span_id for link in write.links] == [batch.context.span_id]
        assert header(publisher.headers[rid]) == traceparent_of(write), (
            "downstream consumers continue it"
        )


async def test_without_the_sdk_the_request_context_reaches_the_result_unchanged(codec):
    model, publisher = FakeModel(), Publisher()
    traced, _ = event(codec, [[1, 1]], 0)
    map_only, _ = event(codec, [[1, 1]], 1, trace={"traceparent": TRACEPARENT})
    garbage, _ = event(codec, [[1, 1]], 2, trace={"traceparent": "garbage"})
    sources = [
        with_headers(traced, [("traceparent", TRACEPARENT.encode()), ("tracestate", b"k=v")]),
        map_only,
        with_headers(garbage, [("traceparent", b"00-zz")]),
        event(codec, [[1, 1]], 3)[0],
    ]
    ids = [codec.decode(s.value, InferenceRequest).request_id for s in sources]
    assert sorted(await run(make(model, publisher, codec), sources, timeout_s=15)) == [0, 1, 2, 3]
    assert worker_spans.tracer()[1] is False
    assert dict(publisher.headers[ids[0]]) == {
        "traceparent": TRACEPARENT.encode(),
        "tracestate": b"k=v",
    }
    assert header(publisher.headers[ids[1]]) == TRACEPARENT
    assert publisher.headers[ids[2]] is None and publisher.headers[ids[3]] is None


async def test_a_refused_event_is_written_in_its_trace(codec, exporter):
    publisher = Publisher()
    source = SourceEvent(
        f"{PREFIX}.requests.{TASK}.normal",
        0,
        0,
        b"k",
        b"not avro",
        [("traceparent", TRACEPARENT.encode())],
    )
    assert await run(make(FakeModel(), publisher, codec), [source], timeout_s=15) == [0]
    [write] = [s for s in exporter.get_finished_spans() if s.name == "write result"]
    assert hexes(write.parent) == (TRACE_ID, PARENT_ID)
    assert write.attributes["streaminfer.dead_letter.code"] == "UNDECODABLE"
    assert publisher.letters


class RaisingTracer(trace.Tracer):
    """An SDK's tracer that breaks: every span it is asked for raises."""

    def __init__(self) -> None:
        self.calls = 0

    def start_span(self, *args, **kwargs):
        self.calls += 1
        raise RuntimeError("exporter exploded")

    def start_as_current_span(self, *args, **kwargs):
        raise RuntimeError("exporter exploded")


class RaisingProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.tracer = RaisingTracer()

    def get_tracer(self, *args, **kwargs):
        return self.tracer


async def test_an_sdk_that_raises_never_stops_a_request(codec, caplog):
    provider = RaisingProvider()
    trace.set_tracer_provider(provider)
    model, publisher = FakeModel(), Publisher()
    sources = [event(codec, [[i, i]], i)[0] for i in range(3)]
    sources[0] = with_headers(sources[0], [("traceparent", TRACEPARENT.encode())])
    sources.append(SourceEvent(f"{PREFIX}.requests.{TASK}.normal", 0, 3, b"k", b"not avro"))
    with caplog.at_level("DEBUG", logger="streaminfer.streams.spans"):
        assert sorted(await run(make(model, publisher, codec), sources, timeout_s=15)) == [
            0,
            1,
            2,
            3,
        ]
    assert provider.tracer.calls >= 4, "queue waits, the batch and the writes all asked for spans"
    assert len(publisher.results) == 3 and len(publisher.letters) == 1, "every event answered"
    ids = [codec.decode(s.value, InferenceRequest).request_id for s in sources[:3]]
    assert header(publisher.headers[ids[0]]) == TRACEPARENT, "the context it came with goes on"
    warned = [
        r
        for r in caplog.records
        if r.name == "streaminfer.streams.spans" and r.levelname == "WARNING"
    ]
    assert len(warned) <= 1 and (warned or worker_spans._warned), "logged once, not per request"


def test_a_batch_span_that_fails_to_start_or_end_lets_the_batch_and_its_error_through():
    from types import SimpleNamespace

    trace.set_tracer_provider(RaisingProvider())
    item = SimpleNamespace(
        waited=False,
        context=None,
        root=None,
        received_ns=1,
        priority=Priority.NORMAL,
        source=SimpleNamespace(topic="t", partition=0, offset=0),
        request=SimpleNamespace(request_id="r"),
    )
    with worker_spans.batch("m", "1", [item], 1) as batch:
        assert batch is None and item.waited
    with pytest.raises(ValueError, match="model broke"), worker_spans.batch("m", "1", [], 1):
        raise ValueError("model broke")  # the batch's own error, not the tracer's
    outcome = SimpleNamespace(
        context=None,
        root=None,
        batch=None,
        span=None,
        headers=None,
        request_id="r",
        result=None,
        letter=None,
    )
    assert worker_spans.start_writes([outcome]) == [] and outcome.span is None
    worker_spans.end_writes([SimpleNamespace(set_status=_raise, end=_raise)], ok=False)  # no raise


def _raise(*args, **kwargs):
    raise RuntimeError("span broke")


async def test_a_gateway_sdk_that_raises_never_fails_a_submit(producer):
    trace.set_tracer_provider(RaisingProvider())
    request, accepted = tiny_request()
    await producer.submit(request, accepted)  # before: the RuntimeError reached the route (a 500)
    assert [m["topic"] for m in producer._producer.sent][0] == "unit.requests.tiny.normal"
    with gateway_spans.waiting(request.request_id, 1.0) as found:
        found(None)
    with pytest.raises(ValueError, match="body"), gateway_spans.producing("t", "r", None):
        raise ValueError("body")  # the body's own error goes through


def test_without_the_sdk_no_span_is_made_on_the_hot_path():
    """What a request costs without an SDK: its context read and written once; no span objects."""
    from types import SimpleNamespace

    source = SimpleNamespace(topic="t", partition=0, offset=0)
    item = SimpleNamespace(waited=False, context=None, root=None, source=source, received_ns=1)
    assert worker_spans.end_queue_wait(item) is None and item.waited and item.root is None
    outcome = SimpleNamespace(
        context=None,
        root=None,
        batch=None,
        span=None,
        headers=None,
        request_id="r",
        result=None,
        letter=None,
    )
    assert worker_spans.start_writes([outcome]) == [] and outcome.span is None
    with worker_spans.batch("m", "1", [item], 1) as batch:
        assert batch is None


def test_gateway_and_streams_import_only_the_opentelemetry_api():
    import ast

    imported = set()
    for package in ("gateway", "streams", "schemas"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module]
                    if isinstance(node, ast.ImportFrom) and node.module
                    else []
                )
                imported |= {(package, n) for n in names if n.startswith("opentelemetry")}
    assert imported, "the spans are made with the API"
    assert not [
        (p, n) for p, n in imported if n.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))
    ]
    assert not [p for p, _ in imported if p == "schemas"], "the Kafka carrier is duck-typed"
