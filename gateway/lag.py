"""Consumer lag of the workers' group on each task's request topics, refreshed in the background,
so the gateway can answer 429 OVERLOADED instead of queueing without limit; with the workers'
service times, also how long each backlog takes to drain (``capacity.py``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streaminfer.schemas.records import Priority
from streaminfer.schemas.topics import PRIORITIES, request_topic

from . import metrics
from .capacity import drain_seconds

logger = logging.getLogger(__name__)


class LagMonitor:
    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        prefix: str,
        tasks: list[str],
        interval_s: float = 1.0,
        kafka_options: dict | None = None,
        service: Callable[[list[str]], Awaitable[dict[str, dict]]] | None = None,
    ) -> None:
        self._kafka_options = dict(kafka_options or {})
        self._bootstrap = bootstrap_servers
        self._group_id = group_id
        self._prefix = prefix
        self._tasks = list(tasks)
        self._interval_s = interval_s
        self._service = service
        """tasks -> what serving each costs the live workers (``capacity.read_service``)."""
        self._closed = True
        self.lag: dict[tuple[str, Priority], int] = {}
        """(task, priority) -> messages not yet committed by the workers' group."""

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, request_timeout_ms=5000, **self._kafka_options
        )
        self._offsets = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=5000,
            **self._kafka_options,
        )
        await self._admin.start()
        await self._offsets.start()
        self._closed = False
        self._task = asyncio.create_task(self._loop(), name="lag-monitor")

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        await asyncio.wait([self._task])
        await self._offsets.stop()
        await self._admin.close()

    def task_lag(self, task: str) -> int:
        return sum(lag for (t, _), lag in self.lag.items() if t == task)

    async def _loop(self) -> None:
        while True:
            try:
                self.lag = await self.measure()
                for (task, priority), lag in self.lag.items():
                    metrics.CONSUMER_LAG.labels(task, priority.topic_suffix).set(lag)
            except Exception as exc:  # lag is advisory: keep the last figures and try again
                logger.warning("could not measure consumer lag: %r", exc)
            if self._service is not None:
                try:
                    service = await self._service(self._tasks)
                    for (task, priority), lag in self.lag.items():
                        metrics.DRAIN_SECONDS.labels(task, priority.topic_suffix).set(
                            drain_seconds(lag, service.get(task))
                        )
                except Exception as exc:
                    logger.warning("could not read the workers' service times: %r", exc)
            await asyncio.sleep(self._interval_s)

    async def measure(self) -> dict[tuple[str, Priority], int]:
        topics = {
            request_topic(self._prefix, t, p): (t, p) for t in self._tasks for p in PRIORITIES
        }
        if not all(self._offsets.partitions_for_topic(topic) for topic in topics):
            await self._offsets.topics()  # loads metadata of every topic (the ones here exist)
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in (self._offsets.partitions_for_topic(topic) or ())
        ]
        ends = await self._offsets.end_offsets(partitions)
        committed = await self._admin.list_consumer_group_offsets(
            self._group_id, partitions=partitions
        )
        lag: dict[tuple[str, Priority], int] = {key: 0 for key in topics.values()}
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag[topics[tp.topic]] += max(0, end - done)
        return lag
