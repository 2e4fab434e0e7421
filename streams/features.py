"""Feature lookup before the model: requests that name entities (``entity_id``) instead of
sending features get them from Redis (``<prefix>:features:<task>:<version>:<store>:<id>``, JSON,
a TTL) or else from the task's database in one ``IN (...)`` query per batch, through SQLAlchemy
Core.

The database is read with SQLAlchemy's ordinary (sync) engine on a small thread pool of its own:
any SQLAlchemy URL then works with its usual driver (sqlite3 ships with Python, psycopg for
Postgres), where the asyncio engine would need an async driver per dialect (aiosqlite, asyncpg);
and a slow database holds those threads, never the event loop or the model's threads.

A database that cannot be reached, or does not answer within ``features.timeout_s`` (the whole
lookup, bounded here and, where the driver can, by its connect and statement timeouts so the
thread is freed too), raises :class:`FeatureStoreUnavailable`, an ``OSError``: the batch waits
and runs again like any other dependency outage (streams/outcomes.py), its events are never
dead-lettered. URLs may hold passwords: they are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from streaminfer.models.base import Model
from streaminfer.models.errors import ModelError
from streaminfer.models.features import DEFAULT_TIMEOUT_S, ENTITY_KEY, resolve_url
from streaminfer.models.signature import NUMPY_DTYPES
from streaminfer.schemas import keys

from . import metrics

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureLookup",
    "FeatureStoreUnavailable",
    "FeatureValidationFailed",
    "FeaturesNotFound",
]

COLUMNS_TTL_S = 30.0
"""How long a table's column names are trusted before they are read again."""
DB_THREADS = 4


class FeaturesNotFound(ModelError):
    """No row (in the cache or the database) for an entity a request names."""

    code = "FEATURES_NOT_FOUND"


class FeatureValidationFailed(ModelError):
    """A row lacks a declared column, or holds a value that is not a finite number."""

    code = "FEATURE_VALIDATION_FAILED"


class FeatureStoreUnavailable(ConnectionError):
    """The feature database did not answer: retriable, the batch waits and runs again."""


@dataclass(frozen=True, slots=True)
class Looked:
    """What a request's lookup took: its ``timings`` fields."""

    ms: float
    source: str
    """``cache`` when every row came from Redis, else ``db``."""


def lookup_request(inputs: dict) -> bool:
    return list(inputs) == [ENTITY_KEY]


class FeatureLookup:
    """One per worker. ``redis``: gives the worker's Redis client (the publisher's, once started);
    ``url``: a database URL for every feature task instead of their ``model.yaml`` ones."""

    def __init__(
        self,
        redis: Callable[[], Any],
        prefix: str,
        url: str | None = None,
        threads: int = DB_THREADS,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._url = url or None
        self._threads = threads
        self._engines: dict[tuple[str, float], Any] = {}
        self._columns: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    async def fill(
        self, model: Model, items: Sequence[Any]
    ) -> tuple[dict[int, Exception], dict[str, Looked]]:
        """Replace the ``entity_id`` inputs of ``items`` (PendingRequests) by their features.
        Returns the failed items (``id(item)`` -> FeaturesNotFound or FeatureValidationFailed)
        and, per request id, what its lookup took. Raises FeatureStoreUnavailable or a Redis
        error (both retriable) with no item changed."""
        wanted = [item for item in items if lookup_request(item.inputs)]
        section = model.config.features if wanted else None
        if not section:  # (intake lets entity ids through only to tasks with a section)
            return {}, {}
        started = time.perf_counter()
        url = self._url or resolve_url(section["url"], model.config.path, model.path)
        scope = (model.config.task, str(model.version), store_id(url, section["table"]))
        ids = {item_id: None for item in wanted for item_id in _ids(item.inputs[ENTITY_KEY])}
        # entity -> its values in column order, or why its row is no row of numbers
        rows: dict[str, list[float] | FeatureValidationFailed] = await self._from_cache(
            scope, section, list(ids)
        )
        missing = [entity for entity in ids if entity not in rows]
        from_db: set[str] = set()
        if missing:
            try:
                found = await self._from_db(url, section, missing)
            except FeatureValidationFailed as exc:  # the table lacks declared columns: all fail
                return {id(item): exc for item in wanted}, {}
            for entity, row in found.items():
                try:
                    rows[entity] = _values(row, section["columns"], entity)
                except FeatureValidationFailed as exc:
                    rows[entity] = exc
            from_db = set(found)
            await self._to_cache(scope, section, {e: rows[e] for e in found})
        ms = (time.perf_counter() - started) * 1000.0

        failed: dict[int, Exception] = {}
        looked: dict[str, Looked] = {}
        dtype = NUMPY_DTYPES[model.config.input_spec(section["input"]).datatype]
        for item in wanted:
            entities = _ids(item.inputs[ENTITY_KEY])
            source = "db" if any(e in from_db or e not in rows for e in entities) else "cache"
            looked[item.request.request_id] = Looked(ms, source)
            metrics.FEATURE_LOOKUP_SECONDS.labels(model.config.task, source).observe(ms / 1000.0)
            unknown = [e for e in entities if e not in rows]
            if unknown:
                failed[id(item)] = FeaturesNotFound(
                    f"no features for {ENTITY_KEY} {', '.join(repr(e[:40]) for e in unknown[:5])}"
                    + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                )
                continue
            bad = next(
                (rows[e] for e in entities if isinstance(rows[e], FeatureValidationFailed)), None
            )
            if bad is not None:
                failed[id(item)] = bad
                continue
            item.inputs = {section["input"]: np.asarray([rows[e] for e in entities], dtype=dtype)}
        return failed, looked

    # --- the cache ---
    async def _from_cache(
        self, scope: tuple[str, str, str], section: dict, ids: list[str]
    ) -> dict[str, list[float]]:
        if not section["cache_ttl_s"]:
            return {}
        found = await self._redis().mget([keys.feature_key(self._prefix, *scope, e) for e in ids])
        rows = {}
        for entity, raw in zip(ids, found, strict=True):
            if raw is None:
                continue
            try:  # an entry of other columns, or of no numbers, is no entry
                rows[entity] = _values(json.loads(raw), section["columns"], entity)
            except (ValueError, TypeError, FeatureValidationFailed):
                continue
        return rows

    async def _to_cache(
        self, scope: tuple[str, str, str], section: dict, rows: dict[str, list[float] | Exception]
    ) -> None:
        # a bad row is not cached: fixing it takes effect at once
        good = {e: v for e, v in rows.items() if not isinstance(v, Exception)}
        if not section["cache_ttl_s"] or not good:
            return
        async with self._redis().pipeline(transaction=False) as pipe:
            for entity, values in good.items():
                row = dict(zip(section["columns"], values, strict=True))
                pipe.set(
                    keys.feature_key(self._prefix, *scope, entity),
                    json.dumps(row),
                    ex=section["cache_ttl_s"],
                )
            await pipe.execute()

    # --- the database ---
    async def _from_db(self, url: str, section: dict, ids: list[str]) -> dict[str, dict]:
        timeout_s = section.get("timeout_s", DEFAULT_TIMEOUT_S)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="features"
            )
        loop = asyncio.get_running_loop()
        # NOTE: a thread cannot be cancelled: a database that never answers keeps it until the
        # driver's own timeouts (set in _engine) end its call; the lookup is answered meanwhile
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._query, url, section, ids, timeout_s),
                timeout_s,
            )
        except TimeoutError:
            raise FeatureStoreUnavailable(
                f"the feature database did not answer within {timeout_s:g} s"
            ) from None

    def _query(self, url: str, section: dict, ids: list[str], timeout_s: float) -> dict[str, dict]:
        import sqlalchemy as sa

        try:
            engine = self._engine(url, timeout_s)
            columns = self._table_columns(engine, url, section["table"])
            absent = [c for c in [section["key_column"], *section["columns"]] if c not in columns]
            if absent:
                raise FeatureValidationFailed(
                    f"table {section['table']!r} has no columns {absent[:5]}"
                )
            key = sa.column(section["key_column"])
            table = sa.table(section["table"], key, *(sa.column(c) for c in section["columns"]))
            # bound parameters only: an id is data, whatever it says ("0' OR '1'='1")
            query = sa.select(table).where(key.in_(ids))
            with engine.connect() as connection:
                found = connection.execute(query).mappings().all()
        except sa.exc.SQLAlchemyError as exc:
            # NOTE: the URL (it may hold a password) is never in the message
            raise FeatureStoreUnavailable(
                f"the feature database did not answer: {type(exc).__name__}: "
                f"{str(getattr(exc, 'orig', None) or exc)[:200]}"
            ) from None
        return {
            str(row[section["key_column"]]): {c: row[c] for c in section["columns"]}
            for row in found
        }

    def _engine(self, url: str, timeout_s: float):
        import sqlalchemy as sa

        engine = self._engines.get((url, timeout_s))
        if engine is None:
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (
                None,
                "",
                ":memory:",
            ):
                # read-only: a missing file is an outage (retried), never an empty database made
                # in its place, and the worker cannot write to the table it reads; `timeout`:
                # how long a read waits on a writer's lock
                uri = f"{Path(parsed.database).resolve().as_uri()}?mode=ro"
                engine = sa.create_engine(
                    "sqlite://",
                    creator=lambda: sqlite3.connect(
                        uri, uri=True, check_same_thread=False, timeout=timeout_s
                    ),
                )
            else:
                engine = sa.create_engine(
                    parsed,
                    pool_pre_ping=True,
                    pool_timeout=timeout_s,
                    connect_args=driver_timeouts(parsed, timeout_s),
                )
            self._engines[(url, timeout_s)] = engine
        return engine

    def _table_columns(self, engine, url: str, table: str) -> frozenset[str]:
        import sqlalchemy as sa

        seen = self._columns.get((url, table))
        if seen is None or time.monotonic() - seen[0] > COLUMNS_TTL_S:
            inspector = sa.inspect(engine)
            if not inspector.has_table(table):
                raise FeatureStoreUnavailable(f"the feature table {table!r} does not exist (yet)")
            names = frozenset(c["name"] for c in inspector.get_columns(table))
            seen = self._columns[(url, table)] = (time.monotonic(), names)
        return seen[1]


def store_id(url: str, table: str) -> str:
    """A short hash naming the database and table rows came from (the URL itself may hold a
    password: it never goes into a key)."""
    return hashlib.sha256(f"{url}\0{table}".encode()).hexdigest()[:12]


def driver_timeouts(url: Any, timeout_s: float) -> dict[str, Any]:
    """Connect and statement timeouts in the ``connect_args`` of the drivers that take them
    (none for the others: the lookup's own bound still holds); what the URL's query sets wins."""
    driver, given = url.get_driver_name(), set(url.query)
    seconds = max(1, math.ceil(timeout_s))  # libpq and MySQL take whole seconds
    if driver in ("psycopg", "psycopg2", "pg8000") and url.get_backend_name() == "postgresql":
        if driver == "pg8000":
            return {"timeout": seconds} if "timeout" not in given else {}
        args = {"connect_timeout": seconds}
        if "options" not in given:  # the server ends a statement past it
            args["options"] = f"-c statement_timeout={int(timeout_s * 1000)}"
        return {k: v for k, v in args.items() if k not in given}
    if driver in ("pymysql", "mysqldb"):
        return {
            k: seconds
            for k in ("connect_timeout", "read_timeout", "write_timeout")
            if k not in given
        }
    return {}


def _ids(array: np.ndarray) -> list[str]:
    return [bytes(e).decode("utf-8") if isinstance(e, bytes | np.bytes_) else str(e) for e in array]


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer past float64
        return False


def _values(row: Any, columns: list[str], entity: str) -> list[float]:
    """The row's values in column order, each a finite number; else FeatureValidationFailed."""
    if not isinstance(row, dict):
        raise FeatureValidationFailed(f"features of {entity[:40]!r} are not a row")
    values = []
    for column in columns:
        value = row.get(column)
        if isinstance(value, Decimal):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            what = (
                "missing" if column not in row else "NULL" if value is None else f"{value!r}"[:40]
            )
            raise FeatureValidationFailed(
                f"feature {column!r} of {ENTITY_KEY} {entity[:40]!r} is {what}, not a finite number"
            )
        values.append(float(value))
    return values


def names_entities(request: Any) -> bool:
    """Whether an InferenceRequest names entities: its result must not come from the content
    cache, as the features behind an id change while the id does not."""
    return any(tensor.name == ENTITY_KEY for tensor in request.inputs)


def stamp(outcomes: Sequence[Any], looked: dict[str, Looked]) -> None:
    """Write what each request's lookup took into its result's timings."""
    for outcome in outcomes:
        seen = looked.get(outcome.request_id)
        if seen is not None and outcome.result is not None:
            outcome.result.timings.feature_lookup_ms = round(seen.ms, 3)
            outcome.result.timings.feature_source = seen.source
