"""Kafka topic names: the only place they are built or parsed (SPEC section 3)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from streaminfer.schemas.records import Priority

logger = logging.getLogger(__name__)

__all__ = [
    "PRIORITIES",
    "TASK_NAME_RE",
    "all_topics",
    "audit_topic",
    "dlq_topic",
    "parse_request_topic",
    "request_topic",
    "request_topics",
    "results_topic",
]

# NOTE: \Z, not $: "$" also matches before a trailing newline, so "tiny\n" would pass.
TASK_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
# Kafka's legal topic characters; the prefix may itself contain dots (e.g. "acme.prod").
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,180}\Z")

PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_BY_SUFFIX = {p.topic_suffix: p for p in PRIORITIES}


def _check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix) or prefix.startswith(".") or prefix.endswith("."):
        raise ValueError(f"invalid topic prefix {prefix!r}")
    return prefix


def _check_task(task: str) -> str:
    if not TASK_NAME_RE.match(task):
        raise ValueError(f"invalid task name {task!r}: must match {TASK_NAME_RE.pattern}")
    return task


def request_topic(prefix: str, task: str, priority: Priority | str | int) -> str:
    """`<prefix>.requests.<task>.<high|normal|low>`; `priority` as for Priority.parse."""
    suffix = Priority.parse(priority).topic_suffix
    return f"{_check_prefix(prefix)}.requests.{_check_task(task)}.{suffix}"


def request_topics(prefix: str, task: str) -> list[str]:
    """The task's three request topics, high first."""
    return [request_topic(prefix, task, p) for p in PRIORITIES]


def results_topic(prefix: str, task: str) -> str:
    return f"{_check_prefix(prefix)}.results.{_check_task(task)}"


def audit_topic(prefix: str) -> str:
    return f"{_check_prefix(prefix)}.audit"


def dlq_topic(prefix: str) -> str:
    return f"{_check_prefix(prefix)}.dlq"


def parse_request_topic(prefix: str, topic: str) -> tuple[str, Priority] | None:
    """(task, priority) of a request topic under `prefix`, or None for any other topic."""
    head = f"{prefix}.requests."
    if not topic.startswith(head):
        return None
    task, dot, suffix = topic[len(head) :].partition(".")
    priority = _BY_SUFFIX.get(suffix)
    if not dot or priority is None or not TASK_NAME_RE.match(task):
        return None
    return task, priority


def all_topics(prefix: str, tasks: Iterable[str]) -> list[str]:
    """Every topic the system uses for `tasks`: per task its request and result topics,
    then the audit and dead-letter topics; no duplicates, stable order."""
    topics: list[str] = []
    for task in dict.fromkeys(tasks):
        topics.extend(request_topics(prefix, task))
        topics.append(results_topic(prefix, task))
    topics.extend((audit_topic(prefix), dlq_topic(prefix)))
    return topics
