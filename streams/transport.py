"""faust's aiokafka transport with a configurable fetch wait.

faust hard-codes ``fetch_max_wait_ms=1500`` for worker consumers. Apache Kafka answers a fetch
as soon as data arrives, but some Kafka-compatible brokers (Tansu among them) always wait the
full time, which turns that constant into 1.5 s of added latency; so it becomes a setting, and
one the worker may change while it runs (a longer wait while it has a backlog: fewer, fuller
fetches for the broker and the consumer thread to handle).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS_DEFAULT = 20


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # NOTE: aiokafka reads this attribute when start() builds its fetcher, which comes later.
        consumer._fetch_max_wait_ms = getattr(
            self.app, "fetch_max_wait_ms", FETCH_MAX_WAIT_MS_DEFAULT
        )
        return consumer

    def set_fetch_max_wait(self, ms: int) -> None:
        # aiokafka's fetcher reads this attribute each time it builds a fetch request
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None:
            fetcher._fetch_max_wait_ms = ms


class LowLatencyConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> LowLatencyConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)


class LowLatencyTransport(faust_aiokafka.Transport):
    Consumer = LowLatencyConsumer


class WorkerApp(faust.App):
    """A faust app whose consumer uses :class:`LowLatencyTransport`."""

    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS_DEFAULT
    on_draining: Callable[[], Awaitable[object]] | None = None
    """Called after fetching stops (shutdown, or partitions revoked in a rebalance), before faust
    waits for every delivered event to be acked."""
    on_drained: Callable[[], Awaitable[object]] | None = None
    """Called after that wait when the app goes on (a rebalance), to take requests again."""

    def set_fetch_max_wait(self, ms: int) -> None:
        """Change the fetch wait of the running consumer (takes effect from its next fetch)."""
        thread = getattr(self.consumer, "_thread", None)
        if isinstance(thread, LowLatencyConsumerThread):
            thread.set_fetch_max_wait(ms)

    def _new_transport(self):
        return LowLatencyTransport(self.conf.broker_consumer, self)

    async def _consumer_wait_empty(self, consumer, logger) -> None:
        if self.on_draining is not None:
            await self.on_draining()
        try:
            await super()._consumer_wait_empty(consumer, logger)
        finally:
            # NOTE: after a rebalance faust seeks to the committed offsets, so what was shed
            # (never acked) is fetched again by whoever owns its partition now.
            if not self.should_stop and self.on_drained is not None:
                await self.on_drained()
