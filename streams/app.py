"""Assembles a worker: the faust app with its agents, and the runtime service (models, batchers,
publisher, metrics endpoint) that faust starts before the app and stops after it, so in-flight
batches are still acknowledged while faust waits for its streams to empty and commits."""

from __future__ import annotations

import asyncio
import atexit
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mode
from prometheus_client import start_http_server

from streaminfer.models.repository import ModelRepository
from streaminfer.schemas.codec import AvroCodec
from streaminfer.schemas.errors import SchemaError
from streaminfer.schemas.registry import RegistryClient, record_topics
from streaminfer.schemas.topics import request_topics

from . import metrics
from .agents import register_agents, start_task_agents
from .breakers import PartitionPause, make_breakers, pause_fetching, paused_partitions
from .processor import RequestProcessor
from .publisher import ResultPublisher
from .transport import WorkerApp

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 6.0
FETCH_WAIT_CHECK_S = 0.1
PAUSE_CHECK_S = 0.1
"""How soon the partitions pause after a dependency breaker opens (and resume after it closes)."""


@dataclass(frozen=True)
class WorkerOptions:
    """Plain arguments of a worker (the shell builds them from its settings)."""

    bootstrap_servers: str
    redis_url: str
    topic_prefix: str
    group_id: str
    model_repository: str
    tasks: Sequence[str]
    worker_id: str
    topic_partitions: int = 6
    fetch_max_wait_ms: int = 20
    fetch_max_wait_busy_ms: int = 100
    """The fetch wait while a model has a full round of batches queued (see the batcher)."""
    linger_ms: int = 2
    commit_interval_s: float = 0.5
    session_timeout_s: float = 10.0
    rebalance_timeout_s: float = 6.0
    result_ttl_s: int = 86400
    max_queued: int = 1024
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9100
    device: str = "auto"
    threads: int | None = None
    model_poll_s: float = 2.0
    """How often the repository is re-read for new model versions (hot reload); 0 = never."""
    schema_registry_url: str | None = None
    cache_scope: str = "client"
    """Whose content cache a request may hit: ``client`` (its own client's) or ``shared``."""
    scheduling: str = "deadline"
    """``deadline`` (earliest deadline first, deadline-aware batches, early shedding) or ``fifo``."""
    follow_repository: bool = False
    """Serve tasks that appear in the repository while the worker runs (no explicit task list)."""
    kafka_options: Mapping[str, Any] = field(default_factory=dict)
    """aiokafka security keyword arguments (TLS, SASL) of the worker's own producer."""
    broker_credentials: Any = None
    """The same for faust (``faust.SSLCredentials``/``SASLCredentials``); None = PLAINTEXT."""
    registry_http: Any = None
    """An httpx client for the schema registry, with its auth and TLS."""
    schema_registry_subject_strategy: str = "record"
    """``record``, ``topic`` or ``topic_record`` (subjects of the tasks' topics)."""
    feature_store_url: str | None = None
    """The database of every feature lookup task instead of its model.yaml's (may hold a password)."""
    circuit_failures: int = 5
    """Failures in a row after which a dependency's circuit breaker opens (streams/breakers.py)."""
    circuit_reset_s: float = 5.0
    """Seconds an open breaker waits before a probe."""


class WorkerRuntime(mode.Service):
    """Starts the publisher and loads the models before faust consumes; drains after it stops."""

    def __init__(
        self,
        processor: RequestProcessor,
        publisher: ResultPublisher,
        options: WorkerOptions,
        is_consuming: Callable[[], bool] = lambda: True,
        set_fetch_wait: Callable[[int], None] = lambda ms: None,
        codec: AvroCodec | None = None,
        add_task: Callable[[str], Awaitable[None]] | None = None,
        pause: PartitionPause | None = None,
        **kwargs,
    ) -> None:
        self.pause = pause
        self.codec = codec
        self.add_task = add_task
        self.is_consuming = is_consuming
        self.set_fetch_wait = set_fetch_wait
        self._fetch_wait_ms = options.fetch_max_wait_ms
        self.processor = processor
        self.publisher = publisher
        self.options = options
        self.metrics_port: int | None = None
        self._metrics_server = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.publisher.start()
        if self.codec is not None:
            await self._register_schemas(self.codec)
        await self.processor.start()
        # NOTE: /metrics answers only once the models are warm: launchers use it as a ready signal.
        if self.options.metrics_port is not None:
            server, _thread = start_http_server(
                self.options.metrics_port, self.options.metrics_host, registry=metrics.REGISTRY
            )
            self._metrics_server = server
            self.metrics_port = server.server_address[1]
            logger.info(
                "worker metrics on http://%s:%d/metrics",
                self.options.metrics_host,
                self.metrics_port,
            )
        logger.info(
            "worker %s ready for tasks %s", self.options.worker_id, ",".join(self.processor.tasks)
        )

    async def _register_schemas(self, codec: AvroCodec) -> None:
        """With a registry, our schemas are registered before any result is encoded, so a
        registry outage later never stands between a computed result and its topic."""
        delay_s = 0.5
        while True:
            try:
                await codec.prepare_async()
                return
            except SchemaError as exc:
                if not exc.retriable:
                    raise
                logger.warning("schema registry unavailable (%s); retrying in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)

    @mode.Service.timer(HEARTBEAT_INTERVAL_S)
    async def _heartbeat(self) -> None:
        # NOTE: only once the consumer holds partitions: gateways read the heartbeat as "a worker
        # is consuming this task" (/ready), and joining the group takes a few seconds after start.
        if not self.is_consuming():
            return
        try:
            await self.publisher.heartbeat(
                self.options.worker_id,
                self.processor.tasks,
                HEARTBEAT_TTL_S,
                service=self.processor.service(),
            )
        except (
            Exception
        ) as exc:  # Redis away: the gateway reports not ready; keep serving what we can
            logger.warning("heartbeat failed: %s", exc)

    @mode.Service.timer(FETCH_WAIT_CHECK_S)
    async def _fetch_wait_timer(self) -> None:
        self.adapt_fetch_wait()

    @mode.Service.timer(PAUSE_CHECK_S)
    async def _pause_timer(self) -> None:
        if self.pause is not None and self.is_consuming():
            self.pause.sync()

    def adapt_fetch_wait(self) -> None:
        # NOTE: a short fetch wait keeps an idle worker's latency low, but on brokers that hold
        # every fetch for the full wait (Tansu) it is a busy poll that takes CPU from the model.
        # With a full round of batches queued, requests fetched a little later wait no longer.
        wanted = (
            self.options.fetch_max_wait_busy_ms
            if self.processor.backlogged()
            else self.options.fetch_max_wait_ms
        )
        if wanted != self._fetch_wait_ms:
            self._fetch_wait_ms = wanted
            self.set_fetch_wait(wanted)

    @mode.Service.task
    async def _watch_models(self) -> None:
        if not self.options.model_poll_s:
            return
        while not self.should_stop:
            await self.sleep(self.options.model_poll_s)
            try:
                await self.processor.reload_models()
            except Exception:  # a broken model.yaml must not stop the worker serving the rest
                logger.exception("reloading the model repository failed")
            if self.options.follow_repository and self.add_task is not None:
                for task in self.processor.new_tasks():
                    try:
                        await self.add_task(task)
                        logger.info("task %s appeared in the repository: now served", task)
                    except Exception:  # e.g. its model cannot load: the next poll tries again
                        logger.exception("cannot serve new task %s yet", task)

    async def on_stop(self) -> None:
        await self.processor.stop()
        try:
            await self.publisher.forget_worker(self.options.worker_id, self.processor.tasks)
        except Exception as exc:
            logger.warning("could not remove heartbeat: %s", exc)
        await self.publisher.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()


def _private_datadir() -> str:
    """A temporary directory for faust's data, removed when the process exits (faust keeps no
    table here that must outlive the worker: its state is in Kafka and Redis)."""
    path = tempfile.mkdtemp(prefix="streaminfer-worker-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _has_partitions(app: WorkerApp) -> bool:
    try:
        return bool(app.consumer.assignment())
    except Exception:  # not started yet
        return False


def create_worker(
    options: WorkerOptions,
    ensure_topics: Callable[[list[str]], Awaitable[object]] | None = None,
) -> tuple[WorkerApp, WorkerRuntime]:
    """``ensure_topics``: creates a task's topics before a new task is consumed (the shell's)."""
    registry = (
        RegistryClient(
            options.schema_registry_url,
            client=options.registry_http,
            subject_strategy=options.schema_registry_subject_strategy,
            topics=lambda name: record_topics(options.topic_prefix, options.tasks).get(name, []),
        )
        if options.schema_registry_url and options.registry_http is not None
        else None
    )
    codec = AvroCodec(
        registry_url=None if registry else options.schema_registry_url, registry=registry
    )
    repository = ModelRepository(
        options.model_repository, device=options.device, intra_op_num_threads=options.threads
    )
    publisher = ResultPublisher(
        options.bootstrap_servers,
        options.redis_url,
        codec,
        options.topic_prefix,
        options.result_ttl_s,
        linger_ms=options.linger_ms,
        kafka_options=dict(options.kafka_options),
    )
    publisher.breakers = make_breakers(options.circuit_failures, options.circuit_reset_s)
    processor = RequestProcessor(
        repository=repository,
        publisher=publisher,
        codec=codec,
        prefix=options.topic_prefix,
        worker_id=options.worker_id,
        tasks=options.tasks,
        max_queued=options.max_queued,
        cache_scope=options.cache_scope,
        scheduling=options.scheduling,
        feature_store_url=options.feature_store_url,
    )
    app = WorkerApp(
        options.group_id,
        broker=[f"kafka://{server.strip()}" for server in options.bootstrap_servers.split(",")],
        web_enabled=False,
        broker_credentials=options.broker_credentials,
        topic_disable_leader=True,
        # NOTE: a private datadir: several workers share a host with nothing fixed but their metrics port.
        datadir=_private_datadir(),
        consumer_auto_offset_reset="earliest",
        topic_partitions=options.topic_partitions,
        broker_commit_interval=options.commit_interval_s,
        stream_wait_empty=True,
        # NOTE: faust's 60 s defaults hold a joining group (and the partitions of a crashed worker)
        # that long; Kafka's own consumer default session timeout is 10 s (45 s since 3.0).
        broker_session_timeout=options.session_timeout_s,
        broker_rebalance_timeout=options.rebalance_timeout_s,
        broker_heartbeat_interval=min(3.0, options.session_timeout_s / 3),
    )
    app.fetch_max_wait_ms = options.fetch_max_wait_ms
    register_agents(app, processor, options.topic_prefix)

    async def add_task(task: str) -> None:
        if ensure_topics is not None:
            await ensure_topics([task])
        await processor.add_task(task)
        await start_task_agents(app, processor, options.topic_prefix, task)

    pause = PartitionPause(
        publisher.breakers,
        lambda: app.consumer.assignment(),
        lambda tps: pause_fetching(app.consumer, tps),
        lambda tps: app.consumer.resume_partitions(tps),
        topics_of=lambda task: request_topics(options.topic_prefix, task),
        paused_now=lambda: paused_partitions(app.consumer),
        serving=processor.serving,
    )
    runtime = WorkerRuntime(
        processor,
        publisher,
        options,
        is_consuming=lambda: _has_partitions(app),
        set_fetch_wait=app.set_fetch_max_wait,
        codec=codec,
        add_task=add_task,
        pause=pause,
    )
    return app, runtime
