"""Errors raised by the event contract: encoding, decoding and schema lookup.

    SchemaError                 root; retriable = False unless noted
    ├── DecodeError             UNDECODABLE: random bytes, truncated body, bad magic
    │   └── UnknownSchema       UNKNOWN_SCHEMA: fingerprint or registry id we cannot resolve
    ├── EncodeError             UNENCODABLE: a record that does not fit its schema
    └── RegistryUnavailable     SCHEMA_REGISTRY_UNAVAILABLE: registry unreachable (retriable)

Callers decide what to do from `code` and `retriable`, never from the message.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

__all__ = [
    "DecodeError",
    "EncodeError",
    "RegistryUnavailable",
    "SchemaError",
    "UnknownSchema",
]


class SchemaError(Exception):
    """Root of every error raised by `schemas`."""

    code: str = "SCHEMA_ERROR"
    retriable: bool = False


class DecodeError(SchemaError):
    """Bytes that are not a valid event of the expected type."""

    code = "UNDECODABLE"


class UnknownSchema(DecodeError):
    """The writer schema (single-object fingerprint or registry id) is not known."""

    code = "UNKNOWN_SCHEMA"


class EncodeError(SchemaError):
    """A record (or array) that cannot be written with its schema."""

    code = "UNENCODABLE"


class RegistryUnavailable(SchemaError):
    """The schema registry could not be reached or answered with a server error."""

    code = "SCHEMA_REGISTRY_UNAVAILABLE"
    # NOTE: a registry outage is not the message's fault; retry instead of dead-lettering.
    retriable = True
