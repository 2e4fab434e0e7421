"""The schemas package's error tree (schemas/errors.py): who is whose subclass, the codes, and
that the decode and encode errors are not retriable. Moved whole from test_codec.py."""

from __future__ import annotations

from streaminfer.schemas.errors import (
    DecodeError,
    EncodeError,
    RegistryUnavailable,
    SchemaError,
    UnknownSchema,
)


def test_error_tree() -> None:
    assert issubclass(UnknownSchema, DecodeError) and issubclass(DecodeError, SchemaError)
    assert issubclass(EncodeError, SchemaError) and issubclass(RegistryUnavailable, SchemaError)
    assert (DecodeError.code, UnknownSchema.code, EncodeError.code) == (
        "UNDECODABLE",
        "UNKNOWN_SCHEMA",
        "UNENCODABLE",
    )
    assert not any(e.retriable for e in (SchemaError, DecodeError, UnknownSchema, EncodeError))
