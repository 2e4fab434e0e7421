"""faust agents: one per request topic (task x priority), each a thin adapter that hands raw
events to the :class:`RequestProcessor` and acknowledges them only when their result is written.

Separate agents per priority keep a full low-priority queue from blocking high-priority intake.
"""

from __future__ import annotations

import functools
import logging

import faust

from streaminfer.schemas.topics import request_topics

from .processor import RequestProcessor
from .requests import SourceEvent

logger = logging.getLogger(__name__)

RESUBSCRIBE_DELAY_S = 1.0


def register_agents(
    app: faust.App, processor: RequestProcessor, prefix: str
) -> list[faust.types.AgentT]:
    app.on_draining = processor.shed_queued
    app.on_drained = processor.resume
    return [
        agent for task in processor.tasks for agent in task_agents(app, processor, prefix, task)
    ]


def task_agents(
    app: faust.App, processor: RequestProcessor, prefix: str, task: str
) -> list[faust.types.AgentT]:
    """The agents of one task's request topics, registered with ``app``."""
    agents = []
    for topic_name in request_topics(prefix, task):
        topic = app.topic(
            topic_name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        agents.append(app.agent(topic, name=f"requests:{topic_name}")(_make_agent(processor)))
    return agents


async def start_task_agents(
    app: faust.App, processor: RequestProcessor, prefix: str, task: str
) -> None:
    """Consume a task added while the worker runs: its agents start, and faust's conductor
    subscribes to their topics (a rebalance of the group)."""
    # NOTE: the conductor waits this long (45 s by default) before resubscribing, so that agents
    # restarting together cause one rebalance; a task added by hand is one change, not a storm.
    app.topics._resubscribe_sleep_lock_seconds = RESUBSCRIBE_DELAY_S
    agents = task_agents(app, processor, prefix, task)
    app.agents.update_topic_index()
    for agent in agents:
        await agent.maybe_start()


def _make_agent(processor: RequestProcessor):
    async def consume(stream: faust.StreamT) -> None:
        # noack: faust must not commit an offset when the next event arrives, only when
        # the processor calls ack() after the result is stored and published.
        stream = stream.noack()
        async for event in stream.events():
            message = event.message
            source = SourceEvent(
                message.topic,
                message.partition,
                message.offset,
                message.key,
                message.value,
                message.headers or (),
            )
            await processor.handle(
                source,
                functools.partial(stream.ack, event),
                functools.partial(_release, stream, event),
            )

    return consume


def _release(stream: faust.StreamT, event: faust.types.EventT) -> None:
    # NOTE: faust has no public "give up" for an event: it waits on shutdown until every message
    # it delivered is acked. Dropping it from the consumer's unacked set, without acking, lets the
    # shutdown finish while its offset stays uncommitted, so the event is redelivered.
    stream.app.consumer._unacked_messages.discard(event.message)
