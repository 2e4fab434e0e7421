"""Creates the contract's topics before any client can ask for their metadata.

A broker may auto-create a missing topic on a metadata request with its own default
partition count (Tansu does), so topics are created here, first, with the configured count.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from streaminfer.schemas.topics import all_topics

from .connectivity import diagnose_kafka_tls, kafka_options

logger = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap_servers: str,
    names: list[str],
    partitions: int,
    replication: int = 1,
    timeout_s: float = 30.0,
    options: dict | None = None,
    settings=None,
) -> list[str]:
    """Create the missing topics among ``names``; return the ones created. ``options``: aiokafka
    security arguments; with ``settings``, a TLS failure a setting explains is raised at once
    (ConnectivityError) instead of retried."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers, request_timeout_ms=5000, **(options or {})
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                await admin.create_topics(
                    [
                        NewTopic(n, num_partitions=partitions, replication_factor=replication)
                        for n in missing
                    ]
                )
                logger.info("created %d topics with %d partitions", len(missing), partitions)
            return missing
        except KafkaConnectionError:
            if settings is not None:
                await diagnose_kafka_tls(settings)
            if asyncio.get_running_loop().time() > deadline:
                raise
            logger.warning("broker %s not reachable yet; retrying", bootstrap_servers)
            await asyncio.sleep(0.5)
        except KafkaError as exc:  # e.g. a topic created concurrently by another process
            logger.warning("topic creation: %s", exc)
            return []
        finally:
            await admin.close()


async def ensure_contract_topics(settings, tasks: list[str]) -> list[str]:
    """All request, result, audit and DLQ topics of ``tasks`` under the settings' prefix."""
    return await ensure_topics(
        settings.kafka_bootstrap_servers,
        all_topics(settings.topic_prefix, tasks),
        settings.topic_partitions,
        settings.topic_replication,
        options=kafka_options(settings),
        settings=settings,
    )
