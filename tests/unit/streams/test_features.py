"""The worker's feature lookup (streams/features.py) against a temporary SQLite database and a
fake Redis, alone and through a RequestProcessor with fakes around it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from helpers.worker_fakes import PREFIX, FakePublisher, feed, until_acked

from streaminfer.models.config import ModelConfig
from streaminfer.models.features import parse_features, resolve_url
from streaminfer.models.signature import TensorSpec
from streaminfer.schemas import keys
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.records import AuditType, InferenceRequest, Status, Tensor
from streaminfer.streams import metrics
from streaminfer.streams.features import (
    FeatureLookup,
    FeaturesNotFound,
    FeatureStoreUnavailable,
    FeatureValidationFailed,
    store_id,
)
from streaminfer.streams.outcomes import is_transient
from streaminfer.streams.processor import RequestProcessor
from streaminfer.streams.requests import SourceEvent

TASK = "scored"
COLUMNS = ["a", "b b"]  # a name with a space: quoted by SQLAlchemy


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.ttls: dict[str, int] = {}
        self.mgets = 0

    async def mget(self, names):
        self.mgets += 1
        return [self.data.get(n) for n in names]

    def pipeline(self, transaction=True):
        return _Pipe(self)


class _Pipe:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis, self._ops = redis, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def set(self, name, value, ex=None):
        self._ops.append((name, value, ex))

    async def execute(self):
        for name, value, ex in self._ops:
            self._redis.data[name], self._redis.ttls[name] = value, ex


def make_table(path: Path, rows: dict[str, tuple], columns=COLUMNS) -> None:
    """A table as an operator might leave it: sqlite3 keeps text or NULL in a REAL column."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        names = ", ".join(f'"{c}" REAL' for c in columns)
        db.execute(f"CREATE TABLE features (entity_id TEXT PRIMARY KEY, {names})")
        marks = ", ".join("?" * (len(columns) + 1))
        db.executemany(f"INSERT INTO features VALUES ({marks})", [(k, *v) for k, v in rows.items()])


def model_config(
    model_dir: Path, ttl: int = 60, url: str = "sqlite:///{version_dir}/features.sqlite", **extra
) -> ModelConfig:
    inputs = (TensorSpec("x", "FP32", (2,)),)
    features = parse_features(
        {"url": url, "columns": COLUMNS, "cache_ttl_s": ttl, **extra}, inputs, {}
    )
    return ModelConfig(
        name="scorer",
        task=TASK,
        backend="onnxruntime",
        inputs=inputs,
        outputs=(TensorSpec("y", "FP32", (2,)),),
        max_batch_size=8,
        max_batch_delay_ms=20,
        instances=1,
        device="cpu",
        warmup=False,
        path=model_dir,
        versions=("1",),
        default_version="1",
        features=features,
    )


class ScoringModel:
    """Doubles its input; knows its config and version dir as a real Model does."""

    name, version, device = "scorer", "1", "cpu"

    def __init__(self, config: ModelConfig, version: str = "1") -> None:
        self.config, self.version = config, version
        self.path = config.path / version
        self.calls: list[np.ndarray] = []

    def predict_batch(self, inputs):
        self.calls.append(inputs["x"])
        return {"y": inputs["x"] * 2}


@dataclasses.dataclass
class Item:  # what fill reads of a PendingRequest
    request: InferenceRequest
    inputs: dict


def item(*ids: str) -> Item:
    request = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        inputs=[Tensor.from_numpy("entity_id", np.array(ids, dtype=object))],
    )
    return Item(request, {"entity_id": np.array(ids, dtype=object)})


@pytest.fixture
def model(tmp_path: Path) -> ScoringModel:
    (tmp_path / "1").mkdir()
    make_table(
        tmp_path / "1" / "features.sqlite",
        {
            "1": (1.0, 2.0),
            "2": (3, 4.5),
            "null": (None, 1.0),
            "text": ("abc", 1.0),
            "inf": (1.0, math.inf),
        },
    )
    return ScoringModel(model_config(tmp_path))


def cache_key(model: ScoringModel, entity: str) -> str:
    url = resolve_url(model.config.features["url"], model.config.path, model.path)
    return keys.feature_key(PREFIX, TASK, model.version, store_id(url, "features"), entity)


class Queries:
    """Counts the SELECTs sent to any engine."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __enter__(self):
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc):
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "sqlite_master" not in statement:
            self.statements.append(statement)


async def test_db_then_cache_in_one_query_per_batch(model: ScoringModel) -> None:
    redis = FakeRedis()
    lookup = FeatureLookup(lambda: redis, PREFIX)
    items = [item("1"), item("2", "1")]
    with Queries() as queries:
        failed, looked = await lookup.fill(model, items)
    assert failed == {}
    assert (
        len(queries.statements) == 1 and " IN " in queries.statements[0]
    )  # one IN (...) for the batch
    assert (
        items[0].inputs["x"].tolist() == [[1.0, 2.0]] and items[0].inputs["x"].dtype == np.float32
    )
    assert items[1].inputs["x"].tolist() == [[3.0, 4.5], [1.0, 2.0]]
    assert {v.source for v in looked.values()} == {"db"}
    key = cache_key(model, "2")
    assert json.loads(redis.data[key]) == {"a": 3.0, "b b": 4.5} and redis.ttls[key] == 60

    again = [item("2"), item("1")]
    with Queries() as queries:
        failed, looked = await lookup.fill(model, again)
    assert failed == {} and queries.statements == []  # all from Redis
    assert {v.source for v in looked.values()} == {"cache"}
    assert again[0].inputs["x"].tolist() == [[3.0, 4.5]]
    assert (
        metrics.REGISTRY.get_sample_value(
            "inference_feature_lookup_seconds_count", {"task": TASK, "source": "cache"}
        )
        >= 2
    )
    lookup.close()


async def test_unknown_and_invalid_rows_fail_alone_and_are_not_cached(model: ScoringModel) -> None:
    redis = FakeRedis()
    lookup = FeatureLookup(lambda: redis, PREFIX)
    items = [item("1"), item("404"), item("null"), item("text"), item("inf"), item("1", "404")]
    failed, _ = await lookup.fill(model, items)
    assert id(items[0]) not in failed and items[0].inputs["x"].tolist() == [[1.0, 2.0]]
    assert isinstance(failed[id(items[1])], FeaturesNotFound) and "'404'" in str(
        failed[id(items[1])]
    )
    # (SQLite stores a NaN as NULL; the cache and other databases can hold one: see below)
    for bad, what in ((items[2], "is NULL"), (items[3], "is 'abc'"), (items[4], "is inf")):
        error = failed[id(bad)]
        assert isinstance(error, FeatureValidationFailed) and what in str(error), str(error)
        assert error.code == "FEATURE_VALIDATION_FAILED"
    assert failed[id(items[5])].code == "FEATURES_NOT_FOUND"  # one unknown id fails its request
    assert sorted(redis.data) == [cache_key(model, "1")]
    lookup.close()


async def test_sql_looking_ids_are_bound_parameters(model: ScoringModel) -> None:
    lookup = FeatureLookup(lambda: FakeRedis(), PREFIX)
    hostile = ["1' OR '1'='1", "1; DROP TABLE features; --", "' UNION SELECT 1, 2, 3 --", "%", "*"]
    items = [item(h) for h in hostile]
    failed, _ = await lookup.fill(model, items)
    assert all(isinstance(failed[id(i)], FeaturesNotFound) for i in items)
    again = [item("1")]  # the table is still there
    assert (await lookup.fill(model, again))[0] == {} and again[0].inputs["x"].tolist() == [
        [1.0, 2.0]
    ]
    lookup.close()


async def test_a_cache_entry_of_other_columns_is_a_miss(model: ScoringModel) -> None:
    redis = FakeRedis()
    redis.data[cache_key(model, "1")] = json.dumps({"a": 9.0})
    redis.data[cache_key(model, "2")] = "not json"
    redis.data[cache_key(model, "3")] = json.dumps({"a": 1.0, "b b": math.nan})
    items = [item("1"), item("2"), item("3")]
    lookup = FeatureLookup(lambda: redis, PREFIX)
    failed, looked = await lookup.fill(model, items)
    assert list(failed) == [id(items[2])] and items[0].inputs["x"].tolist() == [[1.0, 2.0]]
    assert (
        failed[id(items[2])].code == "FEATURES_NOT_FOUND"
    )  # a NaN from the cache is no entry either
    assert looked[items[0].request.request_id].source == "db"
    lookup.close()


async def test_a_table_without_a_declared_column_fails_every_lookup(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    make_table(tmp_path / "1" / "features.sqlite", {"1": (1.0,)}, columns=["a"])
    items = [item("1"), item("2")]
    failed, _ = await FeatureLookup(lambda: FakeRedis(), PREFIX).fill(
        ScoringModel(model_config(tmp_path)), items
    )
    assert all(failed[id(i)].code == "FEATURE_VALIDATION_FAILED" for i in items)
    assert "no columns ['b b']" in str(failed[id(items[0])])


async def test_an_unreachable_database_is_retriable_and_keeps_its_password(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    model = ScoringModel(model_config(tmp_path))
    items = [item("1")]
    with pytest.raises(
        FeatureStoreUnavailable
    ) as info:  # no file: sqlite must not make an empty one
        await FeatureLookup(lambda: FakeRedis(), PREFIX).fill(model, items)
    assert is_transient(info.value) and not (tmp_path / "1" / "features.sqlite").exists()
    assert list(items[0].inputs) == ["entity_id"]  # nothing changed: the batch runs again as it was
    secret = "postgresql+nosuchdriver://user:s3cr3t@127.0.0.1:1/features"
    with pytest.raises(FeatureStoreUnavailable) as info:
        await FeatureLookup(lambda: FakeRedis(), PREFIX, url=secret).fill(model, items)
    assert is_transient(info.value) and "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # nor in a chained one


@contextlib.contextmanager
def silent_server():
    """A TCP port that takes connections (the kernel's backlog) and never says a word: a
    blackholed database."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


async def test_a_database_that_never_answers_is_unavailable_within_the_bound(
    tmp_path: Path,
) -> None:
    pytest.importorskip("psycopg")
    (tmp_path / "1").mkdir()
    model = ScoringModel(model_config(tmp_path, timeout_s=0.5))
    lookup = FeatureLookup(lambda: FakeRedis(), PREFIX)
    items = [item("1")]
    with silent_server() as port:
        lookup._url = f"postgresql+psycopg://user:pw@127.0.0.1:{port}/features"
        for _ in range(2):  # and again, with the first call's thread perhaps still waiting
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(10):  # (without a bound: never returns)
                with pytest.raises(FeatureStoreUnavailable, match="did not answer within 0.5 s"):
                    await lookup.fill(model, items)
            assert asyncio.get_running_loop().time() - started < 2.0
    assert list(items[0].inputs) == ["entity_id"] and is_transient(FeatureStoreUnavailable())
    lookup.close()


async def test_a_sqlite_file_locked_by_a_writer_is_unavailable_within_the_bound(
    tmp_path: Path,
) -> None:
    (tmp_path / "1").mkdir()
    path = tmp_path / "1" / "features.sqlite"
    make_table(path, {"1": (1.0, 2.0)})
    model = ScoringModel(model_config(tmp_path, timeout_s=0.5))
    lookup = FeatureLookup(lambda: FakeRedis(), PREFIX)
    assert (await lookup.fill(model, [item("1")]))[0] == {}  # columns read, engine made
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(FeatureStoreUnavailable):
            await lookup.fill(model, [item("1")])
        assert asyncio.get_running_loop().time() - started < 2.0  # sqlite's default: 5 s
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    again = [item("1")]
    assert (await lookup.fill(model, again))[0] == {} and again[0].inputs["x"].tolist() == [
        [1.0, 2.0]
    ]
    lookup.close()


def test_drivers_get_connect_and_statement_timeouts() -> None:
    from streaminfer.streams.features import driver_timeouts

    assert driver_timeouts(sa.make_url("postgresql+psycopg://u:p@h/db"), 2.5) == {
        "connect_timeout": 3,
        "options": "-c statement_timeout=2500",
    }
    assert driver_timeouts(
        sa.make_url("postgresql+psycopg://u:p@h/db?options=-c%20x%3D1"), 2.5
    ) == {"connect_timeout": 3}  # the operator's own options stay
    assert driver_timeouts(sa.make_url("mysql+pymysql://u:p@h/db"), 0.2) == {
        "connect_timeout": 1,
        "read_timeout": 1,
        "write_timeout": 1,
    }
    assert driver_timeouts(sa.make_url("mssql+pyodbc://u:p@h/db"), 2.5) == {}


async def test_cached_rows_belong_to_one_version_and_one_database(tmp_path: Path) -> None:
    for version, value in (("1", 1.0), ("2", 7.0)):
        (tmp_path / version).mkdir()
        make_table(tmp_path / version / "features.sqlite", {"1": (value, value)})
    config = model_config(tmp_path)
    redis = FakeRedis()
    lookup = FeatureLookup(lambda: redis, PREFIX)
    first, second = [item("1")], [item("1")]
    await lookup.fill(ScoringModel(config, "1"), first)
    _, looked = await lookup.fill(ScoringModel(config, "2"), second)  # v1's row is cached
    assert first[0].inputs["x"].tolist() == [[1.0, 1.0]]
    assert (
        second[0].inputs["x"].tolist() == [[7.0, 7.0]]
        and looked[second[0].request.request_id].source == "db"
    )
    assert len(redis.data) == 2
    other = tmp_path / "other.sqlite"
    make_table(other, {"1": (3.0, 3.0)})
    moved = [item("1")]  # the same version pointed at another database: not its cached rows
    await FeatureLookup(lambda: redis, PREFIX, url=f"sqlite:///{other}").fill(
        ScoringModel(config, "1"), moved
    )
    assert moved[0].inputs["x"].tolist() == [[3.0, 3.0]]
    assert not any(
        str(tmp_path) in key or "sqlite" in key for key in redis.data
    )  # a hash, not the URL
    lookup.close()


async def test_a_password_with_braces_is_in_no_error(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    secret = "s3{cr}3t{0}x{model_dir"
    url = f"postgresql+nosuchdriver://user:{secret}@127.0.0.1:1/{{version_dir}}"
    model = ScoringModel(model_config(tmp_path, url=url))
    with pytest.raises(Exception) as info:  # noqa: PT011 (str.format raised KeyError('cr'))
        await FeatureLookup(lambda: FakeRedis(), PREFIX).fill(model, [item("1")])
    assert isinstance(info.value, FeatureStoreUnavailable), repr(info.value)
    for fragment in ("s3", "cr", "3t", "{0}", "x{model_dir"):
        assert fragment not in str(info.value) and fragment not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert resolve_url("a:{model_dir}/{version_dir}/{x}{{", "/m", "/m/1") == "a:/m//m/1/{x}{{"


async def test_no_cache_with_ttl_zero(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    make_table(tmp_path / "1" / "features.sqlite", {"1": (1.0, 2.0)})
    redis = FakeRedis()
    model = ScoringModel(model_config(tmp_path, ttl=0))
    await FeatureLookup(lambda: redis, PREFIX).fill(model, [item("1")])
    assert redis.data == {} and redis.mgets == 0


# --- through the processor ----------------------------------------------------------------------


class Repository:
    def __init__(self, model: ScoringModel) -> None:
        self.model, self.configs = model, {TASK: model.config}

    def get_config(self, task):
        return self.configs[task]

    def load(self, task, version=None):
        return self.model


class RedisPublisher(FakePublisher):
    def __init__(self) -> None:
        super().__init__()
        self.redis = FakeRedis()


def entity_event(codec: AvroCodec, offset: int, *ids: str) -> tuple[SourceEvent, InferenceRequest]:
    request = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        inputs=[Tensor.from_numpy("entity_id", np.array(ids, dtype=object))],
    )
    return SourceEvent(
        f"{PREFIX}.requests.{TASK}.normal",
        0,
        offset,
        request.request_id.encode(),
        codec.encode(request),
    ), request


def processor(model: ScoringModel, publisher: RedisPublisher, codec: AvroCodec) -> RequestProcessor:
    return RequestProcessor(
        repository=Repository(model),
        publisher=publisher,
        codec=codec,
        prefix=PREFIX,
        worker_id="w1",
        tasks=[TASK],
        retry_backoff_s=0.001,
    )


async def test_results_say_what_the_lookup_took_and_failures_are_failed(
    model: ScoringModel,
) -> None:
    codec, publisher = AvroCodec(), RedisPublisher()
    worker = processor(model, publisher, codec)
    events = [
        entity_event(codec, 0, "1"),
        entity_event(codec, 1, "404"),
        entity_event(codec, 2, "null"),
    ]
    acked: list[int] = []
    await worker.start()
    try:
        await feed(worker, [e for e, _ in events], acked)
        second = entity_event(codec, 3, "1")
        await feed(worker, [second[0]], acked)
    finally:
        await worker.stop()
    assert sorted(acked) == [0, 1, 2, 3]
    by_id = {r.request_id: r for r in publisher.results}
    first, unknown, broken = (by_id[r.request_id] for _, r in events)
    assert first.status is Status.SUCCEEDED and first.outputs[0].to_numpy().tolist() == [[2.0, 4.0]]
    assert first.timings.feature_source == "db" and first.timings.feature_lookup_ms > 0
    again = by_id[second[1].request_id]
    assert again.status is Status.SUCCEEDED and again.timings.feature_source == "cache"
    assert (unknown.status, unknown.error.code) == (Status.FAILED, "FEATURES_NOT_FOUND")
    assert (broken.status, broken.error.code) == (Status.FAILED, "FEATURE_VALIDATION_FAILED")
    assert not unknown.error.retriable and publisher.letters == []
    assert publisher.cache == {}, "a lookup request's result never goes into the content cache"
    terminal = [
        a
        for a in publisher.audits
        if a.type is AuditType.SUCCEEDED and a.request_id == first.request_id
    ]
    assert (
        terminal[0].details["feature_source"] == "db"
        and float(terminal[0].details["feature_lookup_ms"]) > 0
    )


async def test_a_database_outage_holds_the_request_until_it_is_back(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    model = ScoringModel(model_config(tmp_path))
    codec, publisher = AvroCodec(), RedisPublisher()
    worker = processor(model, publisher, codec)
    source, request = entity_event(codec, 0, "1")
    acked: list[int] = []
    await worker.start()
    try:
        await feed(worker, [source], acked, timeout_s=0.5)
        assert (
            acked == [] and publisher.results == [] and publisher.letters == []
        )  # held, not answered
        make_table(tmp_path / "1" / "features.sqlite", {"1": (1.0, 2.0)})  # the database is back
        await until_acked(acked, 1, timeout_s=8.0)
    finally:
        await worker.stop()
    assert acked == [0] and publisher.letters == []
    assert publisher.results[0].status is Status.SUCCEEDED
    assert publisher.results[0].outputs[0].to_numpy().tolist() == [[2.0, 4.0]]


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (math.nan, "is nan"),
        (-math.inf, "is -inf"),
        (True, "is True"),
        ("1.5", "is '1.5'"),
        (10**400, "is 1000"),
        ([1.0], "is [1.0]"),
    ],
)
def test_values_that_are_no_finite_number_fail_validation(value, what: str) -> None:
    from streaminfer.streams.features import _values

    with pytest.raises(FeatureValidationFailed, match=re.escape(what)):
        _values({"a": 1.0, "b b": value}, COLUMNS, "e")
    with pytest.raises(FeatureValidationFailed, match="is missing"):
        _values({"a": 1.0}, COLUMNS, "e")
    assert _values({"a": 1, "b b": Decimal("2.5")}, COLUMNS, "e") == [1.0, 2.5]


async def test_hostile_kafka_entity_ids_fail_at_intake_and_the_worker_goes_on(
    model: ScoringModel,
) -> None:
    codec, publisher = AvroCodec(), RedisPublisher()
    worker = processor(model, publisher, codec)
    hostile = [
        entity_event(codec, 0, ""),
        entity_event(codec, 1, "x" * 129),
        entity_event(codec, 2, "a\x00b"),
        entity_event(codec, 3, "1"),
    ]
    bad_utf8 = InferenceRequest(
        request_id=str(uuid.uuid4()),
        task=TASK,
        inputs=[Tensor.from_numpy("entity_id", np.array([b"\xff\xfe"], dtype=object))],
    )
    hostile.append(
        (
            SourceEvent(
                f"{PREFIX}.requests.{TASK}.normal",
                0,
                4,
                bad_utf8.request_id.encode(),
                codec.encode(bad_utf8),
            ),
            bad_utf8,
        )
    )
    acked: list[int] = []
    await worker.start()
    try:
        await feed(worker, [e for e, _ in hostile], acked)
    finally:
        await worker.stop()
    assert sorted(acked) == [0, 1, 2, 3, 4]
    by_id = {r.request_id: r for r in publisher.results}
    for _, request in hostile[:3] + hostile[4:]:
        result = by_id[request.request_id]
        assert (result.status, result.error.code) == (Status.FAILED, "INVALID_INPUT"), result.error
    assert by_id[hostile[3][1].request_id].status is Status.SUCCEEDED
    assert model.calls and all(
        batch.shape[1] == 2 for batch in model.calls
    )  # only real features ran
