"""The Python client of streaminfer.

Over HTTP, :class:`Client` and :class:`AsyncClient` call the gateway (``/v1`` and the Open
Inference Protocol's ``/v2``) and hand back :class:`Result` objects with numpy outputs. Straight
on Kafka, :class:`RequestProducer` writes Avro ``InferenceRequest`` events to the request topics
and :class:`ResultConsumer` waits for their results on the results topic. Every failure is a
:class:`ClientError` with ``error_code`` and ``status_code``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .aio import AsyncClient
from .errors import ClientError
from .http import Client
from .results import ModelInfo, Result, ResultError
from .retries import RetryPolicy

if TYPE_CHECKING:
    from .kafka import RequestProducer, ResultConsumer
    from .request_events import build_request

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "ModelInfo",
    "RequestProducer",
    "Result",
    "ResultConsumer",
    "ResultError",
    "RetryPolicy",
    "build_request",
]

_KAFKA = {"RequestProducer", "ResultConsumer", "build_request"}


def __getattr__(name: str) -> Any:
    # NOTE: the Kafka side (aiokafka, the Avro codec) is imported only when asked for, so an
    # HTTP-only user does not load it.
    if name in _KAFKA:
        from . import kafka, request_events

        return getattr(request_events if name == "build_request" else kafka, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
