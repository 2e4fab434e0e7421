"""The producer picks each message's partition itself, exactly as aiokafka's default partitioner
would (murmur2 of the key): a request's ACCEPTED audit event lands where the workers' audit events
for the same request_id land."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from aiokafka.partitioner import DefaultPartitioner

import streaminfer.gateway.producer as producer_module
from streaminfer.gateway.producer import RequestProducer


class Cluster:
    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self.partitions = partitions
        self.reads = 0

    def partitions_for_topic(self, topic):
        self.reads += 1
        return set(self.partitions[topic]) if topic in self.partitions else None


def producer(cluster: Cluster) -> RequestProducer:
    made = RequestProducer("127.0.0.1:9092", codec=None, prefix="unit")
    made._producer = SimpleNamespace(client=SimpleNamespace(cluster=cluster))
    return made


def test_the_partition_is_the_default_partitioners():
    cluster = Cluster({"requests": set(range(6)), "audit": {0, 1, 2}})
    made = producer(cluster)
    for _ in range(500):
        key = str(uuid.uuid4()).encode()
        for topic, partitions in cluster.partitions.items():
            expected = DefaultPartitioner()(key, sorted(partitions), sorted(partitions))
            assert made._partition(topic, key) == expected
    assert cluster.reads == 2, "the partition list is kept, not read per message"


def test_unknown_metadata_leaves_the_choice_to_aiokafka():
    made = producer(Cluster({"requests": set()}))
    assert made._partition("requests", b"k") is None
    assert made._partition("other", b"k") is None


def test_added_partitions_are_seen_after_the_refresh(monkeypatch):
    cluster = Cluster({"requests": {0}})
    made = producer(cluster)
    clock = [100.0]
    monkeypatch.setattr(producer_module.time, "monotonic", lambda: clock[0])
    assert made._partition("requests", b"key") == 0
    cluster.partitions["requests"] = set(range(12))
    assert made._partition("requests", b"key") == 0
    clock[0] += producer_module.PARTITIONS_REFRESH_S + 0.1
    assert made._partition("requests", b"key") == DefaultPartitioner()(b"key", list(range(12)), [])
