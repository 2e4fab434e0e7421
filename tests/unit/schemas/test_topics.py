"""Topic names of SPEC section 3."""

from __future__ import annotations

import pytest

from streaminfer.schemas.records import Priority
from streaminfer.schemas.topics import (
    PRIORITIES,
    TASK_NAME_RE,
    all_topics,
    audit_topic,
    dlq_topic,
    parse_request_topic,
    request_topic,
    request_topics,
    results_topic,
)


def test_names() -> None:
    assert request_topic("streaminfer", "text-embedding", Priority.HIGH) == (
        "streaminfer.requests.text-embedding.high"
    )
    assert request_topic("si", "t", "low") == "si.requests.t.low"
    assert request_topic("si", "t", 5) == "si.requests.t.normal"
    assert request_topics("si", "t") == [
        "si.requests.t.high",
        "si.requests.t.normal",
        "si.requests.t.low",
    ]
    assert results_topic("si", "image-classify") == "si.results.image-classify"
    assert audit_topic("si") == "si.audit"
    assert dlq_topic("acme.prod") == "acme.prod.dlq"
    assert PRIORITIES == (Priority.HIGH, Priority.NORMAL, Priority.LOW)


def test_all_topics() -> None:
    topics = all_topics("si", ["a", "b", "a"])
    assert topics == [
        "si.requests.a.high",
        "si.requests.a.normal",
        "si.requests.a.low",
        "si.results.a",
        "si.requests.b.high",
        "si.requests.b.normal",
        "si.requests.b.low",
        "si.results.b",
        "si.audit",
        "si.dlq",
    ]
    assert all_topics("si", []) == ["si.audit", "si.dlq"]


@pytest.mark.parametrize("task", ["", "Text", "1abc", "a_b", "a.b", "a" * 64, "a b", "tiny\n"])
def test_invalid_task_names_are_refused(task: str) -> None:
    assert not TASK_NAME_RE.match(task)
    with pytest.raises(ValueError):
        request_topic("si", task, Priority.LOW)
    with pytest.raises(ValueError):
        results_topic("si", task)


@pytest.mark.parametrize("prefix", ["", "a b", "a/b", ".a", "a."])
def test_invalid_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        audit_topic(prefix)


def test_a_trailing_newline_is_not_a_task_name() -> None:
    assert parse_request_topic("si", "si.requests.tiny\n.low") is None


def test_task_name_limits() -> None:
    assert TASK_NAME_RE.match("a" * 63)
    assert TASK_NAME_RE.match("tabular-classify2")


@pytest.mark.parametrize("priority", list(Priority))
def test_parse_request_topic_inverts_request_topic(priority: Priority) -> None:
    topic = request_topic("acme.prod", "text-embedding", priority)
    assert parse_request_topic("acme.prod", topic) == ("text-embedding", priority)


@pytest.mark.parametrize(
    "topic",
    [
        "si.results.t",
        "si.audit",
        "si.requests.t",
        "si.requests.t.urgent",
        "si.requests.t.high.extra",
        "si.requests.T.high",
        "other.requests.t.high",
        "si.requestsx.t.high",
    ],
)
def test_parse_request_topic_ignores_other_topics(topic: str) -> None:
    assert parse_request_topic("si", topic) is None
